"""Markdown report of one or more experiment output directories.

    python -m experiments.report experiments/runs/main [more dirs ...]

Prints, per directory: the command, the summary table (mean ± sample std over
seeds), per-seed test accuracy / NLL, and Welch's t-test p-values of each
variant's test NLL against a reference variant (default: baseline, and
stn when present). Reads only results.json; no TensorFlow needed.
"""
import argparse
import json
import os
import sys

import numpy as np


def _welch_p(a, b):
    from scipy import stats
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def report(path, refs=("baseline", "stn")):
    with open(os.path.join(path, "results.json")) as f:
        doc = json.load(f)
    # late import: summary_table lives with the experiment (imports TF lazily is not needed)
    from experiments.stn_classify import summary_table
    lines = [f"Command: `{doc['environment']['command']}`", "",
             f"Data: {doc['data']['train']} train / {doc['data']['test']} test images, "
             f"{doc['data']['image_size']}x{doc['data']['image_size']}, "
             f"{doc['config']['epochs']} epochs, total {doc['total_seconds'] / 60:.1f} min "
             f"on {', '.join(doc['environment']['devices'])}.", "",
             summary_table(doc["summary"]), ""]
    runs = doc["runs"]
    variants = list(doc["summary"])
    seeds = sorted({r["seed"] for r in runs})
    lines.append("| variant | " + " | ".join(f"seed {s} acc / NLL" for s in seeds) + " |")
    lines.append("| --- |" + " ---: |" * len(seeds))
    for v in variants:
        cells = []
        for s in seeds:
            r = [x for x in runs if x["variant"] == v and x["seed"] == s]
            cells.append(f"{100 * r[0]['test_accuracy']:.2f} / {r[0]['test_nll']:.4f}" if r else "")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    with_theta = [v for v in variants
                  if any("theta_test" in x for x in runs if x["variant"] == v)]
    if with_theta:
        lines += ["", "Predicted transforms on the test set (det of theta's 2x2 part, over "
                  "all seeds' test images: median of per-run medians, overall min / max, "
                  "count of det <= 0, i.e. reflected or collapsed warps):", "",
                  "| variant | det median | det min | det max | det <= 0 |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for v in with_theta:
            ts = [x["theta_test"] for x in runs if x["variant"] == v and "theta_test" in x]
            lines.append(f"| {v} | {np.median([t['det_median'] for t in ts]):.3f} | "
                         f"{min(t['det_min'] for t in ts):.3f} | "
                         f"{max(t['det_max'] for t in ts):.3f} | "
                         f"{sum(t['det_nonpositive'] for t in ts)} |")
    nll = {v: np.array([x["test_nll"] for x in runs if x["variant"] == v]) for v in variants}
    tests = []
    for ref in refs:
        if ref in nll:
            for v in variants:
                if v != ref and not (ref == "stn" and v == "baseline"):
                    tests.append(f"{v} vs {ref}: p = {_welch_p(nll[v], nll[ref]):.2g}")
    if tests:
        lines += ["", "Welch's t-test on test NLL over seeds: " + "; ".join(tests) + "."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="experiment output directories (with results.json)")
    p.add_argument("--confusion-png", help="also write confusion matrices of the first "
                   "directory's --confusion-variants (at --seed) side by side to this PNG")
    p.add_argument("--confusion-variants", default="baseline,stn_coordconv")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for d in args.dirs:
        print(f"### {d}\n\n{report(d)}\n")
    if args.confusion_png:
        confusion_png(args.dirs[0], args.confusion_variants.split(","), args.seed,
                      args.confusion_png)
    return 0


def confusion_png(path, variants, seed, png):
    from experiments import plots
    with open(os.path.join(path, "results.json")) as f:
        runs = json.load(f)["runs"]
    cms, titles = [], []
    for v in variants:
        r = [x for x in runs if x["variant"] == v and x["seed"] == seed]
        if not r:
            raise SystemExit(f"no run of {v!r} with seed {seed} in {path}")
        cms.append(r[0]["confusion"])
        titles.append(f"{v}, seed {seed}: {100 * r[0]['test_accuracy']:.1f}%")
    plots.confusion_row_figure(cms, titles, png)


if __name__ == "__main__":
    sys.exit(main())
