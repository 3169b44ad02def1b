#!/usr/bin/env python3
"""Turns one bench/run.sh results directory into results.json, table.md and latency.png.

    python3 bench/report.py RESULTS_DIR

Reads cells/<config>.json (the driver's cells), cells/<config>.process.json (webhook process
facts), cells/<config>.skipped.json, scale.json, readyz.json, create.json and, when present,
logs/agentguard.metrics (the server-side decision time).
"""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ORDER = ["floor", "vap", "controller-runtime", "kyverno", "agentguard-baseline", "agentguard"]
LABEL = {
    "floor": "floor (no admission)",
    "vap": "ValidatingAdmissionPolicy (CEL)",
    "controller-runtime": "controller-runtime webhook (peer)",
    "kyverno": "Kyverno (peer)",
    "agentguard-baseline": "agentguard baseline (BENCH_BASELINE_BIN)",
    "agentguard": "agentguard",
}
OPS = {
    "delete": "DELETE, denied (floor: dry-run, allowed)",
    "delete-dry": "DELETE --dry-run=server",
    "update": "UPDATE (merge patch adding a label), allowed",
    "human-update": "human UPDATE: the admin labels an annotated (protected) claim, allowed",
    "human-update-policy": "human UPDATE: the admin labels a claim a ProtectedResource selects, allowed",
    "configmap-update": "unrelated write: the admin patches a ConfigMap's data, allowed",
}


def load(path):
    with open(path) as f:
        return json.load(f)


def machine():
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": run("nproc"),
        "cpu_model": model,
        "free_g": run("free", "-g"),
        "kernel": platform.release(),
        "loadavg_at_report": Path("/proc/loadavg").read_text().split()[:3],
        "git_head": run("git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"),
        "src_changes_uncommitted": len(run("git", "-C", str(Path(__file__).resolve().parent.parent),
                                           "status", "--short", "src").splitlines()),
    }


def server_decision_us(metrics_path):
    """Mean server-side time per review from agentguard_admission_duration_seconds."""
    if not metrics_path.exists():
        return None
    total = {"sum": 0.0, "count": 0.0}
    for line in metrics_path.read_text().splitlines():
        m = re.match(r"agentguard_admission_duration_seconds_(sum|count)\{[^}]*\} ([0-9.e+-]+)", line)
        if m:
            total[m.group(1)] += float(m.group(2))
    if not total["count"]:
        return None
    return {"reviews": int(total["count"]), "mean_us": total["sum"] / total["count"] * 1e6}


def median(values):
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def aggregate(raw):
    """One cell per (config, op, concurrency): the median over rounds of each percentile and
    rate, the sums of requests, errors and CPU, and each round's p99 to show the spread."""
    groups = {}
    for c in raw:
        groups.setdefault((c["config"], c["op"], c["concurrency"]), []).append(c)
    cells = []
    for (config, op, conc), rs in groups.items():
        rs.sort(key=lambda c: c["round"])
        cell = {"config": config, "op": op, "concurrency": conc, "rounds": len(rs)}
        for key in ["p50_us", "p90_us", "p99_us", "mean_us", "req_per_s"]:
            cell[key] = median([c[key] for c in rs])
        cell["max_us"] = max(c["max_us"] for c in rs)
        for key in ["requests", "errors", "webhook_cpu_s", "apiserver_cpu_s", "wall_s"]:
            cell[key] = sum(c[key] for c in rs)
        cell["webhook_vmhwm_kib"] = max(c["webhook_vmhwm_kib"] for c in rs)
        # Reviews the webhook answered per request of the cell (agentguard only): about 1 when
        # the API server sends the cell's requests to it, 0 when matchConditions or rules keep
        # them away.
        counted = [c for c in rs if c.get("webhook_reviews") is not None]
        cell["webhook_reviews_per_request"] = (
            sum(c["webhook_reviews"] for c in counted) / (sum(c["requests"] for c in counted) or 1)
            if counted else None)
        cell["p99_us_rounds"] = [round(c["p99_us"]) for c in rs]
        cell["p50_us_rounds"] = [round(c["p50_us"]) for c in rs]
        cell["first_error"] = next((c.get("first_error") for c in rs if c.get("first_error")), None)
        cells.append(cell)
    return cells


