"""scripts/setup-debian.sh's package check, against stand-ins for apt.

The script is sourced (its ``main`` runs only when it is executed), so its
functions run in isolation with ``apt-cache``, ``apt-get`` and ``dpkg-query``
replaced by small scripts first on PATH.  The ``apt-cache`` stand-in prints a
policy as apt does, followed by a version table of several hundred kilobytes:
more than a pipe holds, so a reader that stops at the Candidate line makes it
die of SIGPIPE, as the real apt-cache does on this machine.

The old check, ``apt-cache policy "$1" | grep -q ...`` under the script's
``set -o pipefail``, is run against the same stand-in to show that the
stand-in reproduces the trap (the old form reports a present candidate as
missing); the current check must find it.  No root, no network.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

TREE_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = TREE_ROOT / "scripts" / "setup-debian.sh"

# Package names the stand-ins understand: present-* have a candidate,
# none-* show "Candidate: (none)", anything else is unknown to apt.
APT_CACHE = r"""#!/bin/bash
[ "$1" = policy ] || { echo "apt-cache stand-in: only 'policy' is known" >&2; exit 100; }
case $2 in
    present-*) candidate=2.4.0+ds1-2 ;;
    none-*) candidate='(none)' ;;
    *) exit 0 ;;  # apt-cache policy prints nothing for an unknown name
esac
printf '%s:\n  Installed: (none)\n  Candidate: %s\n  Version table:\n' "$2" "$candidate"
line=$(printf '%-71s' "     $candidate 500 /var/lib/apt/lists/stand-in_bookworm_main_Packages")
for ((i = 0; i < 5000; i++)); do
    printf '%s\n' "$line"
done
"""

APT_GET = r"""#!/bin/bash
printf '%s\n' "$*" >>"$STUB_LOG"
"""

DPKG_QUERY = r"""#!/bin/bash
# dpkg-query -W -f='${db:Status-Abbrev}' NAME: "ii " for the names in $STUB_INSTALLED
for name in $STUB_INSTALLED; do
    [ "$name" = "${!#}" ] && { printf 'ii '; exit 0; }
done
exit 1
"""

# The check as it was before the fix, kept here to prove the stand-in bites.
OLD_CHECK = """old_has_candidate() {
    apt-cache policy "$1" | grep -q '^ *Candidate: [^(]'
}
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-cache", APT_CACHE), ("apt-get", APT_GET),
                       ("dpkg-query", DPKG_QUERY)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


def source_and_run(stubs: Path, body: str, installed: str = "") -> subprocess.CompletedProcess[str]:
    """Source the setup script in bash (so its set -euo pipefail is on), then
    run ``body``; the apt stand-ins come first on PATH."""
    log = stubs.parent / "apt-get.log"
    env = {"PATH": f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LC_ALL": "C",
           "STUB_LOG": str(log), "STUB_INSTALLED": installed}
    script = f"source {str(SCRIPT)!r}\n{OLD_CHECK}{body}\n"
    # restore_signals (the default) gives bash the default SIGPIPE action,
    # which Python itself ignores: the trap needs it.
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def verdict(function: str, package: str) -> str:
    return f'if {function} {package}; then echo found; else echo missing; fi'


def apt_get_calls(stubs: Path) -> list[str]:
    log = stubs.parent / "apt-get.log"
    return log.read_text().splitlines() if log.exists() else []


def test_sourcing_runs_nothing(stubs: Path) -> None:
    done = source_and_run(stubs, "echo sourced; [[ $(set -o) == *pipefail*on* ]] && echo pipefail")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sourced", "pipefail"]
    assert done.stderr == ""
    assert apt_get_calls(stubs) == []


def test_stand_in_reproduces_the_sigpipe_trap(stubs: Path) -> None:
    """The old one-liner reports a present candidate as missing: grep -q exits
    at the Candidate line, the stand-in dies of SIGPIPE (141) while writing
    the rest, and pipefail makes that the pipeline's status."""
    done = source_and_run(stubs, verdict("old_has_candidate", "present-pebble") + "\n"
                          "set +e; apt-cache policy present-pebble | grep -q Candidate; "
                          'echo "statuses ${PIPESTATUS[*]}"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["missing", "statuses 141 0"]


def test_has_candidate_finds_a_candidate_behind_a_long_policy(stubs: Path) -> None:
    done = source_and_run(stubs, verdict("has_candidate", "present-pebble"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "found"


def test_candidate_none_is_missing(stubs: Path) -> None:
    done = source_and_run(stubs, verdict("has_candidate", "none-virtual") + "\n"
                          + verdict("has_candidate", "unknown-name"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["missing", "missing"]


def test_failing_apt_cache_is_missing(stubs: Path) -> None:
    (stubs / "apt-cache").write_text("#!/bin/sh\necho 'E: broken cache' >&2\nexit 100\n")
    done = source_and_run(stubs, verdict("has_candidate", "present-pebble"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "missing"


def test_install_packages_installs_the_missing_ones(stubs: Path) -> None:
    done = source_and_run(stubs, "PACKAGES=(present-a present-b present-c)\ninstall_packages",
                          installed="present-b")
    assert done.returncode == 0, done.stderr
    assert apt_get_calls(stubs) == [
        "update", "install -y --no-install-recommends present-a present-c"]


def test_install_packages_names_every_package_without_candidate(stubs: Path) -> None:
    done = source_and_run(stubs, "PACKAGES=(present-a none-b gone-c)\ninstall_packages\n"
                          "echo not reached")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "setup-debian.sh: apt: no installation candidate for: none-b gone-c"]
    assert "not reached" not in done.stdout
    assert apt_get_calls(stubs) == ["update"]  # nothing installed


def test_install_packages_does_nothing_when_all_are_installed(stubs: Path) -> None:
    done = source_and_run(stubs, "PACKAGES=(present-a present-b)\ninstall_packages",
                          installed="present-a present-b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "setup-debian.sh: all 2 Debian packages already installed"
    assert apt_get_calls(stubs) == []


def test_no_script_pipes_into_grep_q() -> None:
    """Every shell script here runs under pipefail: none may end a pipe in grep -q."""
    scripts = sorted((TREE_ROOT / "scripts").glob("*.sh")) + [TREE_ROOT / ".ci" / "run"]
    offenders = [f"{path.relative_to(TREE_ROOT)}:{number}"
                 for path in scripts
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\|\s*grep\s+(-\w*q|--quiet|--silent)", line)
                 and not line.lstrip().startswith("#")]
    assert offenders == []


def test_installing_web_server_peers_does_not_start_them(stubs: Path, tmp_path: Path) -> None:
    # apt runs with a policy-rc.d that forbids starting daemons, removed afterwards
    policy = tmp_path / "policy-rc.d"
    (stubs / "apt-get").write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = install ]; then {policy} start nginx; echo "policy=$?" >>"$STUB_LOG"; fi\n'
        'echo "apt-get $*" >>"$STUB_LOG"\n')
    done = source_and_run(stubs, f"POLICY_RC_D={policy}\nPACKAGES=(present-a present-web)\n"
                          "PEER_DAEMONS=(present-web:nginx)\ninstall_packages")
    assert done.returncode == 0, done.stderr
    assert "policy=101" in apt_get_calls(stubs)
    assert not policy.exists()


def test_an_existing_policy_rc_d_is_left_alone(stubs: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    done = source_and_run(stubs, f"POLICY_RC_D={policy}\nPACKAGES=(present-web)\n"
                          "PEER_DAEMONS=(present-web:nginx)\ninstall_packages")
    assert done.returncode == 0, done.stderr
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
