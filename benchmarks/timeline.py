#!/usr/bin/env python3
"""Where S1's time goes: a per-process timeline of one S1 (fork mode), as root.

    LACME_BENCH_VENV=/opt/lacme-bench-venv benchmarks/setup.sh
    /opt/lacme-bench-venv/bin/python benchmarks/timeline.py [--trust pebble|system] [--runs 3]

Starts Pebble as bench.py does (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0),
installs timeline_hook.py in this venv for the duration of the runs (a
``.pth`` in site-packages, removed at the end), and times S1 as the
benchmark does: ``lacme account --register --tos-agreed`` then ``lacme
newOrder``, fresh state, RSA-2048 account key, the same configuration as
clients.Lacme.  Every Python process of the run logs its events (interpreter
ready, imports, forks, execs, connects, each HTTP request line, each message
on a UNIX socket, files opened for writing, exit) with CLOCK_MONOTONIC
stamps; this script merges them and writes TIMELINE.md (``--out``): for the
last run the full event list, and for every run the phase summary per
process.  The hook costs one write(2) per event (a few hundred per run),
which the figures include.
"""

from __future__ import annotations

import argparse
import os
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from clients import Context, Lacme, unique_names  # noqa: E402
from timeline_hook import DIRECTORY  # noqa: E402

from tests.pebble import start_pebble  # noqa: E402

PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def install_hook() -> Path:
    target = Path(site.getsitepackages()[0])
    shutil.copy(HERE / "timeline_hook.py", target / "lacme_bench_timeline_hook.py")
    (target / "lacme_bench_timeline_hook.pth").write_text("import lacme_bench_timeline_hook\n")
    for name in ("lacme_bench_timeline_hook.py", "lacme_bench_timeline_hook.pth"):
        (target / name).chmod(0o644)
    return target


def remove_hook(target: Path) -> None:
    for name in ("lacme_bench_timeline_hook.py", "lacme_bench_timeline_hook.pth"):
        (target / name).unlink(missing_ok=True)


def read_events() -> list[tuple[float, int, str, str]]:
    events = []
    for path in Path(DIRECTORY).glob("*.tsv"):
        pid = int(path.stem)
        for line in path.read_text(errors="replace").splitlines():
            t, event, detail = [*line.split("\t", 2), "", ""][:3]
            events.append((float(t), pid, event, detail))
    return sorted(events)


def program_names(events: list[tuple[float, int, str, str]]) -> dict[int, str]:
    names = {}
    for _, pid, event, detail in events:
        if event == "ready" and pid not in names:
            parts = detail.split()
            names[pid] = parts[1] if len(parts) > 1 and parts[0].startswith("python") else parts[0]
    return names


def phases(events: list[tuple[float, int, str, str]], t0: float) -> list[dict]:
    """Per process: ready, imports done (last import before its first other event),
    first and last request, exit; milliseconds from t0."""
    names = program_names(events)
    out = []
    for pid, name in names.items():
        execs = [e[0] for e in events if e[1] == pid and e[2] == "exec"]
        own = [e for e in events if e[1] == pid]
        ready = next(e[0] for e in own if e[2] == "ready")
        own = [e for e in own if e[0] >= ready]  # after the exec: this program's own
        work = [e for e in own if e[2] not in ("import", "ready")]
        first_work = work[0][0] if work else own[-1][0]
        imports = [e[0] for e in own if e[2] == "import" and e[0] <= first_work]
        late = sum(1 for e in own if e[2] == "import" and e[0] > first_work)
        requests = [e for e in own if e[2] == "request"]
        exits = [e[0] for e in own if e[2] == "exit"]
        spawned = execs[-1:]
        out.append({
            "pid": pid, "program": name,
            "exec": round((spawned[-1] - t0) * 1000, 1) if spawned else None,
            "ready": round((ready - t0) * 1000, 1),
            "imports_done": round(((imports[-1] if imports else ready) - t0) * 1000, 1),
            "late_imports": late,
            "first_request": round((requests[0][0] - t0) * 1000, 1) if requests else None,
            "last_request": round((requests[-1][0] - t0) * 1000, 1) if requests else None,
            "requests": len(requests),
            "exit": round((exits[-1] - t0) * 1000, 1) if exits else None,
        })
    return sorted(out, key=lambda p: p["ready"])


