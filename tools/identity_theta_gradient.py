#!/usr/bin/env python
"""How far PyTorch's theta gradient at the identity is from ours, in float32.

At the identity every output pixel samples an exact pixel position, the kink
of bilinear interpolation, where the gradient is one-sided. We build the
transform in pixel space, so the sampled coordinates are exact and every
position takes the right-hand difference (PyTorch's rule at an exact
coordinate; tests/test_pytorch_taps.py checks both). PyTorch's
``affine_grid`` computes the normalised base grid in float32 and multiplies
it by theta, so its coordinates are off by round-off on either side of the
pixel positions and its gradient is a rounding-dependent mix of left- and
right-hand differences. This prints the relative difference
``|g_torch - g_ours| / |g_ours|`` (Frobenius norms over the batch) for a few
sizes, every padding mode and both conventions, and, as the control, the
largest difference of the grid gradients (relative to the largest entry) when both samplers are given the
same grid, our ``affine_grid``'s (round-off: same taps, same side)::

    python tools/identity_theta_gradient.py

docs/stn.md ("Exactness at pixel positions") quotes its output.
"""
import itertools
import os
import sys

import numpy as np
import tensorflow as tf
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stn  # noqa: E402

SIZES = [(60, 60), (37, 50), (200, 256)]
IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], np.float32)


def theta_gradients(img, cot, align_corners, padding_mode):
    b = img.shape[0]
    theta = np.tile(IDENTITY, (b, 1, 1))
    t_theta = torch.tensor(theta, requires_grad=True)
    x = torch.tensor(img.transpose(0, 3, 1, 2))
    grid = torch.nn.functional.affine_grid(t_theta, list(x.shape), align_corners=align_corners)
    out = torch.nn.functional.grid_sample(x, grid, padding_mode=padding_mode,
                                          align_corners=align_corners)
    (out * torch.tensor(cot.transpose(0, 3, 1, 2))).sum().backward()
    # The control: given the same grid (our affine_grid's), the two samplers
    # give the same grid gradient, to round-off.
    exact = tf.constant(stn.affine_grid(tf.constant(theta.reshape(b, 6)), img.shape[1:3],
                                        align_corners=align_corners).numpy())
    t_grid = torch.tensor(exact.numpy(), requires_grad=True)
    out = torch.nn.functional.grid_sample(x, t_grid, padding_mode=padding_mode,
                                          align_corners=align_corners)
    (out * torch.tensor(cot.transpose(0, 3, 1, 2))).sum().backward()
    with tf.GradientTape() as tape:
        tape.watch(exact)
        loss = tf.reduce_sum(stn.grid_sample(tf.constant(img), exact, align_corners=align_corners,
                                             padding_mode=padding_mode) * cot)
    ours_grid = tape.gradient(loss, exact).numpy()
    grid_gap = np.abs(t_grid.grad.numpy() - ours_grid).max() / np.abs(ours_grid).max()
    tf_theta = tf.constant(theta.reshape(b, 6))
    with tf.GradientTape() as tape:
        tape.watch(tf_theta)
        ours = stn.spatial_transformer_network(tf.constant(img), tf_theta,
                                               align_corners=align_corners,
                                               padding_mode=padding_mode)
        loss = tf.reduce_sum(ours * cot)
    return t_theta.grad.numpy().reshape(b, 6), tape.gradient(loss, tf_theta).numpy(), grid_gap


def main():
    rng = np.random.default_rng(0)
    print("size      padding     align_corners  theta gradient: relative difference"
          "   same grid, grid gradient: max |difference| / max |gradient|")
    diffs = []
    for (h, w), padding_mode, align_corners in itertools.product(
            SIZES, ["zeros", "border", "reflection"], [False, True]):
        img = rng.uniform(0, 1, (2, h, w, 3)).astype(np.float32)
        cot = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        theirs, ours, grid_gap = theta_gradients(img, cot, align_corners, padding_mode)
        rel = np.linalg.norm(theirs - ours) / np.linalg.norm(ours)
        diffs.append(rel)
        print(f"{h}x{w:<6d} {padding_mode:11s} {str(align_corners):14s} {100 * rel:6.1f} %   {grid_gap:.2e}")
    print(f"range: {100 * min(diffs):.1f} - {100 * max(diffs):.1f} %")


if __name__ == "__main__":
    main()
