#!/usr/bin/env python3
"""Compares agentguard built from two commits, from bench/run.sh results.

    python3 bench/compare.py BEFORE_DIR AFTER_DIR   two runs, configuration agentguard in each
    python3 bench/compare.py DIR                    one run: agentguard-baseline (before)
                                                    against agentguard (after), interleaved

Each directory needs results.json (bench/report.py) with the floor too. Prints Markdown
tables: for each operation and concurrency, agentguard's p50 and p99 (medians over rounds),
its added p99 over the floor of the same run, the change of added p99 from before to after,
the reviews agentguard answered per request (whether the API server sent the requests to it
at all), and the webhook's and the API server's CPU per 1,000 requests.
"""

import json
import sys
from pathlib import Path

ROWS = [
    ("delete", "agent DELETE, protected claim (denied; floor: dry-run)"),
    ("update", "agent UPDATE, label on an annotated claim"),
    ("human-update", "guarded UPDATE: human's label, annotated claim"),
    ("human-update-policy", "guarded UPDATE: human's label, policy-selected claim"),
    ("configmap-update", "unrelated write: human's ConfigMap patch"),
]


def load(directory):
    results = json.loads((Path(directory) / "results.json").read_text())
    return results, {(c["config"], c["op"], c["concurrency"]): c for c in results["cells"]}


def cell(by, config, op, conc):
    if config == "floor" and op == "delete":
        op = "delete-dry"
    return by.get((config, op, conc))


def get(c, key, scale=1.0):
    return None if c is None or c.get(key) is None else c[key] * scale


def fmt(v, digits=1, sign=False):
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def pair(a, b, digits=1, sign=False):
    return f"{fmt(a, digits, sign)} / {fmt(b, digits, sign)}"


def main():
    args = sys.argv[1:]
    if len(args) == 1:
        results, by = load(args[0])
        before = (by, "agentguard-baseline", results.get("build", {}).get("baseline", {}))
        after = (by, "agentguard", results.get("build", {}))
        where = f"{args[0]}, interleaved in one run (one floor)"
    elif len(args) == 2:
        (rb, bb), (ra, ba) = load(args[0]), load(args[1])
        before = (bb, "agentguard", rb.get("build", {}))
        after = (ba, "agentguard", ra.get("build", {}))
        where = f"{args[0]} against {args[1]}, two runs (each with its floor)"
    else:
        sys.exit(__doc__)
    levels = sorted({k[2] for k in before[0]} & {k[2] for k in after[0]})
    print(f"before: agentguard {before[2].get('agentguard_commit', '?')}; "
          f"after: agentguard {after[2].get('agentguard_commit', '?')}; {where}\n")
    print("| operation | conc | p50 ms | p99 ms | floor p99 ms | added p99 ms | change of added p99 "
          "| reviews / request | webhook CPU-s / 1k | API server CPU-s / 1k |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op, label in ROWS:
        for conc in levels:
            b, a = cell(before[0], before[1], op, conc), cell(after[0], after[1], op, conc)
            if a is None and b is None:
                continue
            fb, fa = cell(before[0], "floor", op, conc), cell(after[0], "floor", op, conc)
            db = get(b, "p99_us", 1e-3) - get(fb, "p99_us", 1e-3) if b and fb else None
            da = get(a, "p99_us", 1e-3) - get(fa, "p99_us", 1e-3) if a and fa else None
            change = da - db if None not in (da, db) else None
            print(f"| {label} | {conc} | {pair(get(b, 'p50_us', 1e-3), get(a, 'p50_us', 1e-3), 2)} "
                  f"| {pair(get(b, 'p99_us', 1e-3), get(a, 'p99_us', 1e-3))} "
                  f"| {pair(get(fb, 'p99_us', 1e-3), get(fa, 'p99_us', 1e-3))} "
                  f"| {pair(db, da, sign=True)} | {fmt(change, sign=True)} "
                  f"| {pair(get(b, 'webhook_reviews_per_request'), get(a, 'webhook_reviews_per_request'), 2)} "
                  f"| {pair(get(b, 'webhook_cpu_s_per_1k'), get(a, 'webhook_cpu_s_per_1k'), 2)} "
                  f"| {pair(get(b, 'apiserver_cpu_s_per_1k'), get(a, 'apiserver_cpu_s_per_1k'), 2)} |")
    print("\nEach cell: before / after.")


if __name__ == "__main__":
    main()
