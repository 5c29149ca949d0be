#!/usr/bin/env python
"""Our ``grid_sample`` against TensorFlow Addons' C++ ``resampler``, forward + backward.

TensorFlow Addons 0.23 installs only beside TensorFlow 2.15 (``numpy<2``),
so its kernel cannot run in the process that runs ours (TF 2.21). Each
process therefore times its sampler against the *same PyTorch step*
(``F.grid_sample``, bilinear, zeros padding, ``align_corners=False``) and
reports the ratio to it; the driver alternates the two kinds of process and
divides the medians: ours / TFA = (ours / torch) / (TFA / torch).

    # once: TFA's environment (tensorflow, not tensorflow-cpu: TFA's kernels need that build)
    python3.11 -m venv tfa-env
    tfa-env/bin/pip install tensorflow==2.15.1 tensorflow-addons==0.23.0 "numpy<2" torch==2.13.0
    # then, from the repository root, in .venv
    python benchmarks/bench_tfa.py --tfa-python tfa-env/bin/python [--runs 3] [--tiny]

Without ``--tfa-python`` (or ``TFA_PYTHON``), or where ``tensorflow_addons``
does not import there, the TFA side is skipped with the reason and only
ours / torch is reported.

The step (both sides): images ``[B, H, W, C]`` and a cotangent, standard
normal; each image rotated by a random angle (|a| < 0.5 rad) and scaled by
0.8-1.2 about its centre, so that part of the output reads outside (zeros);
loss ``sum(out * cotangent)``, gradients to the image and to the sampling
positions, loss and gradients returned. Ours takes the normalised grid
(``stn.grid_sample``'s defaults); TFA takes the same positions as its warp,
pixel units, x first, pixel centres at integers:
``((g + 1) * size - 1) / 2``, computed before the step. Each process first
checks that its forward output equals torch's (atol 1e-4), so both time the
same work. Timing as in ``bench_harness.measure_case``: warm-up calls, then
``--repeats`` interleaved rounds (order rotated), each timed call right
after one untimed call of the same step; ratio = median over rounds of
(time / torch's time in the same round).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(16, 256, 256, 3), (32, 128, 128, 16), (64, 60, 60, 1)]
TINY = [(2, 9, 11, 3)]
TARGET = 0.9   # ours / TFA, fwd + bwd, at most


def inputs(shape, seed=0):
    """Images, cotangent and the normalised sampling grid [B, H, W, 2] (x, y) of one case."""
    import numpy as np
    b, h, w, _ = shape
    rng = np.random.default_rng(seed)
    img = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    angle, scale = rng.uniform(-0.5, 0.5, b), rng.uniform(0.8, 1.2, b)
    ys, xs = np.meshgrid((2 * np.arange(h) + 1) / h - 1, (2 * np.arange(w) + 1) / w - 1,
                         indexing="ij")
    cos, sin = (scale * np.cos(angle))[:, None, None], (scale * np.sin(angle))[:, None, None]
    grid = np.stack([cos * xs - sin * ys, sin * xs + cos * ys], -1).astype(np.float32)
    return img, cot, grid


def pixel_warp(grid, shape):
    """The grid as TFA's warp: pixel units, x first, centres at integers (align_corners=False)."""
    import numpy as np
    h, w = shape[1], shape[2]
    return np.stack([((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2], -1)


def torch_step(img, cot, grid, threads):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    x = torch.tensor(np.ascontiguousarray(np.moveaxis(img, -1, 1)), requires_grad=True)
    g = torch.tensor(grid, requires_grad=True)
    c = torch.tensor(np.ascontiguousarray(np.moveaxis(cot, -1, 1)))

    def step():
        x.grad = g.grad = None
        out = torch.nn.functional.grid_sample(x, g, mode="bilinear", padding_mode="zeros",
                                              align_corners=False)
        loss = (out * c).sum()
        loss.backward()
        return loss.item(), np.moveaxis(out.detach().numpy(), 1, -1)

    return step


def tf_step(sample, img, cot, positions):
    import tensorflow as tf
    x, p, c = tf.constant(img), tf.constant(positions), tf.constant(cot)

    @tf.function
    def step(x, p):
        with tf.GradientTape() as tape:
            tape.watch([x, p])
            out = sample(x, p)
            loss = tf.reduce_sum(out * c)
        return loss, out, tape.gradient(loss, [x, p])

    def run():
        loss, out, grads = step(x, p)
        return loss.numpy(), out

    return run


def time_against_torch(ours, reference, repeats):
    """Median over interleaved rounds of ours' time / the reference's (bench_harness's method)."""
    steps = [ours, reference]
    for s in steps:
        s(), s()
    times = [[], []]
    for r in range(repeats):
        for k in ([0, 1] if r % 2 == 0 else [1, 0]):
            steps[k]()                       # rewarm: the first call after the other framework's
            start = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - start)
    return statistics.median(a / b for a, b in zip(*times))


def worker(shapes, repeats, threads):
    """Times this process's sampler (TFA's where it imports, else ours) against torch."""
    import numpy as np
    try:
        import tensorflow_addons as tfa
        name = "tfa"

        def sample(x, p):
            return tfa.image.resampler(x, p)
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, root)
        import stn
        name = "ours"

        def sample(x, g):
            return stn.grid_sample(x, g)
    results = {}
    for shape in shapes:
        img, cot, grid = inputs(shape)
        positions = pixel_warp(grid, shape) if name == "tfa" else grid
        mine, reference = tf_step(sample, img, cot, positions), torch_step(img, cot, grid, threads)
        difference = np.abs(mine()[1].numpy() - reference()[1]).max()
        assert difference <= 1e-4, f"{name} {shape}: forward differs from torch's by {difference}"
        results[",".join(map(str, shape))] = time_against_torch(
            lambda: mine()[0], lambda: reference()[0], repeats)
    import tensorflow as tf
    print(json.dumps({"impl": name, "tf": tf.__version__, "ratios": results}))