PROFILE_CATEGORIES = [
    ("kernel: syscalls, network, scheduling", lambda dso, sym: dso.startswith("[kernel")),
    ("allocator (malloc/free)", lambda dso, sym: re.search(r"malloc|_int_free|cfree|unlink_chunk|realloc|__rdl_|__rust_alloc|__rust_dealloc|_int_realloc|tcache", sym)),
    ("memcpy/memcmp/memset", lambda dso, sym: re.search(r"__mem(move|cpy|cmp|set)|CRYPTO_memcmp", sym)),
    ("TLS (rustls, ring)", lambda dso, sym: re.search(r"rustls|ring_core|ring::", sym)),
    ("JSON (serde_json, serde)", lambda dso, sym: re.search(r"serde", sym)),
    ("HTTP/2 and HTTP (h2, hyper, http, bytes)", lambda dso, sym: re.search(r"\bh2::|hyper|\bhttp::|bytes::|httparse", sym)),
    ("async runtime and server (tokio, axum, tower)", lambda dso, sym: re.search(r"tokio|axum|tower|futures|either|mio::", sym)),
    ("agentguard decision and index", lambda dso, sym: re.search(r"agentguard::(policy|index)", sym)),
    ("agentguard webhook edge and metrics", lambda dso, sym: re.search(r"agentguard::|prometheus", sym)),
    ("kube client and watchers", lambda dso, sym: re.search(r"kube_|k8s_openapi", sym)),
    ("hashing", lambda dso, sym: re.search(r"hash|sip", sym)),
    ("UTF-8 validation", lambda dso, sym: re.search(r"from_utf8|utf8", sym)),
]


def profile_summary(out):
    """Flat perf profile of the symbol-keeping agentguard, summed into categories."""
    data = out / "perf.data"
    if not data.exists():
        return None
    try:
        text = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                               "-g", "none", "--stdio"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    totals, top = {}, []
    for line in text.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*\S)", line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        name = next((n for n, match in PROFILE_CATEGORIES if match(dso, sym)), "other")
        totals[name] = totals.get(name, 0.0) + pct
        if len(top) < 25:
            top.append({"percent": pct, "dso": dso, "symbol": sym[:140]})
    samples = re.search(r"# Samples: (\S+)", text)
    return {"samples": samples.group(1) if samples else None,
            "categories": sorted(([n, round(p, 1)] for n, p in totals.items()), key=lambda x: -x[1]),
            "top_symbols": top}


