#!/usr/bin/env python3
"""Nsight Compute's CSV output (`ncu --csv ...`) as two markdown tables: one row per
launch, then one row per kernel and launch shape with the launches' total time. Only
the standard library; lines that are not CSV records (kiln's own output, ncu's
==PROF== notes) are skipped.

    python3 tools/py/ncu_table.py ncu.csv [--launches N] [--from-last REGEX]

--from-last keeps the launches from the last one whose kernel matches REGEX to the end
(one forward pass of several, e.g. `timestep` for a UNet) and prints their summed
duration, to set against the replayed forward's time: the difference is the gaps
between kernels.
"""

import argparse
import collections
import csv
import re
import sys

# Columns shown when the metric is there, in this order, with their headings.
COLUMNS = [
    ("gpu__time_duration.sum", "µs"),
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "DRAM %"),
    ("lts__t_sector_hit_rate.pct", "L2 hit %"),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "warps active %"),
    ("launch__registers_per_thread", "regs"),
]


def short_name(kernel):
    """`void ns::<anon>::name<__half, 8>(args)` -> `name<__half, 8>`."""
    name = re.sub(r"\(.*\)\s*$", "", kernel.strip())
    name = re.sub(r"^void\s+", "", name)
    name = re.sub(r"^.*(?:anonymous namespace\)|unnamed>)::", "", name)  # ncu's anonymous namespaces
    depth, cut = 0, 0
    for i, ch in enumerate(name):  # the last `::` outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0 and name.startswith("::", i):
            cut = i + 2
    return name[cut:]


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith('"')]
    launches = collections.OrderedDict()
    for row in csv.DictReader(lines):
        if "ID" not in row or row["ID"] == "ID":
            continue
        launch = launches.setdefault(row["ID"], {
            "kernel": short_name(row.get("Kernel Name", "?")),
            "grid": row.get("Grid Size", ""),
            "block": row.get("Block Size", ""),
            "metrics": {},
        })
        unit = row.get("Metric Unit", "")
        value = number(row.get("Metric Value", ""))
        if value is not None and row.get("Metric Name") == "gpu__time_duration.sum":
            value = value / {"ns": 1e3, "us": 1.0, "usecond": 1.0, "ms": 1e-3, "msecond": 1e-3}.get(unit, 1e3)
        launch["metrics"][row.get("Metric Name", "")] = value
    return launches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--launches", type=int, default=200, help="rows of the per-launch table")
    parser.add_argument("--from-last", metavar="REGEX",
                        help="only the launches from the last kernel matching REGEX on")
    args = parser.parse_args()
    launches = read(args.csv)
    if not launches:
        sys.exit(f"{args.csv}: no ncu records (was ncu run with --csv, and did the regex match?)")
    if args.from_last:
        ids = list(launches)
        starts = [i for i, lid in enumerate(ids) if re.search(args.from_last, launches[lid]["kernel"])]
        if not starts:
            sys.exit(f"{args.csv}: no kernel matches --from-last {args.from_last!r}")
        launches = collections.OrderedDict((lid, launches[lid]) for lid in ids[starts[-1]:])
        total = sum(l["metrics"].get("gpu__time_duration.sum") or 0 for l in launches.values())
        print(f"{len(launches)} launches from the last /{args.from_last}/: {total / 1e3:.3f} ms "
              "of kernel time\n")
    present = [(m, h) for m, h in COLUMNS if any(m in l["metrics"] for l in launches.values())]

    def cell(v):
        return "" if v is None else (f"{v:.1f}" if abs(v) < 1000 else f"{v:,.0f}")

    print("| id | kernel | grid | block | " + " | ".join(h for _, h in present) + " |")
    print("|---" * (4 + len(present)) + "|")
    for i, (lid, l) in enumerate(launches.items()):
        if i >= args.launches:
            print(f"| … {len(launches) - args.launches} more |")
            break
        print(f"| {lid} | {l['kernel']} | {l['grid']} | {l['block']} | " +
              " | ".join(cell(l["metrics"].get(m)) for m, _ in present) + " |")

    print()
    groups = collections.OrderedDict()
    for l in launches.values():
        groups.setdefault((l["kernel"], l["grid"], l["block"]), []).append(l)
    print("| kernel | grid | block | launches | total µs | mean µs | mean DRAM % |")
    print("|---|---|---|---|---|---|---|")
    for (kernel, grid, block), ls in sorted(groups.items(), key=lambda kv: -sum(
            l["metrics"].get("gpu__time_duration.sum") or 0 for l in kv[1])):
        times = [l["metrics"].get("gpu__time_duration.sum") or 0 for l in ls]
        dram = [l["metrics"].get("dram__throughput.avg.pct_of_peak_sustained_elapsed") for l in ls]
        dram = [d for d in dram if d is not None]
        print(f"| {kernel} | {grid} | {block} | {len(ls)} | {sum(times):.1f} | "
              f"{sum(times) / len(ls):.1f} | {cell(sum(dram) / len(dram)) if dram else ''} |")


if __name__ == "__main__":
    main()
