#!/usr/bin/env bash
# ARI renewal benchmark: lacme, certbot 5.x and lego 4.35 against Pebble 2.10.
#
# Run as root on Debian 12 from the tree root or anywhere: installs what is
# missing, then runs benchmarks/ari/run.py (about 9 minutes, loopback only).
#   - Pebble 2.10 from Debian unstable: scripts/setup-debian.sh (must have run).
#   - certbot 5.x from PyPI in its own venv: /opt/lacme-ari-certbot.
#   - lego from Debian unstable, unpacked (not installed) into /opt/lacme-ari-lego
#     with a private apt source list, as scripts/setup-debian.sh does for pebble.
# Idempotent; exits non-zero on a failed installation.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CERTBOT_VENV=/opt/lacme-ari-certbot
LEGO_DIR=/opt/lacme-ari-lego

die() {
    echo "benchmarks/ari/run.sh: $*" >&2
    exit 1
}

install_certbot() {
    [ -x "$CERTBOT_VENV/bin/certbot" ] && return
    python3 -m venv "$CERTBOT_VENV"
    "$CERTBOT_VENV/bin/pip" install --quiet 'certbot>=5,<6' || die "pip install certbot failed"
}

debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- -security | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

install_lego() {
    local work deb
    [ -x "$LEGO_DIR/usr/bin/lego" ] && return
    work=$(mktemp -d)
    mkdir -p "$work/lists/partial" "$work/cache" "$work/archives/partial" "$work/deb"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) sid main" \
        >"$work/sid.list"
    local apt=(apt-get -q -o Dir::Etc::sourcelist="$work/sid.list" -o Dir::Etc::sourceparts=-
        -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache"
        -o Dir::Cache::archives="$work/archives" -o APT::Get::List-Cleanup=0
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    "${apt[@]}" update >/dev/null || die "apt-get update (private, sid) failed"
    (cd "$work/deb" && "${apt[@]}" download lego >/dev/null) || die "apt-get download lego failed"
    deb=$(ls "$work"/deb/lego_*.deb)
    rm -rf "$LEGO_DIR"
    mkdir -p "$LEGO_DIR"
    dpkg -x "$deb" "$LEGO_DIR"
    dpkg-deb -f "$deb" Version >"$LEGO_DIR/VERSION"
    rm -rf "$work"
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -x /opt/lacme-pebble-sid/usr/bin/pebble ] || die "Pebble 2.10 missing: run scripts/setup-debian.sh"
install_certbot
install_lego
cd "$ROOT"
exec python3 benchmarks/ari/run.py "$@"
