#!/usr/bin/env python3
"""Compares two bench/run.sh results directories, agentguard built from two commits.

    python3 bench/compare.py BEFORE_DIR AFTER_DIR

Each directory needs results.json (bench/report.py) with the floor and agentguard
configurations. Prints a Markdown table: for each operation and concurrency, the floor's and
agentguard's p99 (median over rounds) in each run, agentguard's added p99 over that run's floor,
the change of added p99 from before to after, and the reviews agentguard answered per request
(whether the API server sent the requests to it at all).
"""

import json
import sys
from pathlib import Path

ROWS = [
    ("delete", "agent DELETE of the protected claim (denied; floor: dry-run)"),
    ("update", "agent UPDATE: label on an annotated claim"),
    ("human-update", "guarded UPDATE: human's label on an annotated claim"),
    ("human-update-policy", "guarded UPDATE: human's label on a policy-selected claim"),
    ("configmap-update", "unrelated write: human's ConfigMap data patch"),
]


def cells(directory):
    results = json.loads((Path(directory) / "results.json").read_text())
    by = {(c["config"], c["op"], c["concurrency"]): c for c in results["cells"]}
    return results, by


def p99(by, config, op, conc):
    if config == "floor" and op == "delete":
        op = "delete-dry"
    c = by.get((config, op, conc))
    return None if c is None else c["p99_us"] / 1000


def reviews(by, op, conc):
    c = by.get(("agentguard", op, conc))
    return None if c is None else c.get("webhook_reviews_per_request")


def fmt(v, digits=1, sign=False):
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def main():
    before_dir, after_dir = sys.argv[1:3]
    (before, b), (after, a) = cells(before_dir), cells(after_dir)
    levels = sorted({k[2] for k in a} & {k[2] for k in b})
    print(f"before: {before.get('build', {}).get('agentguard_commit', '?')} ({before_dir}); "
          f"after: {after.get('build', {}).get('agentguard_commit', '?')} ({after_dir})\n")
    print("| operation | conc | floor p99 before / after | agentguard p99 before / after "
          "| added p99 before / after | change of added p99 | reviews per request before / after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op, label in ROWS:
        if not any(k[1] == op for k in a):
            continue
        for conc in levels:
            fb, fa = p99(b, "floor", op, conc), p99(a, "floor", op, conc)
            gb, ga = p99(b, "agentguard", op, conc), p99(a, "agentguard", op, conc)
            db = gb - fb if None not in (gb, fb) else None
            da = ga - fa if None not in (ga, fa) else None
            change = da - db if None not in (da, db) else None
            print(f"| {label} | {conc} | {fmt(fb)} / {fmt(fa)} | {fmt(gb)} / {fmt(ga)} "
                  f"| {fmt(db, sign=True)} / {fmt(da, sign=True)} | {fmt(change, sign=True)} "
                  f"| {fmt(reviews(b, op, conc), 2)} / {fmt(reviews(a, op, conc), 2)} |")


if __name__ == "__main__":
    main()
