#!/usr/bin/env python
"""Side-by-side benchmarks: our STN sampler and DSNT against the references.

Run from the repository root::

    python benchmarks/bench.py                 # everything, default shapes
    python benchmarks/bench.py --only stn      # only the sampler (repeat --only for more groups)
    python benchmarks/bench.py --tiny          # tiny shapes, 2 repeats (tests)
    python benchmarks/bench.py --json out.json # also write machine-readable results
    python benchmarks/bench.py --device cpu    # stay on the CPU where a GPU is present
    ./run.sh bench [flags]                     # same, inside .venv

This file is the command line: the flags, the group registry (``GROUPS``:
each group's cases, layout and references), the targets, and the tables.
The rest is split by job:

* ``bench_harness.py``: frameworks and devices, the one step runner, the
  build-time check that implementations compute the same thing, timing
  (interleaved rounds) and the targets' check -- the method, in its
  docstring;
* ``bench_probes.py``: the machine's description and the peak-memory probes
  (what the "peak MiB" column measures, in its docstring);
* ``bench_stn.py``: the groups ``stn``, ``stn-small``, ``volume``, ``warp``,
  ``velocity``, ``tps``;
* ``bench_dsnt.py``: the groups ``dsnt``, ``dsnt3d``.

Groups (``--only NAME``, repeatable): ``stn``, ``stn-small``, ``volume``,
``warp``, ``velocity``, ``dsnt``, ``dsnt3d``, ``tps``. Each group's docstring
(``bench_stn.stn_impls``, ...) is its spec: the inputs, the loss, each
implementation, and the check. Every step is forward + backward (unless
marked forward-only) and returns its loss with its gradients. Every group
checks, when it builds a case, that its implementations compute the same
thing: the forward outputs (or losses) of ours and of each reference on the
benchmark's own inputs must agree to a tolerance ("atol t": |difference| <=
t x max(1, max |reference|); "rtol t": <= t x |reference|), or the script
stops with an AssertionError (a benchmark never compares different work).
The exceptions are said where they are (the seed STN and the documented
kornia TPS call compute a different function by design).

On a busy machine multi-threaded steps stall whenever one of their threads
is descheduled (PyTorch's OpenMP barriers by up to 100x on small steps), so
the script warns when the load average exceeds the CPU count; ``--threads 1``
then gives the fairer comparison of the kernels themselves.

GPU: with a GPU present, TF runs on ``GPU:0`` and torch on ``cuda``, each
step synchronised before the clock is read, memory from the GPU allocators
(``--device``; see ``bench_harness.py``). Not yet run on a GPU.
"""

import argparse
import collections
import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):   # our modules, and this folder's (also when loaded by path)
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_dsnt  # noqa: E402
import bench_harness  # noqa: E402
import bench_probes  # noqa: E402
import bench_stn  # noqa: E402

STN_SHAPES = [(32, 128, 128, 16), (16, 256, 256, 3), (64, 32, 32, 64)]
DSNT_CASES = [(64, 64, 64, 1), (64, 64, 64, 16), (256, 64, 64, 1), (256, 64, 64, 16)]
TINY_STN_SHAPES = [(3, 12, 10, 2)]
TINY_DSNT_CASES = [(2, 8, 8, 1), (3, 8, 6, 2)]
STN_SMALL_SHAPES = [(64, 28, 28, 1), (64, 42, 42, 1), (64, 60, 60, 1), (8, 64, 64, 3)]
TINY_STN_SMALL_SHAPES = [(4, 7, 7, 1)]
VOLUME_SHAPES = [(4, 64, 64, 64, 4)]
TINY_VOLUME_SHAPES = [(1, 5, 6, 7, 2)]
WARP_SHAPES = [(16, 256, 256, 3)]
TINY_WARP_SHAPES = [(2, 9, 11, 2)]
VELOCITY_SHAPES = [(2, 64, 64, 64, 3)]
TINY_VELOCITY_SHAPES = [(1, 5, 6, 7, 3)]
DSNT3D_CASES = [(32, 32, 32, 32, 4)]
TINY_DSNT3D_CASES = [(2, 4, 5, 6, 2)]
TPS_CASES = [(32, 64, 64, 3, 4)]
TINY_TPS_CASES = [(2, 10, 12, 2, 3)]

# A group: build(case, rng, env, args) -> (impls, skipped), whose docstring is
# its spec; its layout; its cases (default, --tiny); the implementation of the
# "x ref" ratios and that of the second ratio column.
Group = collections.namedtuple("Group", "build dims cases tiny_cases reference second")

