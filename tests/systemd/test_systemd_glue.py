"""lacme.systemd.glue on the host: escaping checked against systemd-escape,
the transaction command line, the journal's MESSAGE_IDs."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core import journal
from lacme.systemd import glue

MESSAGE_IDS = [v for k, v in vars(journal).items() if not k.startswith("_")]


def systemd_escape(*names: str) -> list[str]:
    out = subprocess.run(["systemd-escape", "--", *names], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
                min_size=1, max_size=20))
def test_escape_instance_matches_systemd_escape(names: list[str]) -> None:
    assert [glue.escape_instance(n) for n in names] == systemd_escape(*names)


@pytest.mark.parametrize("name,escaped", [
    ("www", "www"), ("mail-1", "mail\\x2d1"), (".hidden", "\\x2ehidden"),
    ("a/b", "a-b"), ("é", "\\xc3\\xa9"), ("a.b_c:d", "a.b_c:d"), ("sp ace", "sp\\x20ace"),
])
def test_escape_instance_known_values(name: str, escaped: str) -> None:
    assert glue.escape_instance(name) == escaped


def test_notify_unit_name_rejects_empty_and_too_long() -> None:
    assert glue.notify_unit_name("www") == "lacme-notify@www.service"
    with pytest.raises(ValueError):
        glue.notify_unit_name("")
    with pytest.raises(ValueError):
        glue.notify_unit_name("-" * 100)  # 400 characters once escaped


def test_transaction_argv_requires_and_orders_every_unit_once() -> None:
    argv = glue.transaction_argv(["lacme-notify@a.service", "lacme-notify@b\\x2d1.service"],
                                         "abc")
    assert argv[0] == "systemd-run" and "--wait" in argv and argv[-1] == "/bin/true"
    deps = "lacme-notify@a.service lacme-notify@b\\\\x2d1.service"
    assert f"--property=Requires={deps}" in argv and f"--property=After={deps}" in argv
    assert "--unit=lacme-notify-abc" in argv


def test_message_ids_distinct_128_bit_hex() -> None:
    assert len(MESSAGE_IDS) == 4 and len(set(MESSAGE_IDS)) == 4
    for mid in MESSAGE_IDS:
        assert len(mid) == 32 and int(mid, 16) >= 0 and mid == mid.lower()
