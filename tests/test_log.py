"""lacme.core.log under systemd: the journal handler is loaded with the first
record, and without systemd-python the records stay plain lines on stderr.

Each case runs in its own interpreter, with JOURNAL_STREAM naming the file
its stderr is, as systemd sets it (systemd.exec(5)).  That the fields reach
journald is tested in the booted box (tests/systemd/test_systemd_e2e.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import logging, sys
{before}
from lacme.core import log
logger = log.setup("lacme-probe")
print("after setup:", sys.modules.get("systemd.journal") is not None)
logger.debug("below the level")
print("after a debug record:", sys.modules.get("systemd.journal") is not None)
logging.raiseExceptions = False  # no journald here: a failed send is not this test's concern
logger.warning("a warning %s", "line")
print("after a warning:", sys.modules.get("systemd.journal") is not None)
"""


def run_under_journal(tmp_path: Path, before: str = "") -> tuple[str, str]:
    err = tmp_path / "stderr"
    with open(err, "wb") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=env,
                             stdout=subprocess.PIPE, stderr=fh, text=True, check=True, timeout=60)
    return out.stdout, err.read_text()


def test_journal_handler_is_loaded_with_the_first_record(tmp_path: Path) -> None:
    out, err = run_under_journal(tmp_path)
    assert out.splitlines() == ["after setup: False", "after a debug record: False",
                                "after a warning: True"]
    assert "a warning line" not in err  # it went to the journal handler, not stderr


def test_without_systemd_python_records_are_plain_lines(tmp_path: Path) -> None:
    out, err = run_under_journal(tmp_path, before="sys.modules['systemd.journal'] = None")
    assert "after a warning: False" in out
    assert err == "warning: a warning line\n"
