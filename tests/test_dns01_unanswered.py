"""lacme-dns leaves no record behind, against a real Knot, even when a write's
answer never comes back (it may have been applied) or the allowed names change.

* An RFC 2136 UPDATE reaches Knot, which applies it, but the answer is lost
  (a relay in front of Knot closes the connection instead of passing the
  answer on, as a crashed front end or a reset would).  lacme-dns says the
  update failed, and that it may be in the zone (``written``), and deletes
  it when the connection ends.
* What a connection wrote is deleted at its end even if the master's last
  ``allow`` named other names.
* A record the hook cannot delete at the end (the provider's API fails)
  does not keep the records after it in the zone.
* A provider hook that adds the record and then hangs (its child keeps the
  output pipe open) is stopped with its whole process group at the hook
  timeout, and its record is deleted by the ``del`` call at the end.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lacme.config.dns import validate_dns_config
from lacme.config.ini import parse_ini
from lacme.core.errors import LacmeError
from lacme.dns import publisher as publisher_module
from lacme.dns.publisher import Publisher
from tests.knot import KEY_NAME, ZONE, Knot, name, start_knot
from tests.test_dns01_wait import DIGEST, LacmeDns


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    instance = start_knot(tmp_path_factory.mktemp("knot-unanswered"), (ZONE,))
    yield instance
    instance.stop()


def _read_message(sock: socket.socket) -> bytes:
    """One length-prefixed DNS message over TCP (RFC 1035 4.2.2), prefix included."""
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        data += chunk
    return data


class LosingRelay:
    """TCP relay to Knot that loses the answer of the first ``lose`` connections:
    the message is passed on and answered by Knot, then the client's connection
    is closed without the answer.  Later connections are relayed both ways, and
    so are UDP queries on the same port (lacme-dns's CNAME lookups)."""

    def __init__(self, knot: Knot, lose: int = 1) -> None:
        self.knot = knot
        self.lose = lose
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.lost = 0
        threading.Thread(target=self._serve, daemon=True).start()
        threading.Thread(target=self._serve_udp, daemon=True).start()

    def _serve_udp(self) -> None:
        while True:
            try:
                query, peer = self.udp.recvfrom(65535)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                    up.settimeout(5)
                    up.sendto(query, ("127.0.0.1", self.knot.port))
                    self.udp.sendto(up.recv(65535), peer)
            except OSError:
                if self.udp.fileno() < 0:
                    return

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    message = _read_message(conn)
                    with socket.create_connection(("127.0.0.1", self.knot.port), timeout=5) as up:
                        up.sendall(message)
                        answer = _read_message(up)
                except (OSError, EOFError):
                    continue
                if self.lost < self.lose:
                    self.lost += 1
                    continue  # applied by Knot, answer dropped: the connection closes
                conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()
        self.udp.close()


def test_an_update_whose_answer_is_lost_is_deleted_at_the_end(knot: Knot, tmp_path: Path) -> None:
    relay = LosingRelay(knot)
    conf = tmp_path / "lacme-dns.conf"
    conf.write_text(f"timeout = 10\n[{ZONE}]\nserver = {relay.address}\nkey-name = {KEY_NAME}\n"
                    f"key-secret = {knot.secret}\ncheck = {knot.address}\n")
    dns = LacmeDns(conf)
    try:
        answer = dns.update([name("www")])
        assert answer["ok"] is False, answer
        assert answer["written"] is True, "the record may be in the zone: the master must know"
        assert answer["message"] == (f"zone {ZONE}: {relay.address}: connection closed by the "
                                     "server before its answer (the update may have been applied)")
        assert relay.lost == 1
        owner = f"_acme-challenge.{name('www')}"
        assert knot.txt(owner) == {DIGEST}, "Knot applied the update"
        assert dns.close() == 0
        assert knot.all_txt() == {}, "the record was removed when the connection ended"
    finally:
        relay.close()


def test_what_was_written_is_deleted_whatever_the_last_allow(knot: Knot, tmp_path: Path) -> None:
    conf = tmp_path / "lacme-dns.conf"
    conf.write_text(f"timeout = 10\n[{ZONE}]\nserver = {knot.address}\nkey-name = {KEY_NAME}\n"
                    f"key-secret = {knot.secret}\ncheck = {knot.address}\n")
    dns = LacmeDns(conf, stderr=subprocess.PIPE)
    assert dns.update([name("h03")])["ok"] is True  # allow [h03], add its record
    dns.send(type="allow", names=[name("h04")])  # h03 is no longer allowed
    owner = f"_acme-challenge.{name('h03')}"
    dns.send(type="update", id=2, wait=False, delete=[],
             add=[{"name": owner, "value": "B" * 42 + "E"}])
    answer = json.loads(dns.rfile.readline())
    assert answer["ok"] is False and "refused" in answer["message"], "h03 is no longer allowed"
    assert knot.txt(owner) == {DIGEST}
    assert dns.close() == 0
    assert knot.all_txt() == {}
    assert dns.process.stderr is not None and dns.process.stderr.read() == b""


KNSUPDATE_HOOK = """#!/bin/sh
# A provider hook writing to Knot with knsupdate: {comment}
set -e
{before}
case "$1" in
    add) op="update add $2. 60 TXT \\"$3\\"" ;;
    del) op="update delete $2. TXT \\"$3\\"" ;;
esac
printf 'server 127.0.0.1 {port}\\nzone {zone}.\\nkey hmac-sha256:{key_name} {secret}\\n%s\\nsend\\n' \\
    "$op" | knsupdate
{after}
"""


def write_hook(path: Path, knot: Knot, comment: str, before: str = "", after: str = "") -> Publisher:
    """The hook at ``path``, and a Publisher of a configuration whose zone runs it."""
    path.write_text(KNSUPDATE_HOOK.format(comment=comment, before=before, after=after, port=knot.port,
                                          zone=ZONE, key_name=KEY_NAME, secret=knot.secret))
    path.chmod(0o700)
    return Publisher(validate_dns_config(parse_ini(f"[{ZONE}]\ncommand = {path}\n", "lacme-dns.conf")))


def test_a_hook_that_hangs_after_adding_is_stopped_and_its_record_deleted(
        knot: Knot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = tmp_path / "hook.sh"
    publisher = write_hook(hook, knot, "add hangs with the output pipe open, once written.",
                           after='if [ "$1" = add ]; then sleep 30; fi')
    monkeypatch.setattr(publisher_module, "HOOK_TIMEOUT", 1.0)
    record = (f"_acme-challenge.{name('h01')}", DIGEST)
    publisher.allow([name("h01")])
    started = time.monotonic()
    with pytest.raises(LacmeError) as failed:
        publisher.update([record], [], wait=False)
    elapsed = time.monotonic() - started
    assert str(failed.value) == (f"zone {ZONE}: {hook} add {record[0]}: no exit after 1s "
                                 "(stopped; the record may have been added)")
    assert elapsed < 5, f"{elapsed:.1f}s: the hook's child kept lacme-dns waiting"
    assert knot.txt(record[0]) == {DIGEST}
    assert publisher.holds([record])
    publisher.clean_up()
    assert knot.all_txt() == {}


def test_a_record_that_cannot_be_deleted_does_not_keep_the_others(
        knot: Knot, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refused = "C" * 42 + "E"
    hook = tmp_path / "hook.sh"
    publisher = write_hook(hook, knot, f"del of {refused} fails (the provider's API).",
                           before=f'if [ "$1" = del ] && [ "$3" = "{refused}" ]; then\n'
                                  '    echo "provider: 500 Internal Server Error" >&2; exit 1\nfi')
    names = [name("h05"), name("h06"), name("h07")]
    publisher.allow(names)
    records = [(f"_acme-challenge.{n}", value)
               for n, value in zip(names, [DIGEST, refused, DIGEST], strict=True)]
    publisher.update(records, [], wait=False)
    assert knot.all_txt() == {owner: {value} for owner, value in records}
    with caplog.at_level("ERROR", logger="lacme-dns"):
        publisher.clean_up()
    # the record after the refused one (h07) is gone too
    assert knot.all_txt() == {f"_acme-challenge.{name('h06')}": {refused}}
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"cannot remove 1 record(s) at the end: zone {ZONE}: {hook} del _acme-challenge."
        f"{name('h06')}: exit status 1: provider: 500 Internal Server Error"]
    # by hand, as the administrator would
    publisher.written.clear()
    subprocess.run(["knsupdate"], input=(
        f"server 127.0.0.1 {knot.port}\nzone {ZONE}.\nkey hmac-sha256:{KEY_NAME} {knot.secret}\n"
        f"update delete _acme-challenge.{name('h06')}. TXT\nsend\n").encode(), check=True)
    assert knot.all_txt() == {}
