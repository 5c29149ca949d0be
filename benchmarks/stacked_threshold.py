"""How stn's bilinear sampler should gather its corners, by channel count.

stn._sample_bilinear gathers the 2x2 neighbourhood either as one row of a
neighbour-stacked copy of the image (one index per output pixel, rows of 4C)
or with four indices into the padded image (rows of C). This times both,
forward + backward of the default call in a tf.function, for C = 1..32 at
128x128 with about 1.5M values per batch, and prints stacked / four-index.
stn._STACKED_MAX_CHANNELS is set from it.

    .venv/bin/python benchmarks/stacked_threshold.py
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import stn  # noqa: E402


def median_time(fn, repeats=9):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_fn():
    @tf.function
    def step(img, theta):
        with tf.GradientTape() as tape:
            tape.watch([img, theta])
            loss = tf.reduce_sum(stn.spatial_transformer_network(img, theta))
        return tape.gradient(loss, [img, theta])
    return step


def main():
    default = stn._STACKED_MAX_CHANNELS
    for c in [1, 3, 4, 8, 12, 16, 32]:
        b, h, w = max(1, 96 // c), 128, 128
        rng = np.random.default_rng(0)
        img = tf.constant(rng.standard_normal((b, h, w, c)).astype(np.float32))
        theta = np.tile([[0.9, 0.3, 0.05, -0.3, 0.9, -0.1]], (b, 1)) + rng.normal(0, 0.05, (b, 6))
        theta = tf.constant(theta.astype(np.float32))
        times = {"stacked": [], "four": []}
        for order in (("stacked", "four"), ("four", "stacked")):   # both orders, averaged
            for way in order:
                stn._STACKED_MAX_CHANNELS = 1 << 30 if way == "stacked" else 0
                stn._jitted.clear()
                step = step_fn()
                times[way].append(median_time(lambda: [g.numpy() for g in step(img, theta)]))
        stacked, four = np.mean(times["stacked"]), np.mean(times["four"])
        print(f"C={c:3d} B={b:3d}: stacked {stacked * 1e3:7.1f} ms  four-index {four * 1e3:7.1f} ms"
              f"  stacked/four = {stacked / four:.2f}", flush=True)
    stn._STACKED_MAX_CHANNELS = default


if __name__ == "__main__":
    main()
