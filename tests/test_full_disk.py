"""A full disk while installing: a real, small tmpfs filled up, in a mount
namespace of the test's own (``unshare --mount``), against a real Pebble.

The master runs inside the namespace, with a tmpfs mounted over the
certificate directory (or the state directory) holding copies of the files
in place, then filled with zeros until the kernel says ENOSPC.  What the
master left there is copied out before the namespace ends.  Asserted: the
old certificate and chain byte for byte, no temporary left, one error line
naming the file, exit 1; and renewal.json, on a full state directory,
whole and unchanged.  EDQUOT takes the same path (lacme.core.atomic does not
tell the two apart); this kernel has no quota support (no CONFIG_QUOTA, no
tmpfs quotas), so only ENOSPC is exercised for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lacmeenv import TREE_ROOT, LacmeSetup, unique_name, write_key

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="needs root and unshare(1) for a mount namespace")]

TEMP_MARK = ".lacme-tmp."


@pytest.fixture(scope="module")
def account(pebble, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full-account")
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root / "conf", pebble=pebble, account_key=key)
    setup.write()
    assert setup.run("account", "--register", "--tos-agreed").returncode == 0
    return key


@pytest.fixture
def setup(tmp_path, pebble, account) -> LacmeSetup:
    certs = tmp_path / "certs"
    certs.mkdir()
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=account)
    s.add_section("www", [unique_name()], key_kind="p256", certificate=str(certs / "www.crt"),
                  certificate_chain=str(certs / "www.chain.pem"))
    s.write()
    s.env = {"STATE_DIRECTORY": str(tmp_path / "state")}  # type: ignore[attr-defined]
    done = s.run("newOrder", env=s.env)  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    return s


def run_on_full_tmpfs(setup: LacmeSetup, directory: Path, out: Path, *,
                      free_pages: int = 0) -> subprocess.CompletedProcess[str]:
    """``newOrder --force`` with a full tmpfs over ``directory`` (``free_pages``
    4-KiB pages left); ``directory``'s files as the master left them go to ``out``."""
    saved = out / "saved"
    saved.mkdir(parents=True)
    (out / "after").mkdir()
    master = [sys.executable, "-m", "lacme.master", f"--config={setup.conf}", "newOrder",
              "--force"]
    script = f"""
set -e
cp -a {directory}/. {saved}/
mount -t tmpfs -o size=256k,mode=0755 lacme-full {directory}
cp -a {saved}/. {directory}/
head -c {4096 * free_pages} /dev/zero > {directory}/slack
dd if=/dev/zero of={directory}/filler bs=4096 2>/dev/null || true
rm -f {directory}/slack
set +e
{" ".join(master)}
echo $? > {out}/rc
df -k {directory} > {out}/df
ls -a {directory} > {out}/ls
for f in {directory}/*; do [ "$(basename "$f")" = filler ] || cp -a "$f" {out}/after/; done
"""
    env = {**os.environ, "PYTHONPATH": str(TREE_ROOT), **setup.env}  # type: ignore[attr-defined]
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(setup.root))
    assert (out / "rc").exists(), done.stderr
    done.returncode = int((out / "rc").read_text())
    return done


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# one free page: the chain's temporary is written, the leaf's is not (it must go too)
@pytest.mark.parametrize("free_pages", [0, 1], ids=["no-room", "room-for-one-temporary"])
def test_full_certificate_directory_keeps_old_files_and_fails_once(setup, tmp_path, free_pages):
    certs = tmp_path / "certs"
    before = files_of(certs)
    assert set(before) == {"www.crt", "www.chain.pem"}
    state_before = (tmp_path / "state" / "renewal.json").read_bytes()
    done = run_on_full_tmpfs(setup, certs, tmp_path / "out", free_pages=free_pages)
    assert done.returncode == 1, done.stderr
    assert files_of(tmp_path / "out" / "after") == before  # byte for byte, both files
    listing = (tmp_path / "out" / "ls").read_text().split()
    assert not [n for n in listing if TEMP_MARK in n], listing
    errors = [line for line in done.stderr.splitlines() if "No space left" in line
              or "no space left" in line]
    assert len(errors) == 1, done.stderr
    assert "install failed" in errors[0] and str(certs) in errors[0]
    assert "Traceback" not in done.stderr
    # the failure is recorded (the state directory had room)
    state = json.loads((tmp_path / "state" / "renewal.json").read_text())
    entry = state["entries"][0]
    assert entry["last_outcome"] == "failed" and "no space left" in entry["last_error"]
    assert (tmp_path / "state" / "renewal.json").read_bytes() != state_before


def test_full_state_directory_keeps_renewal_json_whole(setup, tmp_path):
    state = tmp_path / "state"
    before = (state / "renewal.json").read_bytes()
    json.loads(before)
    certs_before = files_of(tmp_path / "certs")
    done = run_on_full_tmpfs(setup, state, tmp_path / "out")
    # the certificate was renewed; only remembering it failed, with one warning
    assert done.returncode == 0, done.stderr
    assert files_of(tmp_path / "certs") != certs_before
    after = tmp_path / "out" / "after" / "renewal.json"
    assert after.read_bytes() == before  # whole, and the old one
    listing = (tmp_path / "out" / "ls").read_text().split()
    assert not [n for n in listing if TEMP_MARK in n], listing
    warnings = [line for line in done.stderr.splitlines() if "renewal state" in line]
    assert len(warnings) == 1 and "no space left on device" in warnings[0], done.stderr
