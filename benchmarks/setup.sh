#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, for benchmarks/run.sh.
#
# Installs the Debian packages of the CA and of every client measured
# (pebble; the original lacme with its accountd and the RSA module its
# client needs; acme-tiny, uacme, certbot; util-linux for unshare;
# systemd-container and make for the systemd-mode box), then
# installs this tree into a virtual environment made with the system's
# python3 under /opt, where the unprivileged users the components drop to
# can run it (a per-user Python under a 0700 home is out of their reach).
# Dependencies are installed once; the tree is reinstalled on every call,
# so the benchmark always measures the working tree.
set -euo pipefail

VENV=${LACME_BENCH_VENV:-/opt/lacme-bench-venv}  # another one: two trees side by side
PACKAGES=(
    pebble lacme lacme-accountd libcrypt-openssl-rsa-perl acme-tiny uacme certbot
    python3 python3-venv python3-dev libsystemd-dev pkg-config gcc util-linux mount
    systemd-container make
)

die() {
    echo "benchmarks/setup.sh: $*" >&2
    exit 1
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

install_packages() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        is_installed "$package" || missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

pip() {
    "$VENV/bin/python" -m pip --quiet --disable-pip-version-check "$@"
}

install_venv() {
    local root=$1
    if [ ! -x "$VENV/bin/python" ]; then
        /usr/bin/python3 -m venv "$VENV"
    fi
    if [ ! -e "$VENV/.deps-installed" ]; then
        pip install --upgrade pip setuptools wheel
        pip install "cryptography>=42" "requests>=2.28" "systemd-python>=234"
        touch "$VENV/.deps-installed"
    fi
    # a copy of the tree, not a link: the components must not read /work as another user
    pip install --no-deps --no-build-isolation --force-reinstall "$root"
    chmod -R go+rX "$VENV"
}

main() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"
    install_packages
    install_venv "$root"
    "$VENV/bin/python" -c 'import lacme, cryptography, requests, systemd.journal' \
        || die "$VENV: the project or a dependency does not import"
    echo "benchmarks/setup.sh: ready ($VENV)" >&2
}

main "$@"
