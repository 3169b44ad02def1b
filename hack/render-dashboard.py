#!/usr/bin/env python3
"""Draws every panel of agentguard's Grafana dashboard from a real Prometheus, as PNGs.

Each panel's queries run against Prometheus's HTTP API with Grafana's variables filled in
(time series as range queries, stats, tables and pies as instant queries), and are drawn with
matplotlib: one picture per panel (<slug of the title>.png) and dashboard.png laid out by the
panels' gridPos. It shows what the dashboard shows without a Grafana.

    python3 hack/render-dashboard.py --prometheus http://127.0.0.1:9090 --out docs/dashboard

tests/e2e_prometheus.rs runs it against the Prometheus of its end-to-end run.
"""

import argparse
import datetime
import json
import math
import os
import re
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "charts", "agentguard", "dashboards", "agentguard.json")
INSTANT_TYPES = {"stat", "gauge", "bargauge", "table", "piechart"}
DURATION = re.compile(r"^(\d+)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text):
    match = DURATION.match(text)
    if not match:
        raise SystemExit(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    return int(match.group(1)) * SECONDS[match.group(2)]


def slug(title):
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def prometheus(base, path, params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        answer = json.load(resp)
    if answer.get("status") != "success":
        raise SystemExit(f"Prometheus refused {params.get('query')!r}: {answer}")
    return answer["data"]["result"]


def substitute(expr, variables):
    # Longest names first, so $__rate_interval is not read as $__rate plus text.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def legend(fmt, labels):
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return "{" + inner + "}" if inner else labels.get("__name__", "value")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def fmt_value(value, unit):
    if value is None or math.isnan(value):
        return "NaN"
    if unit in ("s", "dtdurations", "dtdurationss"):
        magnitude = abs(value)
        for limit, div, name in ((1e-3, 1e-6, "µs"), (1, 1e-3, "ms"), (120, 1, "s"),
                                 (7200, 60, "min"), (172800, 3600, "h")):
            if magnitude < limit:
                return f"{value / div:.3g} {name}"
        return f"{value / 86400:.3g} d"
    if unit == "ms":
        return fmt_value(value / 1000, "s")
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "percent":
        return f"{value:.3g}%"
    if unit in ("dateTimeAsIso", "dateTimeFromNow"):
        stamp = value / 1000 if value > 1e11 else value
        return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    suffix = {"reqps": " req/s", "ops": " ops/s", "short": "", "none": "", "": ""}.get(unit, f" {unit}")
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value)}{suffix}"
    return f"{value:.3g}{suffix}"


class Panel:
    def __init__(self, raw, variables, base, start, end, step):
        self.raw = raw
        self.title = raw.get("title", "")
        self.type = raw.get("type", "")
        self.unit = raw.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        self.start, self.end, self.span = start, end, end - start
        # (legend, labels, [(t, v)], None) for time series; (legend, labels, value, refId) otherwise
        self.series = []
        self.empty_targets = []
        instant = self.type in INSTANT_TYPES
        # As Grafana does: a panel's `interval` is the least step; $__interval is the step, and
        # range queries are aligned to it (the end rounded up, so the latest step is drawn).
        step = max(step, seconds(raw.get("interval") or "1s"))
        variables = dict(variables, __interval=f"{step}s")
        start, end = start - start % step, end - end % step + (step if end % step else 0)
        for target in raw.get("targets", []):
            expr = target.get("expr")
            if not expr or target.get("hide"):
                continue
            query = substitute(expr, variables)
            if instant or target.get("instant") and not target.get("range"):
                result = prometheus(base, "/api/v1/query", {"query": query, "time": end})
                rows = [(r["metric"], float(r["value"][1])) for r in result]
                ref = target.get("refId", "A")
                self.series.extend((legend(target.get("legendFormat"), m), m, v, ref) for m, v in rows)
            else:
                result = prometheus(base, "/api/v1/query_range",
                                    {"query": query, "start": start, "end": end, "step": step})
                for r in result:
                    points = [(float(t), float(v)) for t, v in r["values"]]
                    self.series.append((legend(target.get("legendFormat"), r["metric"]), r["metric"], points, None))
            if not result:
                self.empty_targets.append(target.get("refId", "?"))

    def draw(self, ax):
        ax.set_title(self.title, fontsize=10, loc="left")
        if not self.series:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=14, color="grey")
            ax.set_axis_off()
            return
        if self.type == "table":
            self.draw_table(ax)
        elif self.type == "piechart":
            values = [max(v, 0) for _, _, v, _ in self.series]
            if sum(values) > 0:
                ax.pie(values, labels=[n for n, _, _, _ in self.series], textprops={"fontsize": 7})
            else:
                ax.text(0.5, 0.5, "0", ha="center", va="center", fontsize=20)
                ax.set_axis_off()
        elif self.type in INSTANT_TYPES:
            self.draw_stats(ax)
        else:
            self.draw_lines(ax)

    def draw_lines(self, ax):
        for name, _, points, _ in self.series:
            times = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t, _ in points]
            # A series with a few samples (a first event) is drawn as points, as Grafana does.
            ax.plot(times, [v for _, v in points], label=name, linewidth=1.4,
                    marker="o" if len(points) < 5 else None, markersize=3)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_value(v, self.unit)))
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S" if self.span < 900 else "%H:%M"))
        ax.set_xlim(datetime.datetime.fromtimestamp(self.start, datetime.timezone.utc),
                    datetime.datetime.fromtimestamp(self.end, datetime.timezone.utc))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(self.series) <= 8:
            ax.legend(fontsize=6, loc="upper left")

    def draw_stats(self, ax):
        ax.set_axis_off()
        shown = self.series[:6]
        for i, (name, _, value, _) in enumerate(shown):
            y = 1 - (i + 0.5) / len(shown)
            ax.text(0.5, y, fmt_value(value, self.unit), ha="center", va="center",
                    fontsize=18 if len(shown) == 1 else 11, weight="bold", transform=ax.transAxes)
            if len(shown) > 1 or name not in ("value", "{}"):
                ax.text(0.5, y - 0.5 / len(shown) + 0.02, name, ha="center", va="bottom",
                        fontsize=6, color="grey", transform=ax.transAxes)

    def field(self, name):
        """A column's display name and unit, after the panel's byName overrides."""
        shown, unit = name, self.unit
        for override in self.raw.get("fieldConfig", {}).get("overrides", []):
            matcher = override.get("matcher", {})
            if matcher.get("id") == "byName" and matcher.get("options") == name:
                for prop in override.get("properties", []):
                    if prop.get("id") == "displayName":
                        shown = prop["value"]
                    elif prop.get("id") == "unit":
                        unit = prop["value"]
        return shown, unit

    def draw_table(self, ax):
        # Grafana's "merge": one row per label set, one "Value #<refId>" column per query.
        ax.set_axis_off()
        hidden = ("__name__", "job", "instance")
        keys = sorted({k for _, m, _, _ in self.series for k in m if k not in hidden})
        refs = sorted({ref for _, _, _, ref in self.series})
        rows = {}
        for _, metric, value, ref in self.series:
            row = rows.setdefault(tuple(metric.get(k, "") for k in keys), {})
            row[ref] = value
        renames = {}
        for t in self.raw.get("transformations", []):
            if t.get("id") == "organize":
                renames = t.get("options", {}).get("renameByName", {})
        columns = [self.field(f"Value #{ref}") for ref in refs]
        ordered = sorted(rows.items(), key=lambda kv: -kv[1].get(refs[-1], 0))[:12]
        cells = [list(labels) + [fmt_value(vals[r], unit) if r in vals else "" for r, (_, unit) in zip(refs, columns)]
                 for labels, vals in ordered]
        header = [renames.get(k, k) for k in keys] + [name for name, _ in columns]
        table = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(6)
        table.auto_set_column_width(list(range(len(header))))