def run_s1(adapter: Lacme) -> tuple[float, float, float, list[tuple[float, int, str, str]]]:
    """One S1: (wall, the account command's wall, start, events)."""
    shutil.rmtree(DIRECTORY, ignore_errors=True)
    os.mkdir(DIRECTORY)
    os.chmod(DIRECTORY, 0o1777)
    state = adapter.state_dir("timeline")
    commands = adapter.issue(state, [unique_names(1)], register=True)
    t0 = time.monotonic()
    for i, command in enumerate(commands):
        with open(state / "run.log", "ab") as log:
            done = subprocess.run(command.argv, env=dict(command.env), cwd=command.cwd,
                                  stdout=log, stderr=log)
        if i == 0:
            mid = time.monotonic()
        if done.returncode != 0:
            raise SystemExit(f"timeline: {command.argv[2]} exited {done.returncode} "
                             f"(see {state}/run.log)")
    wall = time.monotonic() - t0
    events = read_events()
    shutil.rmtree(DIRECTORY, ignore_errors=True)
    return wall, mid - t0, t0, [e for e in events if e[0] >= t0]


def render(trust: str, walls: list[tuple[float, float]], summaries: list[list[dict]],
           events: list[tuple[float, int, str, str]], t0: float) -> str:
    names = program_names(events)
    lines = ["# Where S1's time goes (fork mode)", "",
             f"`benchmarks/timeline.py --trust {trust}`: {len(walls)} runs of S1 (`account "
             "--register --tos-agreed`, then `newOrder`, one name), each process's events "
             "from timeline_hook.py, in ms from the first command's start.  Load average at the "
             f"end: {os.getloadavg()[0]:.2f} (2 cores, shared).", "",
             f"S1 wall, median of {len(walls)}: {statistics.median(w for w, _ in walls) * 1000:.0f} ms "
             f"(account {statistics.median(m for _, m in walls) * 1000:.0f} ms, newOrder "
             f"{statistics.median(w - m for w, m in walls) * 1000:.0f} ms).", "",
             "## Phases per process, every run", "",
             "| run | program | exec | interpreter ready | imports done | late imports "
             "| first request | last request | requests | exit |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, summary in enumerate(summaries):
        for p in summary:
            lines.append(f"| {i + 1} | {p['program']} | {p['exec'] or ''} | {p['ready']} "
                         f"| {p['imports_done']} | {p['late_imports']} | {p['first_request'] or ''} "
                         f"| {p['last_request'] or ''} | {p['requests']} | {p['exit'] or ''} |")
    lines += ["", "## Every event of the last run (imports folded: first and last of a run)", "",
              "| ms | program (pid) | event | detail |", "| ---: | --- | --- | --- |"]
    folded: list[tuple[float, int, str, str]] = []
    for e in events:
        if e[2] == "import" and folded and folded[-1][1] == e[1] and folded[-1][2].startswith("import"):
            first = folded[-1]
            count = int(first[2].split("x")[-1]) + 1 if "x" in first[2] else 2
            folded[-1] = (e[0], e[1], f"imports x{count}", f"{first[3].split(' .. ')[0]} .. {e[3]}")
            continue
        folded.append(e)
    for t, pid, event, detail in folded:
        lines.append(f"| {(t - t0) * 1000:.1f} | {names.get(pid, '?')} ({pid}) | {event} "
                     f"| {detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    sys.stderr.write(f"timeline: {message}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--trust", choices=("pebble", "system"), default="pebble")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "TIMELINE.md"))
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("timeline: must run as root (the components drop privileges)")
    work = Path(tempfile.mkdtemp(prefix="lacme-timeline-"))
    work.chmod(0o755)
    pebble = start_pebble(work / "pebble", env=PEBBLE_ENV)
    target = install_hook()
    try:
        root = work / "pebble-root.pem"
        pebble.write_root(root)
        trust = work / "trust.crt"
        pebble_ca = Path(pebble.tls_ca_file).read_bytes()
        trust.write_bytes((Path(SYSTEM_BUNDLE).read_bytes() if args.trust == "system" else b"")
                          + pebble_ca)
        for path in (root, trust):
            path.chmod(0o644)
        adapter = Lacme(Context(pebble.directory_url, pebble.http_port, str(trust), str(root), work))
        walls, summaries = [], []
        for _ in range(args.runs):
            wall, mid, t0, events = run_s1(adapter)
            walls.append((wall, mid))
            summaries.append(phases(events, t0))
            say(f"S1 {wall:.3f}s (account {mid:.3f}s)")
        Path(args.out).write_text(render(args.trust, walls, summaries, events, t0))
        say(f"wrote {args.out}")
    finally:
        remove_hook(target)
        pebble.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
