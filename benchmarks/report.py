"""Figures, ratios and targets from the raw runs; results.json and RESULTS.md.

Run by the benchmark runner at the end (no I/O besides writing the two files).
Ratios are this project's wall time over a peer's, computed pair by pair
(run i against run i of the same round), then summarised by their median:
for fork mode ("lacme" over each peer, lacme-systemd not counted as a peer)
and, apart, for systemd mode ("lacme-systemd" over each other client,
fork-mode lacme included).  The targets are checked for both modes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from lacme.client.acme.nonces import NONCES_IN_FLIGHT  # newNonce fetches a run may make (see check_requests)

SCENARIOS = {
    "S1": "register an account + 1 certificate, 1 name (fresh state)",
    "S2": "register an account + 1 certificate, 10 names (fresh state)",
    "S3": "20 certificates of 1 name (account exists)",
    "S4": "no-op renewal check of the 20 fresh certificates",
    "S5": "100 certificates of 1 name (account exists)",
}
SHAPE = {"S1": (1, 1), "S2": (1, 10), "S3": (20, 1), "S5": (100, 1)}  # certificates, names
VARIANTS = {"": "trust: the system bundle plus Pebble's TLS CA",
            "/pebble": "trust: Pebble's TLS CA alone"}
S7_RSS_FACTOR, S7_WALL_FACTOR, S7_NOOP_MAX = 2.0, 12.0, 0.3  # issue 16's targets
US = "lacme"
SYSTEMD = "lacme-systemd"
BASE = "lacme-base"  # the tree before a change (clients.LacmeBase): not a peer
NO_REGRESSION = {"S3": 1.05, "S4": 1.05, "S5": 1.05}  # this tree / the baseline's, at most


def ok_runs(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r["failed"]]


def summarize(runs: list[dict]) -> dict:
    good = ok_runs(runs)
    if not good:
        return {"runs": len(runs), "failed": len(runs)}
    walls = [r["wall"] for r in good]
    endpoints = sorted({e for r in good for e in r["requests"]})
    return {
        "runs": len(runs), "failed": len(runs) - len(good),
        "wall_median": statistics.median(walls), "wall_min": min(walls), "wall_max": max(walls),
        "cpu_median": statistics.median(r["cpu"] for r in good),
        "rss_largest_mb_max": max(r["rss_largest_kb"] for r in good) / 1024,
        "rss_tree_mb_max": max(r["rss_tree_kb"] for r in good) / 1024,
        "pss_tree_mb_max": max(r.get("pss_tree_kb", 0) for r in good) / 1024,
        # the client's own programs (older results: the tree)
        "pss_programs_mb_max": max(r.get("pss_programs_kb", r.get("pss_tree_kb", 0)) for r in good) / 1024,
        "invocations": good[0]["invocations"],
        "requests_median": statistics.median(sum(r["requests"].values()) for r in good),
        "requests_by_endpoint": {e: statistics.median(r["requests"].get(e, 0) for r in good)
                                 for e in endpoints},
    }


def pss_by_program(runs: list[dict]) -> str:
    """Where the worst run's PSS peak goes, program by program ("" if not recorded)."""
    worst = max((r for r in runs if not r.get("failed") and r.get("pss_by_program_kb")),
                key=lambda r: r.get("pss_programs_kb", 0), default=None)
    if worst is None:
        return ""
    parts = [f"{name} {kb / 1024:.1f}" for name, kb in worst["pss_by_program_kb"].items()
             if kb >= 512]
    return "at the peak of the worst run, MB: " + ", ".join(parts)


def pss_cell(s: dict) -> str:
    """Peak summed PSS, MB: the client's own programs / every process of the run."""
    return f"{s.get('pss_programs_mb_max', 0):.0f} / {s.get('pss_tree_mb_max', 0):.0f}"


def pair_ratios(ours: list[dict], peer: list[dict]) -> list[float]:
    return [a["wall"] / b["wall"] for a, b in zip(ours, peer)
            if not a["failed"] and not b["failed"]]


