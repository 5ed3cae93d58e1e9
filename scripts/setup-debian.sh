#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, to build and test lacme.
#
# Installs the Debian packages the test suite needs (the Pebble test CA,
# the original Perl lacme for compatibility tests, systemd-nspawn, the
# build dependencies of systemd-python), then installs this project in
# editable mode with its test extras for the python3 found on PATH.
# Idempotent: apt is skipped when every package is already installed, and
# pip reinstalls the same editable project.  Exits non-zero on any failure.
set -euo pipefail

PACKAGES=(
    pebble lacme lacme-accountd libcrypt-openssl-rsa-perl
    libsystemd-dev pkg-config systemd-container iptables openssl gnupg
    python3-venv python3-dev python3-pip gcc make iproute2
)

die() {
    echo "setup-debian.sh: $*" >&2
    exit 1
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

has_candidate() {
    apt-cache policy "$1" | grep -q '^ *Candidate: [^(]'
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
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
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
    install_project "$root"
    python3 -c 'import lacme, systemd.journal, cryptography, requests, pytest, hypothesis' \
        || die "python3: the project or a dependency does not import after installation"
    echo "setup-debian.sh: ready ($root)"
}

main "$@"
