#!/usr/bin/env bash
# Run the README's first command on a bare Debian 12 root, as root:
#
#     scripts/setup-debian.sh && python3 scripts/demo.py
#
# The root is `debootstrap --variant=minbase bookworm`: the essential
# packages and apt, which every Debian 12 installation has.  No python3, git,
# ca-certificates or compiler is assumed: setup-debian.sh must install
# whatever the command needs, and this check is the one that sees a missing
# step.  The repository is cloned on the host (the README starts "from a
# clone"), so git is not needed inside; the clone is of HEAD, so only what
# is committed is tested.
#
# The root gets this machine's apt sources and apt.conf.d, its pip
# configuration and its CA trust store: downloads from the Debian mirror and
# the Python package index go through them here.  As in any image build,
# /usr/sbin/policy-rc.d keeps installed daemons from starting (the container
# shares the host's network: nginx and apache2 would take port 80 there).
# The command runs in systemd-nspawn (not booted, the host's network; the
# demo's Pebble listens on 127.0.0.1), its two halves timed separately; the
# demo runs only if the setup succeeded, as with &&.
#
# Only the pristine debootstrap output is cached, as a tarball in
# $LACME_BARE_CACHE (default /var/cache/lacme-bare); every run unpacks a
# fresh copy, so nothing an install step did can be reused.
#
# Usage: scripts/check-bare-machine.sh [--no-cache] [--keep]
#   --no-cache  run debootstrap, neither reading nor writing the cache
#   --keep      keep the root (its path is printed) instead of removing it
# Needs root, debootstrap, systemd-container (systemd-nspawn) and git; all
# are installed by scripts/setup-debian.sh.  Exits non-zero on any failure.
set -euo pipefail

TREE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# debian_mirror (the mirror of the host's apt sources); main does not run.
# shellcheck source=scripts/setup-debian.sh
source "$TREE/scripts/setup-debian.sh"

SUITE=bookworm
VARIANT=minbase
CLONE=/root/lacme
SETUP_COMMAND=scripts/setup-debian.sh
DEMO_COMMAND="python3 scripts/demo.py"
CACHE_DIR=${LACME_BARE_CACHE-/var/cache/lacme-bare}

die() {
    echo "check-bare-machine.sh: $*" >&2
    exit 1
}

note() {
    echo "check-bare-machine.sh: $*"
}

now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
}

seconds() {  # milliseconds as seconds with one decimal
    printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100))
}

# -- cgroups: without systemd on the host, every nspawn started from the
# same cgroup puts its payload into the same "payload" cgroup, so the
# launcher first moves into a cgroup of its own (one per hierarchy nspawn
# uses: the unified one and name=systemd).

our_cgroups() {
    local unified named id controllers path
    unified=$(awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) == "cgroup2") { print $5; exit } }' \
        /proc/self/mountinfo)
    named=$(awk '{ for (i = 7; $i != "-"; i++);
                   if ($(i + 1) == "cgroup" && ("," $(i + 3) ",") ~ /,name=systemd,/) { print $5; exit } }' \
        /proc/self/mountinfo)
    while IFS=: read -r id controllers path; do
        if [ -z "$controllers" ] && [ -n "$unified" ]; then
            echo "${unified%/}$path"
        elif [ "$controllers" = name=systemd ] && [ -n "$named" ]; then
            echo "${named%/}$path"
        fi
    done </proc/self/cgroup
}

CGROUPS=()

make_cgroups() {
    local base dir
    while read -r base; do
        dir="${base%/}/$1"
        mkdir "$dir" || die "cannot create cgroup $dir"
        CGROUPS+=("$dir")
    done < <(our_cgroups)
}

join_cgroups() {
    local dir
    for dir in "${CGROUPS[@]}"; do
        echo "$BASHPID" >"$dir/cgroup.procs" || die "cannot move into cgroup $dir"
    done
}

remove_cgroups() {
    local dir sub pid tries
    for dir in "${CGROUPS[@]}"; do
        [ -d "$dir" ] || continue
        while read -r sub; do
            if [ -f "$sub/cgroup.kill" ]; then
                echo 1 >"$sub/cgroup.kill" 2>/dev/null || true
            else
                while read -r pid; do
                    kill -KILL "$pid" 2>/dev/null || true
                done <"$sub/cgroup.procs"
            fi
        done < <(find "$dir" -depth -type d)
        for tries in 1 2 3 4 5 6 7 8 9 10; do
            find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [ -d "$dir" ] || break
            sleep 0.2
        done
        [ ! -d "$dir" ] || echo "check-bare-machine.sh: cgroup $dir left behind (busy)" >&2
    done
}

# -- the root

WORK=
KEEP=0

