"""Where the master publishes http-01 answers: token checks, the lock of a
shared challenge-directory, takeover after a killed run, cleanup."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.core.errors import LacmeError
from lacme.master.challenges import LOCK_NAME, ChallengeDirectory, PublishGate
from lacme.protocol.http01 import is_valid_token

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "challenges"
    d.mkdir()
    return d


def test_publish_writes_answer_world_readable_and_unpublish_removes(shared):
    chal = ChallengeDirectory.open_shared(str(shared))
    chal.publish(TOKEN, TOKEN + ".thumb")
    path = shared / TOKEN
    assert path.read_text() == TOKEN + ".thumb"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    chal.unpublish(TOKEN)
    assert not path.exists()
    chal.close()
    assert os.listdir(shared) == []


@pytest.mark.parametrize("token", ["../etc", "a/b", "..", ".", "", "a b", "tok\n", "x" * 300,
                                   LOCK_NAME, "%2e%2e"])
def test_publish_refuses_tokens_outside_base64url(shared, token):
    chal = ChallengeDirectory.open_shared(str(shared))
    with pytest.raises(LacmeError):
        chal.publish(token, "content")
    chal.close()
    assert os.listdir(shared) == []
    assert os.listdir(shared.parent) == ["challenges"]


@given(st.text(max_size=40))
def test_publish_never_writes_outside_directory(token):
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lacme-test-")) / "c"
    d.mkdir()
    chal = ChallengeDirectory.open_shared(str(d))
    try:
        chal.publish(token, "x")
    except LacmeError:
        assert not is_valid_token(token)
    else:
        assert is_valid_token(token) and (d / token).is_file()
    finally:
        chal.close()
    assert os.listdir(d) == [] and os.listdir(d.parent) == [d.name]
    d.rmdir()
    d.parent.rmdir()


def test_shared_directory_must_be_empty(shared):
    (shared / "index.html").write_text("x")
    with pytest.raises(LacmeError, match="not empty"):
        ChallengeDirectory.open_shared(str(shared))
    assert sorted(os.listdir(shared)) == ["index.html"]


def test_missing_shared_directory_is_named(tmp_path):
    with pytest.raises(LacmeError, match="challenge-directory .*nope"):
        ChallengeDirectory.open_shared(str(tmp_path / "nope"))


def test_second_run_is_refused_while_first_holds_the_lock(shared):
    first = ChallengeDirectory.open_shared(str(shared))
    try:
        with pytest.raises(LacmeError, match="in use"):
            ChallengeDirectory.open_shared(str(shared))
    finally:
        first.close()
    ChallengeDirectory.open_shared(str(shared)).close()


def test_lock_and_files_left_by_killed_run_are_taken_over(shared):
    # a run killed with SIGKILL: lock file and an answer stay behind
    code = ("import os, sys; from lacme.master.challenges import ChallengeDirectory as C; "
            f"c = C.open_shared({str(shared)!r}); c.publish({TOKEN!r}, 'x'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert sorted(os.listdir(shared)) == sorted([LOCK_NAME, TOKEN])
    chal = ChallengeDirectory.open_shared(str(shared))
    assert os.listdir(shared) == [LOCK_NAME]
    chal.close()
    assert os.listdir(shared) == []


def test_private_directory_is_search_only_and_removed(tmp_path):
    chal = ChallengeDirectory.create_private()
    path = Path(chal.path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o711
    chal.publish(TOKEN, "answer")
    chal.close()
    assert not path.exists()


# ---------------------------------------------------------------- the publish gate

THUMB = "T" * 43


def open_gate(*names: str) -> PublishGate:
    gate = PublishGate(THUMB)
    gate.open([("dns", n) for n in names])
    return gate


def test_gate_publishes_key_authorizations_while_orders_are_pending():
    gate = open_gate("a.example", "b.example")
    gate.check_http01("tok1", f"tok1.{THUMB}")
    gate.check_http01("tok1", f"tok1.{THUMB}")  # the same authorization again
    gate.check_http01("tok2", f"tok2.{THUMB}")
    with pytest.raises(LacmeError, match="more answers than the 2 authorization"):
        gate.check_http01("tok3", f"tok3.{THUMB}")
    gate.close()
    with pytest.raises(LacmeError, match="no order of this run is pending"):
        gate.check_http01("tok1", f"tok1.{THUMB}")


@pytest.mark.parametrize("content", ["tok.other", f"other.{THUMB}", f"tok.{THUMB}\n", "tok", ""])
def test_gate_refuses_what_is_not_a_key_authorization_of_this_account(content):
    with pytest.raises(LacmeError, match="not a key authorization"):
        open_gate("a.example").check_http01("tok", content)


def test_gate_identifiers_for_other_challenge_types():
    gate = open_gate("A.example")
    assert gate.allows_identifier("dns", "a.example")
    assert not gate.allows_identifier("dns", "b.example")
    gate.close()
    assert not gate.allows_identifier("dns", "a.example")
    with pytest.raises(LacmeError, match="no order"):
        PublishGate(THUMB).check_http01("tok", f"tok.{THUMB}")