GROUPS = {  # in the order they run (also the order of --only's choices)
    "stn": Group(bench_stn.stn_impls, "B,H,W,C", STN_SHAPES, TINY_STN_SHAPES,
                 "torch", "seed stn"),
    "stn-small": Group(bench_stn.stn_small_impls, "B,H,W,C", STN_SMALL_SHAPES,
                       TINY_STN_SMALL_SHAPES, "torch", "seed stn"),
    "volume": Group(bench_stn.volume_impls, "B,D,H,W,C", VOLUME_SHAPES, TINY_VOLUME_SHAPES,
                    "torch", None),
    "warp": Group(bench_stn.warp_impls, "B,H,W,C", WARP_SHAPES, TINY_WARP_SHAPES, "torch", None),
    "velocity": Group(bench_stn.velocity_impls, "B,D,H,W,3", VELOCITY_SHAPES,
                      TINY_VELOCITY_SHAPES, "torch", "ours plain"),
    "dsnt": Group(bench_dsnt.dsnt_impls, "B,H,W,K", DSNT_CASES, TINY_DSNT_CASES,
                  "dsntnn", "seed dsnt"),
    "dsnt3d": Group(bench_dsnt.dsnt3d_impls, "B,D,H,W,K", DSNT3D_CASES, TINY_DSNT3D_CASES,
                    "dsntnn", None),
    "tps": Group(bench_stn.tps_impls, "B,H,W,C,L (L x L control points)", TPS_CASES,
                 TINY_TPS_CASES, "kornia", "ours plain"),
}
GROUP_ORDER = list(GROUPS)
GROUP_DIMS = {name: group.dims for name, group in GROUPS.items()}

