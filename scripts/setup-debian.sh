#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, to build and test lacme.
#
# Installs the Debian packages the test suite needs (the Pebble test CA,
# the original Perl lacme for compatibility tests, systemd-nspawn, the
# build dependencies of systemd-python), then installs this project in
# editable mode with its test extras for the python3 found on PATH.
# Also fetches Debian unstable's pebble (2.10: ACME Renewal Information,
# profiles) into /opt/lacme-pebble-sid (override: LACME_PEBBLE_SID_DIR),
# without touching the system's apt configuration: a private source list,
# list and cache directories are passed to apt-get, and the package is
# unpacked with dpkg -x, not installed.
# Idempotent: apt is skipped when every package is already installed, the
# unstable pebble when it is already unpacked, and pip reinstalls the same
# editable project.  Exits non-zero on any failure.
set -euo pipefail

PACKAGES=(
    pebble lacme lacme-accountd libcrypt-openssl-rsa-perl
    libsystemd-dev pkg-config systemd-container iptables openssl gnupg
    python3-venv python3-dev python3-pip gcc make iproute2
    nginx-light apache2 mandoc groff-base man-db debootstrap faketime
    openssh-server openssh-client
)
# Test peers that are daemons: the tests start instances of their own on
# loopback ports.  Installing them must not start them on this machine's
# port 80 (nginx and apache2 would even compete for it) nor enable them for
# the next boot; a machine that already had them keeps them as they were.
PEER_DAEMONS=(nginx-light:nginx apache2:apache2 openssh-server:ssh)
POLICY_RC_D=${LACME_POLICY_RC_D:-/usr/sbin/policy-rc.d}

die() {
    echo "setup-debian.sh: $*" >&2
    exit 1
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

# The policy is captured first: under pipefail, piping apt-cache into a "grep -q"
# fails when grep exits at its first match and apt-cache dies of SIGPIPE.
has_candidate() {
    local policy
    policy=$(apt-cache policy "$1") || return 1
    grep '^ *Candidate: [^(]' <<<"$policy" >/dev/null
}

install_packages() {
    local missing=() unknown=() package
    for package in "${PACKAGES[@]}"; do
        is_installed "$package" || missing+=("$package")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "setup-debian.sh: all ${#PACKAGES[@]} Debian packages already installed"
        return
    fi
    apt-get update
    for package in "${missing[@]}"; do
        has_candidate "$package" || unknown+=("$package")
    done
    [ "${#unknown[@]}" -eq 0 ] || die "apt: no installation candidate for: ${unknown[*]}"
    local peers=() entry made_policy=0
    for entry in "${PEER_DAEMONS[@]}"; do
        [[ " ${missing[*]} " == *" ${entry%%:*} "* ]] && peers+=("${entry#*:}")
    done
    if [ "${#peers[@]}" -gt 0 ] && [ ! -e "$POLICY_RC_D" ]; then
        # invoke-rc.d asks policy-rc.d; 101 means "action forbidden"
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D" && chmod 0755 "$POLICY_RC_D" && made_policy=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" || status=$?
    [ "$made_policy" -eq 0 ] || rm -f "$POLICY_RC_D"
    [ "$status" -eq 0 ] || die "apt-get install failed (exit $status)"
    if [ "${#peers[@]}" -gt 0 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --quiet "${peers[@]}" || true
    fi
}

SID_DIR=${LACME_PEBBLE_SID_DIR:-/opt/lacme-pebble-sid}

# apt-get with a private configuration for Debian unstable: nothing under
# /etc/apt or /var/lib/apt is read for sources nor written.
apt_sid() {
    local work=$1
    shift
    apt-get -q -o Dir::Etc::sourcelist="$work/sid.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
        -o Dir::Cache::archives="$work/archives" -o APT::Get::List-Cleanup=0 \
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}

# The mirror of the system's sources (deb822 or one-line format).
debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- -security | head -n1)
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

fetch_pebble_sid() {
    local work deb
    if [ -x "$SID_DIR/usr/bin/pebble" ] && [ -x "$SID_DIR/usr/bin/pebble-challtestsrv" ]; then
        echo "setup-debian.sh: unstable pebble already in $SID_DIR ($(cat "$SID_DIR/VERSION" 2>/dev/null))"
        return
    fi
    work=$(mktemp -d)
    mkdir -p "$work/lists/partial" "$work/cache" "$work/archives/partial" "$work/deb"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) sid main" \
        >"$work/sid.list"
    apt_sid "$work" update >/dev/null || { rm -rf "$work"; die "apt-get update (private, sid) failed"; }
    (cd "$work/deb" && apt_sid "$work" download pebble >/dev/null) \
        || { rm -rf "$work"; die "apt-get download pebble (sid) failed"; }
    deb=$(ls "$work"/deb/pebble_*.deb)
    rm -rf "$SID_DIR.new"
    mkdir -p "$SID_DIR.new"
    dpkg -x "$deb" "$SID_DIR.new"
    dpkg-deb -f "$deb" Version >"$SID_DIR.new/VERSION"
    rm -rf "$SID_DIR"
    mv "$SID_DIR.new" "$SID_DIR"
    rm -rf "$work"
    echo "setup-debian.sh: unstable pebble $(cat "$SID_DIR/VERSION") unpacked into $SID_DIR"
}

# PEP 668: outside a virtual environment, a Python whose stdlib directory
# holds EXTERNALLY-MANAGED makes pip refuse to install unless told to.
pip_needs_override() {
    python3 - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)
PY
}

install_project() {
    local root=$1 args=(install --quiet --editable "$root[test]")
    if pip_needs_override; then
        args+=(--break-system-packages)
    fi
    echo "setup-debian.sh: python3 -m pip ${args[*]} ($(command -v python3))"
    python3 -m pip "${args[@]}"
}

main() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    [ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install)"
    command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"
    install_packages
    fetch_pebble_sid
    install_project "$root"
    python3 -c 'import lacme, systemd.journal, cryptography, requests, pytest, hypothesis' \
        || die "python3: the project or a dependency does not import after installation"
    echo "setup-debian.sh: ready ($root)"
}

# Sourced (the tests, scripts/check-bare-machine.sh): functions only, no run.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