def ratio_summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "pairs": len(values)}


def ratios_of(results: dict, us: str, not_peers: tuple[str, ...] = ()) -> dict:
    """scenario -> peer -> ratio summary of ``us``'s wall time over each peer's,
    plus ``us`` S2 / S1 and S5 / S3."""
    ratios: dict = {}
    for scenario, clients in results.items():
        if us not in clients:
            continue
        for peer, runs in clients.items():
            if peer != us and peer not in not_peers:
                r = ratio_summary(pair_ratios(clients[us], runs))
                if r:
                    ratios.setdefault(scenario, {})[peer] = r
    for a, b in (("S2", "S1"), ("S5", "S3")):
        if us in results.get(a, {}) and us in results.get(b, {}):
            r = ratio_summary(pair_ratios(results[a][us], results[b][us]))
            if r:
                ratios.setdefault(a, {})[f"{us} {b}"] = r
    return ratios


def compute(results: dict) -> tuple[dict, dict, dict]:
    """Summaries; fork mode's ratios to its peers; systemd mode's ratios to every other client."""
    summary = {s: {c: summarize(runs) for c, runs in clients.items()}
               for s, clients in results.items()}
    return summary, ratios_of(results, US, (SYSTEMD,)), ratios_of(results, SYSTEMD, (BASE,))


def shape(scenario: str) -> tuple[int, int] | None:
    """(certificates, names) of an issuing scenario: "S1", "S1/pebble", "S7 N=300"."""
    if scenario.startswith("S7 N=") and not scenario.endswith("no-op"):
        return int(scenario[5:]), 1
    return SHAPE.get(scenario.split("/")[0])


def request_budget(scenario: str, invocations: int) -> int:
    certs, names = shape(scenario) or (0, 0)
    return certs * (2 * names + 5 + 1) + 3 * invocations


def check_requests(results: dict, us: str = US) -> tuple[bool | None, str]:
    worst = []
    verdict: bool | None = None
    for scenario in results:
        if shape(scenario) is None:
            continue
        for run in ok_runs(results.get(scenario, {}).get(us, [])):
            req, inv = run["requests"], run["invocations"]
            total = sum(req.values())
            nonces = req.get("HEAD /nonce-plz", 0) + req.get("GET /nonce-plz", 0)
            # the first nonce once per invocation, and at most NONCES_IN_FLIGHT - 1
            # more to keep that many POSTs of concurrent orders in flight
            good = (total <= request_budget(scenario, inv) and req.get("GET /dir", 0) <= inv
                    and nonces <= inv * NONCES_IN_FLIGHT and req.get("POST /sign-me-up", 0) <= inv)
            verdict = good if verdict is None else verdict and good
            worst.append(f"{scenario} {total}/{request_budget(scenario, inv)} "
                         f"(newNonce {nonces})")
    return verdict, ", ".join(sorted(set(worst)))


def median_of(summary: dict, scenario: str, client: str) -> float | None:
    return summary.get(scenario, {}).get(client, {}).get("wall_median")