# The targets: (group, shape, implementation, reference, bound, how)
#   how "le": time(impl) / time(ref) <= bound;  "speedup": time(ref) / time(impl) >= bound
TARGETS = [
    ("stn", (32, 128, 128, 16), "ours", "torch", 0.6, "le"),
    ("stn", (16, 256, 256, 3), "ours", "torch", 0.8, "le"),
    ("stn", (32, 128, 128, 16), "ours", "seed stn", 1.5, "speedup"),
    ("stn", (16, 256, 256, 3), "ours", "seed stn", 1.5, "speedup"),
    ("dsnt", (256, 64, 64, 1), "ours", "dsntnn", 0.5, "le"),
    ("dsnt", (256, 64, 64, 16), "ours", "dsntnn", 0.5, "le"),
    ("stn-small", (64, 28, 28, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (64, 42, 42, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (64, 60, 60, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (8, 64, 64, 3), "ours", "torch", 1.0, "le"),
    ("volume", (4, 64, 64, 64, 4), "ours", "torch", 1.0, "le"),
    ("warp", (16, 256, 256, 3), "ours", "torch", 1.0, "le"),
    ("dsnt3d", (32, 32, 32, 32, 4), "ours", "dsntnn", 0.5, "le"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time our STN sampler, warps, TPS and DSNT (forward + backward) side by "
                    "side with the seed implementations, PyTorch, kornia and dsntnn.",
        epilog="Ratios are the claim, not absolute times: run on a quiet machine, "
               "or read the ratios (interleaved, paired per round).")
    p.add_argument("--only", choices=GROUP_ORDER, action="append", metavar="GROUP",
                   help="run only this group (repeatable): " + ", ".join(GROUP_ORDER)
                        + " (each group's docstring, in bench_stn.py and bench_dsnt.py, says "
                          "what it times)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes, 2 repeats, 1 warm-up, no memory probe (for the test suite)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per case (default 15; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per implementation first (default 3; 1 with --tiny)")
    p.add_argument("--rewarm", type=int, default=1,
                   help="untimed calls of an implementation right before each of its timed "
                        "calls (default 1), so that no timing includes the switch from another "
                        "framework; 0 times the switch as well")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for TF (intra- and inter-op) and torch (default: the CPUs this "
                        "process may use, TF's own default); --threads 1 compares single-threaded "
                        "kernels, far less sensitive to a busy machine")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where TF and torch run: auto (default) uses each framework's GPU "
                        "where it sees one (TF on GPU:0, torch on cuda), cpu stays on the CPU, "
                        "gpu stops unless both see a GPU (not yet run on a GPU)")
    p.add_argument("--memory", dest="memory", action="store_true", default=None,
                   help="measure peak memory per step (default on, off with --tiny)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--seed-dsnt-max-points", type=int, default=1024,
                   help="skip the seed DSNT port above this many points B*K (its while_loop "
                        "is quadratic; default 1024)")
    p.add_argument("--stn-shapes", default=None,
                   help="override STN shapes, e.g. '32x128x128x16,16x256x256x3'")
    p.add_argument("--dsnt-cases", default=None,
                   help="override DSNT cases B x H x W x K, e.g. '256x64x64x1'")
    p.add_argument("--json", metavar="PATH", help="write results as JSON to PATH")
    p.add_argument("--seed", type=int, default=0, help="random seed for the inputs")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 15
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.memory is None:
        args.memory = not args.tiny
    if args.repeats < 1 or args.warmup < 0 or args.rewarm < 0:
        p.error("--repeats must be >= 1, --warmup and --rewarm >= 0")
    return args


def _parse_shapes(text, n=4):
    shapes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) != n or min(dims) < 1:
            raise SystemExit(f"bad shape {part!r}: expected {n} positive sizes like 2x8x8x3")
        shapes.append(dims)
    return shapes


def run_group(name, cases, args, env, probe):
    """Builds (and checks), times and prints each case of one group; returns the JSON cases."""
    group = GROUPS[name]
    results = []
    for case in cases:
        rng = env.np.random.default_rng(args.seed)
        impls, skipped = group.build(case, rng, env, args)
        ref, rows = bench_harness.measure_case(impls, group.reference, group.second,
                                               args.repeats, args.warmup, args.rewarm, probe)
        results.append({"group": name, "dims": group.dims, "shape": list(case),
                        "reference": ref, "second_reference": group.second, "rows": rows,
                        "skipped": [{"impl": n, "reason": why} for n, why in skipped]})
        print_case(results[-1])
        del impls
        gc.collect()
    return results


def _fmt(x, spec, none="n/a"):
    return none if x is None else format(x, spec)


def print_case(res):
    dims = GROUP_DIMS[res["group"]]
    shape = ",".join(str(d) for d in res["shape"])
    print(f"\n{res['group'].upper()}  {dims} = {shape}   (reference: {res['reference'] or 'none'})")
    second = res["second_reference"] or "-"
    print(f"  {'implementation':40s} {'median ms':>10s} {'min ms':>9s} {'x ref':>7s} "
          f"{'x ' + second if second != '-' else '':>13s} {'peak MiB':>9s}")
    for row in res["rows"]:
        name = row["impl"] + ("" if row["backward"] else " (fwd only)")
        print(f"  {name:40s} {row['median_s'] * 1e3:10.2f} {row['min_s'] * 1e3:9.2f} "
              f"{_fmt(row['ratio_vs_reference'], '7.2f'):>7s} "
              f"{_fmt(row['ratio_vs_second'], '13.2f'):>13s} "
              f"{_fmt(row['peak_mem_mib'], '9.1f'):>9s}")
    for s in res["skipped"]:
        print(f"  {s['impl']:40s} skipped: {s['reason']}")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    env = bench_harness.setup_env(args.threads, args.device)
    info = bench_probes.machine_info(env, seed_stn=bench_stn.seed_stn_version())
    print(bench_probes.machine_line(info))
    mode = "tiny" if args.tiny else "full"
    print(f"mode {mode}: {args.repeats} timed rounds after {args.warmup} warm-up call(s) per "
          f"implementation, interleaved, each timed call after {args.rewarm} untimed one(s) of "
          f"the same implementation; times are forward + backward per step unless "
          f"'fwd only'; 'x ref' = median of per-round ratios to the reference")

    la = info["load_average_start"]
    if la and la[0] > info["usable_cpus"] - 0.5 and env.threads > 1:
        print(f"warning: load average {la[0]:.2f} with {info['usable_cpus']} usable CPUs: the "
              f"machine is busy, and multi-threaded steps stall whenever one of their threads "
              f"is descheduled (PyTorch's OpenMP barriers worst of all, up to 100x on small "
              f"steps). Compare with --threads 1 as well.")
    probe = bench_probes.MemoryProbe(env.tf, env.torch, env.device) if args.memory else None
    memory_method = probe.methods() if probe is not None else "n/a (not measured)"
    print(f"peak memory: {memory_method}")

    overrides = {"stn": args.stn_shapes, "dsnt": args.dsnt_cases}
    results = []
    t_start = time.time()
    for name, group in GROUPS.items():
        if args.only and name not in args.only:
            continue
        cases = (_parse_shapes(overrides[name]) if overrides.get(name)
                 else group.tiny_cases if args.tiny else group.cases)
        results += run_group(name, cases, args, env, probe)

    checks = bench_harness.check_targets(TARGETS, results)
    if checks:
        print("\nissue targets (default call, forward + backward):")
        for c in checks:
            verdict = {True: "HOLDS", False: "MISSED", None: "not measured"}[c["holds"]]
            print(f"  [{verdict}] {c['target']}")
    print(f"\ntotal wall time {time.time() - t_start:.1f} s")
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = os.getloadavg()
        print("load average at the end: " + ", ".join(f"{v:.2f}" for v in info["load_average_end"]))

    if args.json:
        payload = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   "mode": mode, "repeats": args.repeats, "warmup": args.warmup,
                   "rewarm": args.rewarm, "device": args.device,
                   "machine": info, "machine_line": bench_probes.machine_line(info),
                   "memory_method": memory_method, "cases": results, "targets": checks}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
