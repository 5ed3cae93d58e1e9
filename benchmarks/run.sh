#!/usr/bin/env bash
# The benchmark, in one command (as root on Debian 12): set up, then run every
# scenario for every client.  Arguments go to bench.py (see --help).
# The runner gets a private mount namespace: the CA bundle it extends with
# Pebble's TLS CA is visible to the benchmarked clients only, and vanishes
# with it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -n "${LACME_BENCH_NO_SETUP:-}" ] || "$here/setup.sh"
LACME_BENCH_HOST_NS=$(readlink /proc/self/ns/mnt) exec unshare --mount --propagation private "${LACME_BENCH_VENV:-/opt/lacme-bench-venv}/bin/python" "$here/bench.py" "$@"