def targets(summary: dict, ratios: dict, results: dict, notes: dict, us: str = US) -> list[dict]:
    """The issue's targets for ``us`` (fork mode, or systemd mode: names get " (systemd)")."""
    def ratio(s: str, peer: str) -> float | None:
        r = ratios.get(s, {}).get(peer)
        return r["median"] if r else None

    out = []
    suffix = " (systemd)" if us == SYSTEMD else ""
    imports_key = "s4_protocol_imports_systemd" if us == SYSTEMD else "s4_protocol_imports"

    def add(name: str, goal: str, value: float | None, met: bool | None, detail: str = "") -> None:
        out.append({"target": name + suffix, "goal": goal,
                    "value": None if value is None else round(value, 3),
                    "met": met, "detail": detail})

    for variant, title in VARIANTS.items():
        r = ratio("S1" + variant, "acme-tiny")
        add("S1" + variant, f"ratio to acme-tiny <= 1.0 ({title})", r,
            None if r is None else r <= 1.0)
    r = ratio("S2", f"{us} S1")
    add("S2", "<= 1.2 x this project's S1", r, None if r is None else r <= 1.2)
    r = ratio("S3", "lacme-perl")
    peers = {p: v["median"] for p, v in ratios.get("S3", {}).items() if p not in (US, BASE)}
    below = all(v < 1.0 for v in peers.values()) if peers else None
    add("S3", "<= 0.05 x lacme-perl, and below every peer", r,
        None if r is None else r <= 0.05 and bool(below),
        ", ".join(f"{p} {v:.3f}" for p, v in peers.items()))
    r = ratio("S4", "lacme-perl")
    s4_requests = [sum(x["requests"].values()) for x in results.get("S4", {}).get(us, [])]
    imports = notes.get(imports_key)
    quiet = bool(s4_requests) and max(s4_requests) == 0 and imports == []
    add("S4", "ratio to lacme-perl <= 1.0, no request, no protocol module", r,
        None if r is None else r <= 1.0 and quiet,
        f"requests per run {sorted(set(s4_requests))}, protocol modules imported: {imports}")
    r = ratio("S5", f"{us} S3")
    add("S5", "<= 3 x this project's S3", r, None if r is None else r <= 3.0)
    met, detail = check_requests(results, us)
    add("Requests", "<= 2N+5+1 per certificate; dir, first nonce, account once per invocation",
        None, met, "observed/budget: " + detail)
    mem = summary.get("S3", {}).get(us, {}).get("rss_tree_mb_max")
    pss = summary.get("S3", {}).get(us, {}).get("pss_programs_mb_max")
    tree = summary.get("S3", {}).get(us, {}).get("pss_tree_mb_max")
    add("Memory", "summed PSS of all components <= 60 MB in S3", pss,
        None if pss is None else pss <= 60,
        "; ".join(part for part in (
            pss_by_program(results.get("S3", {}).get(us, [])),
            f"with the processes that are not lacme's (nsenter, systemd-run, systemd before "
            f"a unit's exec): {tree:.1f} MB" if tree and pss is not None and tree > pss else "",
            f"summed RSS (shared pages once per process): {mem:.1f} MB" if mem else "") if part))
    scale_targets(summary, results, us, add)
    if us == US:
        for scenario, limit in NO_REGRESSION.items():
            r = ratio(scenario, BASE)
            add(f"No regression {scenario}", f"<= {limit:g} x the baseline tree (lacme-base), "
                "pair by pair", r, None if r is None else r <= limit)
    return out


def largest_by_program(runs: list[dict]) -> dict[str, float]:
    """Peak RSS (VmHWM, MB) of each program, the worst process of the worst run."""
    peak: dict[str, float] = {}
    for run in ok_runs(runs):
        for program, kb in run.get("processes", ()):
            peak[program] = max(peak.get(program, 0.0), kb / 1024)
    return peak


def scale_targets(summary: dict, results: dict, us: str, add) -> None:
    """S7 (1000 certificates): wall <= 12 x S5, RSS per process <= 2 x S3, no-op <= 0.3 s."""
    big = max((int(k[5:]) for k in results if k.startswith("S7 N=") and k[5:].isdigit()
               and us in results[k]), default=None)
    if big is None:
        return
    key = f"S7 N={big}"
    wall = median_of(summary, key, us)
    s5 = median_of(summary, "S5", us)
    r = wall / s5 if wall and s5 else None
    add(f"S7 wall (N={big})", f"<= {S7_WALL_FACTOR:g} x S5", r,
        None if r is None else r <= S7_WALL_FACTOR, f"S7 {fmt(wall)} s, S5 {fmt(s5)} s")
    s7_rss = largest_by_program(results[key][us])
    s3_rss = largest_by_program(results.get("S3", {}).get(us, []))
    worst = max(((v / s3_rss[p], p) for p, v in s7_rss.items() if s3_rss.get(p)), default=None)
    add(f"S7 RSS (N={big})", f"no process above {S7_RSS_FACTOR:g} x its S3 peak RSS",
        worst[0] if worst else None, None if worst is None else worst[0] <= S7_RSS_FACTOR,
        ", ".join(f"{p} {v:.1f}/{s3_rss.get(p, 0):.1f} MB" for p, v in sorted(s7_rss.items())))
    noop = median_of(summary, f"{key} no-op", us)
    add(f"S7 no-op (N={big})", f"S4 over the {big} certificates <= {S7_NOOP_MAX:g} s", noop,
        None if noop is None else noop <= S7_NOOP_MAX)


