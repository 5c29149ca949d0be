"""Markdown report of one or more experiment output directories.

    python -m experiments.report experiments/runs/main [more dirs ...]
    python -m experiments.report --table1 experiments/runs/mnist5k_*/seed*

Prints, per directory: the command, the summary table (mean ± sample std over
seeds), per-seed test accuracy / NLL, and Welch's t-test p-values of each
variant's test NLL against a reference variant (default: baseline, and
stn when present). With --table1, one table over all the directories in the
layout of the STN paper's Table 1 (distortion x model, test error %, mean ±
sample std over seeds) with the paper's full-MNIST numbers alongside. Reads
only results.json; no TensorFlow needed.
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


# Jaderberg et al. 2015 (arXiv:1506.02025), test error % on distorted full
# MNIST (60,000 training digits). Sources: the R, P and E columns and the
# TPS rows are Table 1 (left) as transcribed for this project; the RTS values
# (CNN 0.8; ST-CNN 0.5 or 0.6 depending on the transform) and the cluttered
# values (60x60: CNN 3.5, ST-CNN 1.7; the transform is not named) are also
# stated in the paper's section 4.1 text, against which they were checked.
PAPER_TABLE1 = {
    "CNN": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 1.4, "cluttered": 3.5},
    "ST-CNN Aff": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.2, "cluttered": 1.7},
    "ST-CNN Proj": {"R": 0.8, "RTS": 0.6, "P": 0.8, "E": 1.3},
    "ST-CNN TPS": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.1},
}
PAPER_ROW = {"baseline": "CNN", "stn": "ST-CNN Aff", "stn_projective": "ST-CNN Proj",
             "stn_tps": "ST-CNN TPS"}
MODEL_NAMES = {"baseline": "CNN (baseline)", "stn": "ST-CNN affine",
               "stn_projective": "ST-CNN projective", "stn_tps": "ST-CNN TPS",
               "stn_diffeo": "ST-CNN affine diffeomorphic", "stn_attention": "ST-CNN attention"}
DISTORTION_ORDER = ["R", "RTS", "P", "E", "cluttered", "custom"]


def collect(dirs, field="error"):
    """{(distortion, variant): {seed: value}} over results.json files.

    field: "error" (test error %) or "seconds" (training time of the run).
    The same (distortion, variant, seed) in two directories is an error (it
    would be counted twice).
    """
    cells, datasets = {}, set()
    for d in dirs:
        with open(os.path.join(d, "results.json")) as f:
            doc = json.load(f)
        cfg = doc["config"]
        datasets.add(cfg["dataset"])
        for r in doc["runs"]:
            key = (cfg.get("distortion", "custom"), r["variant"])
            seeds = cells.setdefault(key, {})
            if r["seed"] in seeds:
                raise ValueError(f"{key} seed {r['seed']} appears twice (again in {d})")
            seeds[r["seed"]] = (100.0 * (1.0 - r["test_accuracy"]) if field == "error"
                                else r["train_seconds"])
    return cells, datasets


def table1(dirs):
    """Markdown: test error % (mean ± sample std over seeds) per distortion x
    model, each of our columns followed by the paper's full-MNIST number."""
    cells, _ = collect(dirs)
    distortions = [d for d in DISTORTION_ORDER if any(k[0] == d for k in cells)]
    variants = []
    for _, v in sorted(cells, key=lambda k: k[1]):
        if v not in variants:
            variants.append(v)
    order = ["baseline", "stn", "stn_projective", "stn_tps"]
    variants = [v for v in order if v in variants] + [v for v in variants if v not in order]
    head = "| model | " + " | ".join(f"{d}: ours | {d}: paper" for d in distortions) + " |"
    lines = [head, "| --- |" + " ---: | ---: |" * len(distortions)]
    for v in variants:
        row = [MODEL_NAMES.get(v, v.replace("_coordconv", " + CoordConv loc. net")
                               .replace("stn_", "ST-CNN ").replace("stn", "ST-CNN affine"))]
        for d in distortions:
            errs = np.array(list(cells.get((d, v), {}).values()))
            if len(errs) == 0:
                row.append("")
            elif len(errs) == 1:
                row.append(f"{errs[0]:.2f} (1 seed)")
            else:
                row.append(f"{errs.mean():.2f} ± {errs.std(ddof=1):.2f}"
                           + ("" if len(errs) == 5 else f" ({len(errs)} seeds)"))
            paper = PAPER_TABLE1.get(PAPER_ROW.get(v, ""), {}).get(d)
            row.append("" if paper is None else f"{paper:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def table1_details(dirs):
    """Markdown: per-seed test errors, Welch's t-tests of the errors for the
    comparisons of interest, and the mean training time per run."""
    cells, _ = collect(dirs)
    secs, _ = collect(dirs, "seconds")
    seeds = sorted({s for v in cells.values() for s in v})
    lines = ["| distortion | model | " + " | ".join(f"seed {s}" for s in seeds)
             + " | wall-clock training time per run (s) |",
             "| --- | --- |" + " ---: |" * (len(seeds) + 1)]
    keys = sorted(cells, key=lambda k: (DISTORTION_ORDER.index(k[0]), k[1]))
    for d, v in keys:
        vals = [f"{cells[d, v][s]:.1f}" if s in cells[d, v] else "" for s in seeds]
        lines.append(f"| {d} | {v} | " + " | ".join(vals)
                     + f" | {np.mean(list(secs[d, v].values())):.0f} |")
    pairs = [("stn", "baseline"), ("stn_projective", "stn"), ("stn_tps", "stn"),
             ("stn_coordconv", "stn"), ("stn_tps", "stn_projective")]
    tests = []
    for d in [x for x in DISTORTION_ORDER if any(k[0] == x for k in cells)]:
        got = []
        for a, b in pairs:
            if (d, a) in cells and (d, b) in cells:
                ea, eb = list(cells[d, a].values()), list(cells[d, b].values())
                test = (f"p = {_welch_p(ea, eb):.2g}" if min(len(ea), len(eb)) > 1
                        else "one seed, no test")
                got.append(f"{a} vs {b} {np.mean(ea) - np.mean(eb):+.2f} points, {test}")
        if got:
            tests.append(f"* {d}: " + "; ".join(got) + ".")
    if tests:
        lines += ["", "Welch's t-test on the test error over seeds (difference of the "
                  "means, in percentage points):", ""] + tests
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="experiment output directories (with results.json)")
    p.add_argument("--table1", action="store_true",
                   help="one table over all dirs in the layout of the STN paper's Table 1")
    p.add_argument("--confusion-png", help="also write confusion matrices of the first "
                   "directory's --confusion-variants (at --seed) side by side to this PNG")
    p.add_argument("--confusion-variants", default="baseline,stn_coordconv")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.table1:
        print(table1(args.dirs) + "\n\n" + table1_details(args.dirs))
        return 0
    for d in args.dirs:
        print(f"### {d}\n\n{report(d)}\n")
    if args.confusion_png:
        confusion_png(args.dirs[0], args.confusion_variants.split(","), args.seed,
                      args.confusion_png)
    return 0


def confusion_png(path, variants, seed, png):
    from experiments import training_figures
    with open(os.path.join(path, "results.json")) as f:
        runs = json.load(f)["runs"]
    cms, titles = [], []
    for v in variants:
        r = [x for x in runs if x["variant"] == v and x["seed"] == seed]
        if not r:
            raise SystemExit(f"no run of {v!r} with seed {seed} in {path}")
        cms.append(r[0]["confusion"])
        titles.append(f"{v}, seed {seed}: {100 * r[0]['test_accuracy']:.1f}%")
    training_figures.confusion_row_figure(cms, titles, png)


if __name__ == "__main__":
    sys.exit(main())