def run_worker(python, args):
    cmd = [python, os.path.abspath(__file__), "--worker", "--repeats", str(args.repeats),
           "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)   # the TFA interpreter must not see this checkout's TF 2.21 modules
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{python}: worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tfa_missing(python):
    """Why TFA's side cannot run with ``python``, or None."""
    if not python:
        return "no TFA interpreter (--tfa-python or TFA_PYTHON)"
    if not os.path.exists(python):
        return f"{python} does not exist"
    check = subprocess.run([python, "-c", "import tensorflow_addons"], capture_output=True,
                           text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if check.returncode != 0:
        return f"tensorflow_addons does not import in {python}: {check.stderr.strip()[-300:]}"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tfa-python", default=os.environ.get("TFA_PYTHON"))
    parser.add_argument("--runs", type=int, default=3, help="processes of each kind, alternating")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per process")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else SHAPES
    if args.worker:
        return worker(shapes, args.repeats, args.threads)
    missing = tfa_missing(args.tfa_python)
    if missing:
        print(f"TFA skipped: {missing}")
    pythons = [sys.executable] + ([] if missing else [args.tfa_python])
    runs = {"ours": [], "tfa": []}
    for _ in range(args.runs):
        for python in pythons:
            result = run_worker(python, args)
            runs[result["impl"]].append(result["ratios"])
    print(f"fwd+bwd / torch's grid_sample, median of {args.repeats} rounds per process; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'B,H,W,C':>16}  {'ours/torch':>24}  {'TFA/torch':>24}  {'ours/TFA (target <= 0.9)':>26}")
    for key in runs["ours"][0]:
        ours = [r[key] for r in runs["ours"]]
        tfa = [r[key] for r in runs["tfa"]]
        line = f"{key:>16}  {' '.join(f'{v:.2f}' for v in ours):>24}"
        if tfa:
            quotient = statistics.median(ours) / statistics.median(tfa)
            line += f"  {' '.join(f'{v:.2f}' for v in tfa):>24}  {quotient:>26.2f}"
        print(line)


if __name__ == "__main__":
    main()