# -- Markdown ----------------------------------------------------------------

def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio_cell(r: dict | None) -> str:
    return f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})" if r else ""


def cpu_parts_lines(summary: dict, results: dict) -> list[str]:
    """Where systemd mode's CPU goes: median per part, per scenario."""
    lines = []
    for scenario in SCENARIOS:
        runs = [r for r in ok_runs(results.get(scenario, {}).get(SYSTEMD, [])) if r.get("cpu_parts")]
        if not runs:
            continue
        parts = {k: statistics.median(r["cpu_parts"].get(k, 0.0) for r in runs)
                 for k in runs[0]["cpu_parts"]}
        text = ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        lines.append(f"- {scenario}: {text}")
    if not lines:
        return []
    return ["## lacme-systemd: where the CPU goes (seconds, median per run)", "",
            "\"commands\" is the master (with nsenter), \"units\" the socket-activated "
            "services (their cgroup); both make the CPU column.  systemd's PID 1 and journald "
            "work for the run too, but run all the time: shown, not counted.", ""] + lines + [""]


def curve_lines(summary: dict, results: dict) -> list[str]:
    """S7: how wall time, requests, RSS per process and the no-op grow with N."""
    keys = sorted((k for k in results if k.startswith("S7 N=") and k[5:].isdigit()),
                  key=lambda k: int(k[5:]))
    if not keys:
        return []
    lines = ["## S7: the curve, N certificates of 1 name in one run (account exists)", "",
             "One run per size, against one Pebble; \"ms per cert\" is wall / N; requests "
             "against the floor (N x (2 + 5 + 1) + 3: per certificate 2N+5 plus one poll, "
             "directory, first nonce and account once); peak RSS of each process (VmHWM, MB); "
             "no-op: S4 over the N installed certificates.", "",
             "| N | client | wall s | ms per cert | CPU s | requests / floor | peak RSS per process MB "
             "| PSS MB own / tree | no-op s |",
             "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for key in keys:
        n = int(key[5:])
        for client, s in summary[key].items():
            if "wall_median" not in s:
                lines.append(f"| {n} | {client} | failed | | | | | | |")
                continue
            rss = largest_by_program(results[key][client])
            noop = summary.get(f"{key} no-op", {}).get(client, {}).get("wall_median")
            lines.append(
                f"| {n} | {client} | {fmt(s['wall_median'])} | {1000 * s['wall_median'] / n:.1f} "
                f"| {fmt(s['cpu_median'], 2)} | {s['requests_median']:g} / "
                f"{request_budget(key, s['invocations'])} "
                f"| {', '.join(f'{p} {v:.0f}' for p, v in sorted(rss.items()))} "
                f"| {pss_cell(s)} | {fmt(noop)} |")
    return lines + [""]


def render(machine: dict, summary: dict, ratios: dict, rates: dict, goals: list[dict],
           notes: dict, sd_ratios: dict | None = None, results: dict | None = None) -> str:
    sd_ratios = sd_ratios or {}
    with_sd = any(SYSTEMD in clients for clients in summary.values())
    lines = ["# Benchmark results", "",
             f"Date: {machine['date']}. Machine: {machine['cpu']}, {machine['cores']} cores, "
             f"{machine['memory_gb']} GB, {machine['os']}, kernel {machine['kernel']}. "
             f"Runs: {notes['runs']} per client and scenario (S5: {notes['s5_runs']} for lacme, "
             f"{notes.get('s5_perl_runs')} for lacme-perl, which takes about 5 minutes a run), "
             f"interleaved; whole benchmark {notes.get('duration_s', '?')} s.", "",
             "Versions: " + "; ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
             "", "Wall time in seconds (median, min–max); CPU seconds (median, user+system, "
             "whole process tree); peak RSS in MB (largest process / summed over the live tree, "
             "worst run); ACME requests per run (median, from Pebble's log); ratio = lacme's wall "
             "time / the peer's, pair by pair, median (min–max)"
             + ("; lacme-systemd ratio = systemd mode's wall time / the row's (on the lacme row: "
                "systemd mode over fork mode). lacme-systemd is the same tree in systemd mode "
                "(socket-activated units in a booted container; benchmarks/README.md)."
                if with_sd else "."), ""]
    for scenario, title in ((s + v, f"{t} ({vt})" if v or s in ("S1", "S2", "S3", "S4") else t)
                            for s, t in SCENARIOS.items() for v, vt in VARIANTS.items()):
        if scenario not in summary:
            continue
        extra_head, extra_rule = (" lacme-systemd ratio |", " ---: |") if with_sd else ("", "")
        lines += [f"## {scenario}: {title}", "",
                  "| client | invocations | wall median | min–max | CPU s | RSS largest / tree MB "
                  "| PSS MB own / tree | requests | lacme ratio |" + extra_head,
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + extra_rule]
        for client, s in summary[scenario].items():
            if "wall_median" not in s:
                lines.append(f"| {client} | | all {s['runs']} runs failed | | | | | | |"
                             + (" |" if with_sd else ""))
                continue
            ratio = ratio_cell(ratios.get(scenario, {}).get(client))
            sd_ratio = ratio_cell(sd_ratios.get(scenario, {}).get(client))
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            lines.append(
                f"| {client}{failed} | {s['invocations']} | {fmt(s['wall_median'])} "
                f"| {fmt(s['wall_min'])}–{fmt(s['wall_max'])} | {fmt(s['cpu_median'], 2)} "
                f"| {s['rss_largest_mb_max']:.0f} / {s['rss_tree_mb_max']:.0f} "
                f"| {pss_cell(s)} | {s['requests_median']:g} | {ratio} |" + (f" {sd_ratio} |" if with_sd else ""))
        lines.append("")
    if rates:
        lines += ["## S6: lacme-accountd alone, signatures per second over one connection", "",
                  "| key | client | median | min–max |", "| --- | --- | ---: | ---: |"]
        for label, clients in rates.items():
            for client, values in clients.items():
                lines.append(f"| {label} | {client} | {statistics.median(values):.0f} "
                             f"| {min(values):.0f}–{max(values):.0f} |")
        lines.append("")
    lines += curve_lines(summary, results or {})
    lines += cpu_parts_lines(summary, results or {})
    lines += ["## Requests by endpoint (median per run)", ""]
    for scenario in summary:
        for client, s in summary.get(scenario, {}).items():
            if s.get("requests_by_endpoint"):
                parts = ", ".join(f"{e} {v:g}" for e, v in s["requests_by_endpoint"].items())
                lines.append(f"- {scenario} {client}: {parts}")
    for error in notes.get("errors", []):
        lines.append(f"\nError: {error}")
    lines += ["", "## Targets", "", "| target | goal | value | met | detail |",
              "| --- | --- | ---: | --- | --- |"]
    for g in goals:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['target']} | {g['goal']} | {fmt(g['value'])} | {met} | {g['detail']} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, machine: dict, results: dict, rates: dict, notes: dict) -> None:
    summary, ratios, sd_ratios = compute(results)
    goals = targets(summary, ratios, results, notes)
    if any(SYSTEMD in clients for clients in results.values()):
        goals += targets(summary, sd_ratios, results, notes, SYSTEMD)
    out.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "notes": notes, "summary": summary, "ratios": ratios,
                "ratios_systemd": sd_ratios, "targets": goals, "accountd_rates": rates,
                "runs": results}
    (out / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / "RESULTS.md").write_text(render(machine, summary, ratios, rates, goals, notes,
                                           sd_ratios, results))