def flatten(panels):
    for panel in panels:
        if panel.get("type") == "row":
            yield from flatten(panel.get("panels", []))
        else:
            yield panel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--out", required=True, help="directory for the PNGs")
    parser.add_argument("--dashboard", default=DASHBOARD)
    parser.add_argument("--range", default="1h", help="time range drawn, ending now (e.g. 15m)")
    parser.add_argument("--rate-interval", default="", help="Grafana's $__rate_interval (default: range/10, at least 1m)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a dashboard variable (defaults: job=agentguard, namespace=.*)")
    parser.add_argument("--require-data", action="store_true", help="exit 1 when a query returns nothing")
    args = parser.parse_args()

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    span = seconds(args.range)
    end = datetime.datetime.now(datetime.timezone.utc).timestamp()
    step = max(1, span // 120)
    variables = {"job": "agentguard", "namespace": ".*", "datasource": "prometheus",
                 "__range": args.range, "__interval": f"{step}s",
                 "__rate_interval": args.rate_interval or f"{max(60, span // 10)}s"}
    for item in args.var:
        name, _, value = item.partition("=")
        variables[name] = value

    os.makedirs(args.out, exist_ok=True)
    panels = [Panel(p, variables, args.prometheus.rstrip("/"), end - span, end, step)
              for p in flatten(dashboard.get("panels", []))]
    for panel in panels:
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        panel.draw(ax)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"{slug(panel.title)}.png"))
        plt.close(fig)

    # The whole dashboard, each panel where its gridPos puts it (24 columns, 30 px rows).
    bottom = max(p.raw["gridPos"]["y"] + p.raw["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, bottom * 0.42), dpi=80)
    fig.suptitle(dashboard.get("title", ""), x=0.01, ha="left", fontsize=14)
    for panel in panels:
        g = panel.raw["gridPos"]
        pad_x, pad_y = 0.9 / 24, 1.4 / bottom
        ax = fig.add_axes([g["x"] / 24 + pad_x / 2, 1 - (g["y"] + g["h"]) / bottom + pad_y / 2,
                           g["w"] / 24 - pad_x, g["h"] / bottom - pad_y * 1.2])
        panel.draw(ax)
    fig.savefig(os.path.join(args.out, "dashboard.png"))
    plt.close(fig)

    empty = [(p.title, t) for p in panels for t in p.empty_targets]
    for title, ref in empty:
        print(f"no data: {title} (query {ref})", file=sys.stderr)
    print(f"drew {len(panels)} panels into {args.out}")
    return 1 if empty and args.require_data else 0


if __name__ == "__main__":
    sys.exit(main())
