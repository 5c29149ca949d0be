"""The same grid reads the same taps as PyTorch's grid_sample.

Bilinear sampling has a kink at every pixel position; there the grid
gradient is one-sided, and which side is taken depends on ``floor()`` of the
unnormalised coordinate, so on its rounding. Likewise ``nearest`` picks its
pixel by rounding the unnormalised coordinate. The grids below are the
float32 normalised coordinates of the pixel centres and edges of each axis
(both conventions) and their +-1 and +-2-ulp neighbours, where any
difference in the unnormalisation's rounding shows. The tests count the
entries that differ from ``torch.nn.functional.grid_sample`` (float32) by
more than round-off: a different tap gives an O(1)-relative difference in the
gradient, so the count is the signal, not a maximum.
"""
import numpy as np
import pytest
import tensorflow as tf
import torch

import spatial_convention
import stn

pytestmark = pytest.mark.usefixtures("jit")

SIZES = {2: (256, 11), 3: (5, 12, 9)}      # (H, W) and (D, H, W)
ULPS = (-2, -1, 0, 1, 2)
ROUND_OFF = 8 * np.finfo(np.float32).eps  # per entry, relative to the entry's scale


def _nudged(values, ulps):
    out = values.astype(np.float32)
    step = np.float32(np.inf if ulps > 0 else -np.inf)
    for _ in range(abs(ulps)):
        out = np.nextafter(out, step)
    return out


def axis_points(size):
    """Float32 normalised coordinates of the pixel centres and edges of an axis
    (both conventions, from one pixel outside to one pixel outside) and their
    +-1, +-2-ulp neighbours."""
    pixels = np.arange(-3, 2 * size + 2) / 2.0          # centres and edges, -1.5 ... size + 0.5
    exact = np.concatenate([(2 * pixels + 1) / size - 1,
                            2 * pixels / max(size - 1, 1) - 1])
    return np.unique(np.concatenate([_nudged(exact, u) for u in ULPS]))


def scan_grid(sizes):
    """``[1, N, 1, ndim]`` (2-D) or ``[1, N, 1, 1, ndim]`` (3-D): every axis
    runs through its points; the shorter lists are cycled with coprime strides."""
    points = [axis_points(n) for n in reversed(sizes)]    # x first
    count = max(len(p) for p in points)
    columns = [p[(np.arange(count) * (2 * k + 1)) % len(p)] for k, p in enumerate(points)]
    grid = np.stack(columns, -1).astype(np.float32)
    return grid.reshape((1, count) + (1,) * (len(sizes) - 1) + (len(sizes),))


def torch_sample(img, grid, **options):
    ti = torch.tensor(np.moveaxis(img, -1, 1))
    tg = torch.tensor(grid).requires_grad_(True)
    out = torch.nn.functional.grid_sample(ti, tg, **options)
    out.sum().backward()
    return np.moveaxis(out.detach().numpy(), 1, -1), tg.grad.numpy()


def tf_sample(img, grid, **options):
    g = tf.constant(grid)
    with tf.GradientTape() as tape:
        tape.watch(g)
        out = stn.grid_sample(tf.constant(img), g, **options)
    return out.numpy(), tape.gradient(out, g).numpy()


def mismatches(ours, theirs, scale):
    return int(np.sum(np.abs(ours - theirs) > ROUND_OFF * scale))


@pytest.fixture(params=[True, False], ids=["kernels", "direct"])
def kernels(request):
    previous = spatial_convention.kernels_enabled()
    spatial_convention.use_kernels(request.param)
    yield request.param
    spatial_convention.use_kernels(previous)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True], ids=["noac", "ac"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_same_taps_as_pytorch(kernels, ndim, align_corners, padding_mode):
    sizes = SIZES[ndim]
    rng = np.random.default_rng(ndim)
    img = rng.uniform(0.5, 1.5, (1,) + sizes + (1,)).astype(np.float32)
    grid = scan_grid(sizes)
    counts = {}
    for mode in ("bilinear", "nearest"):
        options = dict(align_corners=align_corners, padding_mode=padding_mode)
        want, want_grad = torch_sample(img, grid, mode=mode, **options)
        got, got_grad = tf_sample(img, grid, interpolation=mode, **options)
        counts[f"{mode} forward"] = mismatches(got, want, 1.5)
        if mode == "bilinear":
            # the grid gradient is a tap difference times the half extent
            half = np.array([n / 2 for n in reversed(sizes)], np.float32)
            counts["bilinear grid gradient"] = mismatches(got_grad, want_grad, 1.5 * half)
    assert counts == dict.fromkeys(counts, 0), f"mismatches out of {grid[..., 0].size}: {counts}"

