#!/usr/bin/env python
"""Peak resident memory of one STN training step from a cold start, one fresh process each.

    python benchmarks/cold_start.py                      # the issue's two shapes
    python benchmarks/cold_start.py --shapes 2x8x8x3     # others
    ./run.sh python benchmarks/cold_start.py             # inside .venv

Each implementation runs in its own new Python process: it imports its
framework, makes the inputs (as ``bench.py``'s ``stn`` group does: a random
image, cotangent and near-rotation ``theta``), runs one forward + backward
step (for ours: tracing and XLA compilation included) and reports the
process's peak resident set (``ru_maxrss``) and the same just before the
step, after the imports and inputs. TensorFlow's warm-step peak
(``bench.py``) leaves compilation out; this is what a job needs from start.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
impl, (b, h, w, c) = {impl!r}, {shape!r}
import numpy as np
import bench_stn
rng = np.random.default_rng(0)
img = rng.standard_normal((b, h, w, c)).astype(np.float32)
cot = rng.standard_normal((b, h, w, c)).astype(np.float32)
theta = bench_stn.random_theta(rng, b)
if impl == "ours":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads({threads})
    tf.config.threading.set_inter_op_parallelism_threads({threads})
    import stn
    x, g, t = tf.constant(img), tf.constant(cot), tf.constant(theta.reshape(b, 6))

    @tf.function
    def step(x, t, g):
        with tf.GradientTape() as tape:
            tape.watch([x, t])
            loss = tf.reduce_sum(stn.spatial_transformer_network(x, t) * g)
        return [loss] + tape.gradient(loss, [x, t])

    run = lambda: step(x, t, g)[-1].numpy()
else:
    import torch
    torch.set_num_threads({threads})
    F = torch.nn.functional
    x = torch.tensor(img.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    g = torch.tensor(cot.transpose(0, 3, 1, 2).copy())
    t = torch.tensor(theta, requires_grad=True)

    def run():
        out = F.grid_sample(x, F.affine_grid(t, (b, c, h, w), align_corners=False),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.autograd.grad((out * g).sum(), [x, t])

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(impl=impl, shape=[b, h, w, c], before_mib=before / 1024, peak_mib=after / 1024)))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="32x128x128x16,16x256x256x3",
                   help="comma-separated BxHxWxC shapes")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    print("| shape | implementation | peak RSS MiB | before the step MiB | step, compilation included MiB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for text in args.shapes.split(","):
        shape = tuple(int(s) for s in text.lower().split("x"))
        for impl in ("ours", "torch"):
            code = CHILD.format(root=ROOT, here=HERE, impl=impl, shape=shape, threads=args.threads)
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {text} | {impl} | {r['peak_mib']:.0f} | {r['before_mib']:.0f} | "
                  f"{r['peak_mib'] - r['before_mib']:.0f} |")


if __name__ == "__main__":
    main()