def main():
    out = Path(sys.argv[1])
    raw, rounds_of_process, skipped = [], {}, {}
    for config in ORDER:
        for p in sorted((out / "cells").glob(f"{config}.r*.json")):
            m = re.fullmatch(re.escape(config) + r"\.r(\d+)(\.process)?\.json", p.name)
            if not m:
                continue
            if m.group(2):
                rounds_of_process.setdefault(config, []).append(load(p))
            else:
                for c in load(p):
                    c["round"] = int(m.group(1))
                    raw.append(c)
        if (out / "cells" / f"{config}.skipped.json").exists():
            skipped[config] = load(out / "cells" / f"{config}.skipped.json")["skipped"]
    cells = aggregate(raw)
    processes = {}
    for config, facts in rounds_of_process.items():
        processes[config] = {
            "rounds": len(facts),
            "idle_rss_kib": median([f["idle_rss_kib"] for f in facts]),
            "idle_rss_kib_rounds": [f["idle_rss_kib"] for f in facts],
            "vmhwm_kib": max(f["vmhwm_kib"] for f in facts),
            "start_to_ready_ms": median([f["start_to_ready_ms"] for f in facts if f["start_to_ready_ms"] is not None] or [0]),
        }

    def cell(config, op, conc):
        for c in cells:
            if c["config"] == config and c["op"] == op and c["concurrency"] == conc:
                return c
        return None

    def floor_of(op, conc):
        # The floor cannot deny: its DELETE reference is the dry-run DELETE, which does the
        # same work (read, authorize, admit, no write) without any check.
        return cell("floor", "delete-dry" if op == "delete" else op, conc)

    for c in cells:
        f = floor_of(c["op"], c["concurrency"])
        a = cell("agentguard", c["op"], c["concurrency"])
        c["added_p50_us"] = c["p50_us"] - f["p50_us"] if f else None
        c["added_p99_us"] = c["p99_us"] - f["p99_us"] if f else None
        c["p99_vs_floor"] = c["p99_us"] / f["p99_us"] if f else None
        c["p99_vs_agentguard"] = c["p99_us"] / a["p99_us"] if a else None
        n = c["requests"] or 1
        c["webhook_cpu_s_per_1k"] = c["webhook_cpu_s"] / n * 1000 if c["webhook_cpu_s"] else None
        c["apiserver_cpu_s_per_1k"] = c["apiserver_cpu_s"] / n * 1000

    levels = sorted({c["concurrency"] for c in cells})
    configs = [k for k in ORDER if any(c["config"] == k for c in cells)]
    summary = {}
    for k in configs:
        mine = [c for c in cells if c["config"] == k]
        s = {
            "saturation_req_per_s": {op: max((c["req_per_s"] for c in mine if c["op"] == op), default=None)
                                     for op in OPS},
            "webhook_cpu_s_per_1k_reviews": None,
            "apiserver_cpu_s_per_1k_requests": None,
        }
        webhook_cpu = sum(c["webhook_cpu_s"] for c in mine)
        reqs = sum(c["requests"] for c in mine)
        if webhook_cpu:
            s["webhook_cpu_s_per_1k_reviews"] = webhook_cpu / reqs * 1000
        s["apiserver_cpu_s_per_1k_requests"] = sum(c["apiserver_cpu_s"] for c in mine) / reqs * 1000
        s.update(processes.get(k, {}))
        summary[k] = s

    results = {
        "machine": machine(),
        "cells": cells,
        "raw_cells": raw,
        "summary": summary,
        "skipped": skipped,
        "server_decision": server_decision_us(out / "logs" / "agentguard.metrics"),
    }
    for name in ["scale", "readyz", "create", "build"]:
        if (out / f"{name}.json").exists():
            results[name] = load(out / f"{name}.json")
    if (out / "cells" / "profile.json").exists():
        results["profile_load"] = load(out / "cells" / "profile.json")

    results["profile"] = profile_summary(out)

    targets = {}
    for op in ["delete", "update"]:
        for conc in levels:
            a, v, r = cell("agentguard", op, conc), cell("vap", op, conc), cell("controller-runtime", op, conc)
            if a and v and v["added_p99_us"] is not None and a["added_p99_us"] is not None:
                key = f"{op}@{conc}: agentguard added p99 / VAP added p99 (target <= 1.5)"
                if a["added_p99_us"] <= 0:
                    targets[key] = "agentguard adds nothing measurable (p99 at or below the floor's)"
                elif v["added_p99_us"] <= 0:
                    targets[key] = "VAP adds nothing measurable; agentguard +%.1f ms" % (a["added_p99_us"] / 1000)
                else:
                    targets[key] = round(a["added_p99_us"] / v["added_p99_us"], 2)
            if a and r:
                targets[f"{op}@{conc}: agentguard added p99 < controller-runtime added p99"] = (
                    a["added_p99_us"] < r["added_p99_us"])
    if "agentguard" in processes:
        targets["agentguard idle RSS MB (target < 30)"] = round(processes["agentguard"]["idle_rss_kib"] / 1024, 1)
    if results["server_decision"]:
        targets["agentguard server-side mean per review, µs (target < 50)"] = round(
            results["server_decision"]["mean_us"], 1)
    results["targets"] = targets
    (out / "results.json").write_text(json.dumps(results, indent=2))

    lines = []
    for op in OPS:
        if not any(c["op"] == op for c in cells):
            continue
        lines += [f"\n**{OPS[op]}**\n",
                  "| configuration | conc | p50 ms | p90 ms | p99 ms | added p99 ms | p99 ÷ floor | p99 ÷ agentguard | req/s | webhook CPU-s / 1k | API server CPU-s / 1k | reviews / request | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k in configs:
            for conc in levels:
                c = cell(k, op, conc)
                if op == "delete" and k == "floor":
                    c = cell("floor", "delete-dry", conc)
                if not c:
                    continue
                fmt = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"
                name = LABEL[k] + (" *(dry-run)*" if op == "delete" and k == "floor" else "")
                lines.append(
                    f"| {name} | {conc} | {c['p50_us']/1000:.2f} | {c['p90_us']/1000:.2f} | {c['p99_us']/1000:.2f} "
                    f"| {fmt(c['added_p99_us'] and c['added_p99_us']/1000)} | {fmt(c['p99_vs_floor'])} "
                    f"| {fmt(c['p99_vs_agentguard'])} | {c['req_per_s']:.0f} | {fmt(c['webhook_cpu_s_per_1k'], 3)} "
                    f"| {c['apiserver_cpu_s_per_1k']:.3f} | {fmt(c.get('webhook_reviews_per_request'))} | {c['errors']} |")
    lines += ["\n**Per configuration**\n",
              "| configuration | saturation req/s DELETE / UPDATE | webhook CPU-s per 1k reviews | API server CPU-s per 1k requests | idle RSS MB | peak RSS (VmHWM) MB |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for k in configs:
        s = summary[k]
        sat = s["saturation_req_per_s"]
        mb = lambda v: "—" if not v else f"{v/1024:.1f}"
        cpu = s["webhook_cpu_s_per_1k_reviews"]
        lines.append(
            f"| {LABEL[k]} | {sat['delete'] or sat['delete-dry']:.0f} / {sat['update']:.0f} "
            f"| {'—' if cpu is None else f'{cpu:.3f}'} | {s['apiserver_cpu_s_per_1k_requests']:.3f} "
            f"| {mb(s.get('idle_rss_kib'))} | {mb(s.get('vmhwm_kib'))} |")
    for k, why in skipped.items():
        lines.append(f"| {LABEL.get(k, k)} | {why} | | | | |")
    if targets:
        lines += ["\n**Targets**\n", "| target | measured |", "| --- | --- |"]
        lines += [f"| {t} | {v} |" for t, v in targets.items()]
    if results["profile"]:
        lines += [f"\n**Where agentguard's CPU goes under load** (perf, {results['profile']['samples']} samples)\n",
                  "| category | share of samples |", "| --- | ---: |"]
        lines += [f"| {n} | {p:.1f} % |" for n, p in results["profile"]["categories"]]
    table = "\n".join(lines).strip() + "\n"
    (out / "table.md").write_text(table)
    print(table)

    if cells:
        plot(out, cells, configs, levels)


def plot(out, cells, configs, levels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"floor": "#9e9e9e", "vap": "#4c78a8", "controller-runtime": "#f58518",
              "kyverno": "#54a24b", "agentguard-baseline": "#b279a2", "agentguard": "#e45756"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    for ax, op in zip(axes, ["delete", "update"]):
        width = 0.8 / max(len(configs), 1)
        for i, k in enumerate(configs):
            p50, p99, xs = [], [], []
            for j, conc in enumerate(levels):
                c = next((c for c in cells if c["config"] == k and c["concurrency"] == conc and
                          c["op"] == ("delete-dry" if (op == "delete" and k == "floor") else op)), None)
                if c:
                    xs.append(j + (i - (len(configs) - 1) / 2) * width)
                    p50.append(c["p50_us"] / 1000)
                    p99.append(c["p99_us"] / 1000)
            ax.bar(xs, p99, width, color=colors[k], alpha=0.45,
                   label=LABEL[k] + (" (dry-run)" if op == "delete" and k == "floor" else ""))
            ax.bar(xs, p50, width, color=colors[k])
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"concurrency {c}" for c in levels])
        ax.set_ylabel("ms seen by the client, log scale (solid: p50, light: p99)")
        ax.set_title({"delete": "agent DELETE of a protected claim (denied)",
                      "update": "agent UPDATE: add a label (allowed)"}[op])
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Latency through kube-apiserver v1.36.3, one rule, per configuration "
                 "(2 shared cores, loopback)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)


if __name__ == "__main__":
    main()
