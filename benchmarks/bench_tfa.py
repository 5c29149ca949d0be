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
same work. Both processes use ``bench_harness``'s step runners and its
timing (``time_case``: warm-up calls, then ``--repeats`` interleaved rounds,
order rotated, each timed call right after one untimed call of the same
step); ratio = median over rounds of (time / torch's time in the same
round).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

SHAPES = [(16, 256, 256, 3), (32, 128, 128, 16), (64, 60, 60, 1)]
TINY = [(2, 9, 11, 3)]
TARGET = 0.9   # ours / TFA, fwd + bwd, at most


HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(HERE), HERE):   # our modules and the harness, in either process
    if _path not in sys.path:
        sys.path.insert(0, _path)


def inputs(shape, seed=0):
    """Images, cotangent and the normalised sampling grid [B, H, W, 2] (x, y) of one case."""
    import numpy as np
    from bench_stn import identity_grid
    b, h, w, _ = shape
    rng = np.random.default_rng(seed)
    img = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    angle, scale = rng.uniform(-0.5, 0.5, b), rng.uniform(0.8, 1.2, b)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    rotations = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)  # [B, 2, 2]
    grid = np.einsum("bij,bhwj->bhwi", rotations, identity_grid((h, w)))
    return img, cot, grid.astype(np.float32)


def pixel_warp(grid, shape):
    """The grid as TFA's warp: pixel units, x first, centres at integers (align_corners=False).

    The convention's own unnormalisation (``spatial_convention.normalized_to_pixel``),
    so TFA reads the positions our sampler reads.
    """
    import numpy as np
    import tensorflow as tf

    import spatial_convention
    sizes = (shape[2], shape[1])   # (x, y): width, height
    return np.stack([spatial_convention.normalized_to_pixel(tf.constant(grid[..., a]), n,
                                                            fused=True).numpy()
                     for a, n in enumerate(sizes)], -1)


def worker(shapes, repeats, threads):
    """Times this process's sampler (TFA's where it imports, else ours) against torch.

    The harness's step runners, check and interleaved timing (``bench_harness``), as in
    ``bench.py``'s groups.
    """
    import numpy as np
    from bench_harness import Impl, check_same, paired_ratio, setup_env, time_case
    from bench_stn import _nchw, _nhwc
    env = setup_env(threads, device="cpu")
    try:
        import tensorflow_addons as tfa
        name, sample = "tfa", tfa.image.resampler
    except ImportError:
        name, sample = "ours", env.stn.grid_sample
    F = env.torch.nn.functional
    results = {}
    for shape in shapes:
        img, cot, grid = inputs(shape)
        positions = pixel_warp(grid, shape) if name == "tfa" else grid
        mine, out = env.tf_step(env.tf_cotangent_loss(sample), [env.tf_tensor(a) for a in
                                                               (img, positions, cot)], [0, 1])
        x_t, g_t = env.torch_tensor(_nchw(img), grad=True), env.torch_tensor(grid, grad=True)
        c_t = env.torch_tensor(_nchw(cot))
        reference, ref = env.torch_step(env.torch_cotangent_loss(
            lambda: F.grid_sample(x_t, g_t, mode="bilinear", padding_mode="zeros",
                                  align_corners=False), c_t), [x_t, g_t])
        check_same(f"{name} {shape} vs torch", out, _nhwc(ref))
        times = time_case([Impl(name, "tf", mine), Impl("torch", "torch", reference)],
                          repeats, warmup=2, rewarm=1)
        results[",".join(map(str, shape))] = paired_ratio(times[name], times["torch"])
    print(json.dumps({"impl": name, "tf": env.tf.__version__, "ratios": results}))


def run_worker(python, args):
    cmd = [python, os.path.abspath(__file__), "--worker", "--repeats", str(args.repeats),
           "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)   # only the TFA interpreter's own packages, and this checkout
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
    print(f"{'B,H,W,C':>16}  {'ours/torch':>24}  {'TFA/torch':>24}  {f'ours/TFA (target <= {TARGET})':>26}")
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
