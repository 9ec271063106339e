#!/usr/bin/env python3
"""Markdown tables from pytest-benchmark JSON files (test_bench_aspp.py, test_bench_densecrf.py).

    python benchmarks/summarize.py bench_gpu.json [more.json ...] [-o bench_gpu.md] [--merge-json all.json]

Columns: group (shape-dtype-pass), variant, median ms, ratio vs the best baseline of the group
(< 1 means faster than every baseline), TFLOP/s (nominal FLOPs of the dense dilated convs /
median time) and peak extra memory in MB (CUDA only). The module is also imported by
benchmarks/conftest.py to print the same table at the end of a benchmark session.
"""
import argparse
import json
import math
import sys
from collections import OrderedDict


def records_from_json(data):
    """One dict per benchmark: group, variant, role, median_s, flops, peak_mb, error."""
    recs = []
    for b in data.get("benchmarks", []):
        extra = b.get("extra_info") or {}
        variant = extra.get("variant") or b.get("name", "?")
        role = extra.get("role") or ("ours" if variant.startswith("ours") else "baseline")
        stats = b.get("stats") or {}
        recs.append(
            {
                "group": b.get("group") or extra.get("group") or "?",
                "variant": variant,
                "role": role,
                "median_s": stats.get("median"),
                "flops": extra.get("flops"),
                "peak_mb": extra.get("peak_mem_mb"),
                "error": extra.get("rel_err_vs_baseline"),
            }
        )
    return recs


def build_rows(records):
    """Group records and compute the ratio to the best (fastest) baseline in each group."""
    groups = OrderedDict()
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    rows = []
    summary = []
    for group, recs in groups.items():
        base = [r["median_s"] for r in recs if r["role"] == "baseline" and r["median_s"]]
        best_base = min(base) if base else None
        best_base_name = next(
            (r["variant"] for r in recs if r["role"] == "baseline" and r["median_s"] == best_base), None
        )
        for r in sorted(recs, key=lambda r: (r["role"] != "ours", r["variant"])):
            med = r["median_s"]
            ratio = med / best_base if (med and best_base) else None
            tflops = r["flops"] / med / 1e12 if (med and r["flops"]) else None
            rows.append(dict(r, ratio=ratio, tflops=tflops))
        ours = [r for r in recs if r["role"] == "ours" and r["median_s"]]
        if ours and best_base:
            best_ours = min(ours, key=lambda r: r["median_s"])
            summary.append(
                {
                    "group": group,
                    "ours": best_ours["variant"],
                    "ours_ms": best_ours["median_s"] * 1e3,
                    "baseline": best_base_name,
                    "baseline_ms": best_base * 1e3,
                    "ratio": best_ours["median_s"] / best_base,
                }
            )
    return rows, summary


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def format_markdown(records, title=None):
    rows, summary = build_rows(records)
    out = []
    if title:
        out += [f"# {title}", ""]
    out += [
        "| group | variant | median ms | ratio vs best baseline | TFLOP/s | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['group']} | {r['variant']} | {_fmt(r['median_s'] and r['median_s'] * 1e3, '.3f')} "
            f"| {_fmt(r['ratio'], '.3f')} | {_fmt(r['tflops'], '.2f')} | {_fmt(r['peak_mb'], '.1f')} |"
        )
    if summary:
        out += [
            "",
            "Best of ours vs best baseline per group (ratio < 1: ours is faster):",
            "",
            "| group | ours (best) | ms | best baseline | ms | ratio |",
            "|---|---|---:|---|---:|---:|",
        ]
        for s in summary:
            out.append(
                f"| {s['group']} | {s['ours']} | {s['ours_ms']:.3f} | {s['baseline']} | {s['baseline_ms']:.3f} | {s['ratio']:.3f} |"
            )
        geo = math.exp(sum(math.log(s["ratio"]) for s in summary) / len(summary))
        out += ["", f"Geometric mean of the ratios: {geo:.3f} over {len(summary)} groups."]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("-o", "--output", help="markdown file to write (default: stdout)")
    ap.add_argument("--merge-json", help="also write the benchmarks of all inputs into one JSON file")
    args = ap.parse_args(argv)
    data = None
    for path in args.json:
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"summarize: skipping {path}: {exc}", file=sys.stderr)
            continue
        if data is None:
            data = part
        else:
            data.setdefault("benchmarks", []).extend(part.get("benchmarks", []))
    if data is None:
        print("summarize: no readable benchmark JSON", file=sys.stderr)
        return 1
    if args.merge_json:
        with open(args.merge_json, "w") as f:
            json.dump(data, f, indent=1)
    groups = {b.get("group") or "" for b in data.get("benchmarks", [])}
    kinds = sorted({"DenseCRF" if g.startswith("crf-") else "ASPP" for g in groups if g})
    title = " and ".join(kinds or ["ASPP"]) + " benchmark"
    info = data.get("machine_info") or {}
    dev = next((b.get("extra_info", {}).get("device_name") for b in data.get("benchmarks", [])), None)
    text = format_markdown(records_from_json(data), title)
    header = []
    if dev:
        header.append(f"Device: {dev}")
    if info.get("cpu", {}).get("brand_raw"):
        header.append(f"CPU: {info['cpu']['brand_raw']}")
    if data.get("datetime"):
        header.append(f"Date: {data['datetime']}")
    if header:
        text = text.replace("\n\n", "\n\n" + "  \n".join(header) + "\n\n", 1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
