#!/usr/bin/env python3
"""Plots a flashkv-loadgen JSON report (--out report.json) to PNG.

    benchmarks/loadgen_plot.py report.json                # writes report.png
    benchmarks/loadgen_plot.py report.json -o plots.png   # or a chosen name
    benchmarks/loadgen_plot.py a.json b.json -o cmp.png   # several runs, overlaid

The figure holds the latency CDFs (Step, time to first token, time per output token, request)
on a log axis, and throughput over time (prefill and decode tokens/s, Step calls/s, errors).

Needs matplotlib: `sudo apt-get install python3-matplotlib` (Debian's, for /usr/bin/python3) or
`pip install matplotlib`.
Without it the script prints a text summary and exits with status 2.
"""

import argparse
import json
import os
import sys

CDF_ROWS = [
    ("Step", "Step (one layer)"),
    ("ttft", "time to first token"),
    ("tpot", "time per output token"),
    ("request", "request, end to end"),
]


def load(path):
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    for key in ("latency", "timeline", "throughput"):
        if key not in report:
            raise SystemExit(f"{path}: not a flashkv-loadgen report (no '{key}')")
    return report


def label_of(path, report, many):
    model = report.get("model", {})
    config = report.get("config", {})
    base = (f"{report.get('backend', '?')} {model.get('dtype', '?')}, "
            f"{config.get('runners', '?')}x{config.get('max_batch', '?')}")
    return f"{os.path.basename(path)}: {base}" if many else base


def summary(paths, reports):
    for path, r in zip(paths, reports):
        t = r["throughput"]
        print(f"{path}: prefill {t['prefill_tokens_per_s']:.1f} tok/s, "
              f"decode {t['decode_tokens_per_s']:.1f} tok/s, {t['steps_per_s']:.1f} steps/s, "
              f"clean={r.get('clean')}")
        for key, name in CDF_ROWS:
            h = r["latency"].get(key)
            if h:
                print(f"  {name:24s} p50 {h['p50_ms']:9.3f}  p90 {h['p90_ms']:9.3f}  "
                      f"p99 {h['p99_ms']:9.3f}  max {h['max_ms']:9.3f} ms")


def per_second(report):
    """The timeline as rates: buckets are whole seconds except the last, which covers only the
    run's tail; it is scaled to a rate, or dropped when too short to mean anything."""
    timeline = [dict(b) for b in report["timeline"]]
    if timeline:
        tail = report.get("duration_s", 0) - timeline[-1]["t"]
        if tail < 0.5:
            timeline.pop()
        elif tail < 1:
            for key in ("prefill_tokens", "decode_tokens", "steps", "completed", "errors"):
                timeline[-1][key] /= tail
    return timeline


def plot(paths, reports, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    cdf, rate = axes
    many = len(reports) > 1
    styles = ["-", "--", ":", "-."]
    for i, (path, r) in enumerate(zip(paths, reports)):
        style = styles[i % len(styles)]
        who = label_of(path, r, many)
        for key, name in CDF_ROWS:
            h = r["latency"].get(key)
            if not h or not h.get("cdf"):
                continue
            xs = [p[0] for p in h["cdf"]]
            ys = [p[1] for p in h["cdf"]]
            cdf.step(xs, ys, where="post", linestyle=style,
                     label=f"{name} ({who})" if many else name)
        timeline = per_second(r)
        seconds = [b["t"] for b in timeline]
        rate.plot(seconds, [b["prefill_tokens"] for b in timeline], linestyle=style,
                  label=f"prefill tok/s ({who})" if many else "prefill tok/s")
        rate.plot(seconds, [b["decode_tokens"] for b in timeline], linestyle=style,
                  label=f"decode tok/s ({who})" if many else "decode tok/s")
        rate.plot(seconds, [b["steps"] for b in timeline], linestyle=style,
                  label=f"Step calls/s ({who})" if many else "Step calls/s")
        errors = [(b["t"], b["errors"]) for b in timeline if b["errors"]]
        if errors:
            rate.scatter([e[0] for e in errors], [e[1] for e in errors], marker="x",
                         color="red", label="errors/s")
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of samples")
    cdf.set_title("latency CDF")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize="small")
    rate.set_xlabel("time since start (s)")
    rate.set_ylabel("per second")
    rate.set_title("throughput over time")
    rate.grid(True, alpha=0.3)
    rate.legend(fontsize="small")
    first = reports[0]
    model = first.get("model", {})
    fig.suptitle(f"flashkv-loadgen against {first.get('target', '?')}: "
                 f"{model.get('num_layers')} layers, {model.get('num_q_heads')}/"
                 f"{model.get('num_kv_heads')} heads, head dim {model.get('head_dim')}, "
                 f"{model.get('dtype')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="JSON reports from flashkv-loadgen --out")
    parser.add_argument("-o", "--out", help="PNG to write (default: first report's name .png)")
    args = parser.parse_args()
    reports = [load(p) for p in args.reports]
    out = args.out or os.path.splitext(args.reports[0])[0] + ".png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        summary(args.reports, reports)
        print("matplotlib is not installed for this python3: sudo apt-get install "
              "python3-matplotlib (Debian; then run with /usr/bin/python3) or pip install "
              "matplotlib", file=sys.stderr)
        return 2
    plot(args.reports, reports, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
