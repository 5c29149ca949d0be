#!/usr/bin/env python
"""Markdown tables from ``bench.py --json`` files (for docs/performance.md).

    python benchmarks/summarize.py RUN.json [MORE.json ...]

Prints, for the first file, its command, machine line and one table per case;
then, over all files, the issue's target ratios run by run.
"""
import argparse
import json


def _f(x, spec):
    return "n/a" if x is None else format(x, spec)


def case_table(case):
    dims, second = case["dims"], case["second_reference"] or "second"
    ref = case["reference"] or "none"
    lines = [f"**{case['group'].upper()}, {dims} = {','.join(map(str, case['shape']))}** "
             f"(ratios: median of per-round time / {ref} time)", "",
             f"| implementation | median ms | min ms | x {ref} | x {second} | peak MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in case["rows"]:
        name = row["impl"] + ("" if row["backward"] else " (forward only)")
        other = row["ratio_vs_second"]
        lines.append(f"| {name} | {row['median_s'] * 1e3:.1f} | {row['min_s'] * 1e3:.1f} | "
                     f"{_f(row['ratio_vs_reference'], '.2f')} | {_f(other, '.2f')} | "
                     f"{_f(row['peak_mem_mib'], '.0f')} |")
    for s in case["skipped"]:
        lines.append(f"| {s['impl']} | skipped: {s['reason']} | | | | |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    runs = []
    for path in args.files:
        with open(path) as f:
            runs.append(json.load(f))
    first = runs[0]
    print(f"Command: `{first['command']}`\n")
    print(f"```\n{first['machine_line']}\n```\n")
    print(f"Peak memory: {first['memory_method']}\n")
    for case in first["cases"]:
        print(case_table(case) + "\n")
    def key(t):
        return (t["target"].split(":")[0], t["how"], t["bound"])

    if first["targets"]:
        print("| target | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
        print("| --- |" + " ---: |" * len(runs))
        for t0 in first["targets"]:
            cells = []
            for run in runs:
                t = next((t for t in run["targets"] if key(t) == key(t0)), None)
                if t is None or t["value"] is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{t['value']:.2f}x {'ok' if t['holds'] else 'MISSED'}")
            what = ("time / reference <=" if t0["how"] == "le" else "speed-up >=")
            words = t0["target"].split(":")[1].split()
            pair = f"{words[0]} vs {words[2]}" if t0["how"] == "le" else f"{words[0]} vs {words[5]} {words[6]}"
            print(f"| {key(t0)[0]}: {pair}, {what} {t0['bound']}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