unmount_below() {
    local point
    while read -r point; do
        umount -l "$point" 2>/dev/null || true
    done < <(awk -v prefix="$1" '$5 == prefix || index($5, prefix "/") == 1 { print length($5), $5 }' \
        /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    remove_cgroups
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        unmount_below "$WORK"
        if [ "$KEEP" -eq 1 ]; then
            note "kept the root: $WORK/root"
        else
            rm -rf --one-file-system "$WORK" \
                || echo "check-bare-machine.sh: could not remove $WORK" >&2
        fi
    fi
    exit "$status"
}

debootstrap_root() {
    local root=$1 mirror=$2 log=$WORK/debootstrap.log
    if ! debootstrap --variant="$VARIANT" "$SUITE" "$root" "$mirror" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "debootstrap --variant=$VARIANT $SUITE $mirror failed"
    fi
}

ROOT_FROM=

# A fresh root in $1: unpacked from the cached tarball of a pristine
# debootstrap, or made by debootstrap (and then cached before anything
# else touches it).
fresh_root() {
    local root=$1 use_cache=$2 mirror arch key tarball
    mirror=$(debian_mirror)
    arch=$(dpkg --print-architecture)
    key=$(printf '%s' "$mirror" | sha256sum | cut -c1-12)
    tarball="$CACHE_DIR/$SUITE-$VARIANT-$arch-$key.tar"
    if [ "$use_cache" -eq 1 ] && [ -n "$CACHE_DIR" ] && [ -f "$tarball" ]; then
        mkdir "$root"
        tar -C "$root" --numeric-owner -xpf "$tarball" || die "cannot unpack $tarball"
        ROOT_FROM="unpacking the cached debootstrap"
        return
    fi
    note "debootstrap --variant=$VARIANT $SUITE $mirror"
    debootstrap_root "$root" "$mirror"
    ROOT_FROM=debootstrap
    if [ "$use_cache" -eq 1 ] && [ -n "$CACHE_DIR" ]; then
        mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR"
        tar -C "$root" --numeric-owner -cpf "$tarball.tmp" . || die "cannot write $tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        note "cached the pristine root in $tarball"
    fi
}

# This machine's apt, pip and CA configuration, the policy-rc.d of image
# builds, and a clone of HEAD at $CLONE.
prepare_root() {
    local root=$1 rev=$2 etc=$1/etc
    rm -f "$etc/apt/sources.list"  # debootstrap's: the host's sources replace it
    if [ -f /etc/apt/sources.list ]; then
        cp /etc/apt/sources.list "$etc/apt/sources.list"
    fi
    cp -a /etc/apt/sources.list.d/. "$etc/apt/sources.list.d/" || die "cannot copy /etc/apt/sources.list.d"
    cp -a /etc/apt/apt.conf.d/. "$etc/apt/apt.conf.d/" || die "cannot copy /etc/apt/apt.conf.d"
    if [ -f /etc/pip.conf ]; then
        cp /etc/pip.conf "$etc/pip.conf"
    fi
    if [ -d /etc/xdg/pip ]; then
        mkdir -p "$etc/xdg"
        cp -a /etc/xdg/pip "$etc/xdg/pip"
    fi
    mkdir -p "$root/usr/local/share/ca-certificates" "$etc/ssl/certs"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" \
        || die "cannot copy /usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$etc/ssl/certs/ca-certificates.crt" \
        || die "cannot copy /etc/ssl/certs/ca-certificates.crt"
    printf '#!/bin/sh\n# check-bare-machine.sh: no daemon starts in this root\nexit 101\n' \
        >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    git clone --quiet --no-hardlinks --no-checkout "$TREE" "$root$CLONE" \
        || die "git clone of $TREE failed"
    git -C "$root$CLONE" checkout --quiet --detach "$rev" || die "git checkout of $rev in the clone failed"
}

# Run one command as root in the root, in the clone, through systemd-nspawn.
in_root() {
    local root=$1 name=$2
    shift 2
    (
        join_cgroups
        exec systemd-nspawn --quiet -D "$root" -M "$name" --register=no --keep-unit --as-pid2 \
            --chdir="$CLONE" "$@"
    ) </dev/null
}

main() {
    local use_cache=1 rev name t0 t1 t_root t_setup t_demo arg
    for arg in "$@"; do
        case $arg in
            --no-cache) use_cache=0 ;;
            --keep) KEEP=1 ;;
            *) die "unknown argument: $arg (usage: check-bare-machine.sh [--no-cache] [--keep])" ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, systemd-nspawn)"
    for arg in debootstrap systemd-nspawn git tar; do
        command -v "$arg" >/dev/null || die "$arg not found (scripts/setup-debian.sh installs it)"
    done
    grep -F -x -- "$SETUP_COMMAND && $DEMO_COMMAND" "$TREE/README.md" >/dev/null \
        || die "README.md no longer shows the command this check runs: $SETUP_COMMAND && $DEMO_COMMAND"
    rev=$(git -C "$TREE" rev-parse --verify HEAD) || die "git: no HEAD in $TREE"
    if [ -n "$(git -C "$TREE" status --porcelain --untracked-files=no)" ]; then
        note "uncommitted changes in $TREE are not tested (the clone is of HEAD)"
    fi

    WORK=$(mktemp -d /var/tmp/lacme-bare.XXXXXX) || die "mktemp failed"
    name="lacme-bare-${WORK##*.}"
    trap cleanup EXIT
    trap 'echo "check-bare-machine.sh: interrupted (SIGINT)" >&2; exit 130' INT
    trap 'echo "check-bare-machine.sh: terminated (SIGTERM)" >&2; exit 143' TERM
    make_cgroups "$name"

    t0=$(now_ms)
    fresh_root "$WORK/root" "$use_cache"
    t1=$(now_ms)
    t_root=$((t1 - t0))
    note "$ROOT_FROM: $(seconds "$t_root") s"
    prepare_root "$WORK/root" "$rev"
    t0=$(now_ms)
    note "configuration copied and ${rev:0:12} cloned into $CLONE: $(seconds $((t0 - t1))) s"

    note "in the root, in $CLONE: $SETUP_COMMAND"
    in_root "$WORK/root" "$name" $SETUP_COMMAND || die "$SETUP_COMMAND failed in the bare root"
    t1=$(now_ms)
    t_setup=$((t1 - t0))
    note "in the root, in $CLONE: $DEMO_COMMAND"
    t0=$t1
    in_root "$WORK/root" "$name" $DEMO_COMMAND || die "$DEMO_COMMAND failed in the bare root"
    t1=$(now_ms)
    t_demo=$((t1 - t0))
    note "OK: $ROOT_FROM $(seconds "$t_root") s, setup $(seconds "$t_setup") s, demo $(seconds "$t_demo") s"
}

main "$@"
