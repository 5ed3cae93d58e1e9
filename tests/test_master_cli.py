"""The master's command line: the quick reader of the common newOrder forms
must agree with argparse wherever it answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.master.cli import build_parser
from lacme.master.main import parse_args, quick_parse

TOKENS = ["newOrder", "new-order", "new-cert", "status", "account", "--config", "--config=c",
          "--config=", "--conf=c", "--socket", "--socket=s", "-q", "--quiet", "-qq", "--debug",
          "--config-certs", "--config-certs=f", "--config-cert=f", "--min-days", "--min-days=3",
          "--min-days=-2", "--min-days=+4", "--min-days=x", "--min-days=1_0", "--force", "--",
          "-h", "--help", "--version", "3", "-1", "www", "", "-", "a b", "-x y"]


def argparse_reading(argv: list[str]) -> dict | None:
    try:
        return vars(build_parser().parse_args(argv))
    except SystemExit:
        return None


@given(st.lists(st.sampled_from(TOKENS), max_size=7))
@settings(max_examples=1500, deadline=None)
def test_quick_reading_is_argparse_reading(argv):
    quick = quick_parse(argv)
    if quick is not None:
        assert vars(quick) == argparse_reading(argv)


@pytest.mark.parametrize("argv", [
    ["newOrder"],
    ["--config=/etc/x.conf", "newOrder"],
    ["--config", "/etc/x.conf", "-q", "new-order", "--force", "www", "mail"],
    ["--debug", "new-cert", "--config-certs", "a", "--config-certs=b", "--min-days=10", "s"],
    ["--socket=/run/s", "newOrder", "--min-days", "0"],
])
def test_common_new_order_forms_are_read_quickly(argv):
    quick = quick_parse(argv)
    assert quick is not None
    assert vars(quick) == argparse_reading(argv)


@pytest.mark.parametrize("argv", [["status"], ["newOrder", "--force", "--min-days=1"],
                                  ["newOrder", "www", "--force"], ["--conf=x", "newOrder"], []])
def test_other_forms_are_left_to_argparse(argv):
    assert quick_parse(argv) is None


def test_usage_errors_still_come_from_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["newOrder", "--force", "--min-days=1"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
