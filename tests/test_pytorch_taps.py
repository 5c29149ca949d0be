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
import itertools

import numpy as np
import pytest
import tensorflow as tf
import torch

import spatial_convention
import stn

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


def _cases():
    """Every path (XLA on/off x kernels on/off) x dimension x convention x padding. The
    default run keeps the plain direct path for all of them and every path for two (one
    2-D, one 3-D, between them both conventions and both paddings); the rest are slow."""
    fast = {(2, False, "zeros"), (3, True, "border")}
    for jit, kernels, ndim, align_corners, padding_mode in itertools.product(
            [True, False], [True, False], [2, 3], [False, True], ["zeros", "border"]):
        keep = (not jit and not kernels) or (ndim, align_corners, padding_mode) in fast
        yield pytest.param(
            jit, kernels, ndim, align_corners, padding_mode, marks=() if keep else pytest.mark.slow,
            id=f"{'xla' if jit else 'plain'}-{'kernels' if kernels else 'direct'}-{ndim}d-"
               f"{'ac' if align_corners else 'noac'}-{padding_mode}")


@pytest.mark.parametrize("jit, kernels, ndim, align_corners, padding_mode", list(_cases()))
def test_same_taps_as_pytorch(path, jit, kernels, ndim, align_corners, padding_mode):
    path(jit, kernels)
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



@pytest.mark.parametrize("align_corners", [False, True], ids=["noac", "ac"])
def test_kink_takes_the_right_hand_difference(plain_ops, align_corners):
    """At an exact pixel position floor() picks the pixel itself with fraction 0, so the
    gradient is the difference to the upper neighbour (times pixels per unit), as PyTorch."""
    w = 9 if align_corners else 8       # pixel positions exact in float32: (w - 1) or w is 2^k
    values = np.cumsum(np.arange(w)).astype(np.float32)
    img = np.broadcast_to(values, (1, 1, w)).reshape(1, 1, w, 1).copy()
    pixels = np.arange(1, w - 1, dtype=np.float64)
    x = 2 * pixels / (w - 1) - 1 if align_corners else (2 * pixels + 1) / w - 1
    grid = np.stack([x, np.zeros_like(x)], -1).astype(np.float32).reshape(1, 1, -1, 2)
    out, grad = tf_sample(img, grid, align_corners=align_corners)
    per_unit = (w - 1) / 2 if align_corners else w / 2
    np.testing.assert_array_equal(out[0, 0, :, 0], values[1:-1])
    np.testing.assert_allclose(grad[0, 0, :, 0], np.diff(values)[1:] * per_unit, rtol=1e-6)
    torch_grad = torch_sample(img, grid, mode="bilinear", align_corners=align_corners)[1]
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-6)


@pytest.mark.parametrize("jit", [True, False], ids=["xla", "plain"])
def test_the_issues_points(path, jit):
    """y = 1.0039061 with H = 256 (PyTorch: value and gradient 0) and nearest at
    x = 1.0000001 with W = 11, zeros padding (PyTorch: the edge pixel)."""
    path(jit, spatial_convention.kernels_enabled())
    img = np.random.default_rng(0).uniform(0.5, 1.5, (1, 256, 11, 1)).astype(np.float32)
    grid = np.array([[[[0.0, 1.0039061]], [[1.0000001, 0.0]]]], np.float32)
    want, want_grad = torch_sample(img, grid, mode="bilinear", align_corners=False)
    got, got_grad = tf_sample(img, grid, align_corners=False)
    assert want[0, 0, 0, 0] == 0 and not want_grad[0, 0].any()
    np.testing.assert_array_equal(got[0, 0], want[0, 0])
    np.testing.assert_array_equal(got_grad[0, 0], want_grad[0, 0])
    want, _ = torch_sample(img, grid, mode="nearest", align_corners=False)
    got, _ = tf_sample(img, grid, interpolation="nearest", align_corners=False)
    assert want[0, 1, 0, 0] == img[0, 128, 10, 0]
    assert got[0, 1, 0, 0] == want[0, 1, 0, 0]


def rounded_in_float64(x, size, align_corners, fused):
    """The unnormalisation PyTorch's CPU kernels round, computed in float64 and
    rounded explicitly: the direct version of ``normalized_to_pixel``'s float32 one."""
    f32 = lambda v: np.asarray(v, np.float64).astype(np.float32).astype(np.float64)  # noqa: E731
    shifted = f32(x.astype(np.float64) + 1.0)
    if align_corners:
        return (shifted / 2.0 * (size - 1)).astype(np.float32)
    scaled = shifted * size if fused else f32(shifted * size)
    return (scaled - 1.0).astype(np.float32) / np.float32(2.0)


def _graph_v1(fn):
    """Runs ``fn`` in a ``tf.compat.v1`` graph with a Session (Grappler on)."""
    def run(x, size):
        with tf.Graph().as_default():
            out = fn(tf.compat.v1.placeholder(tf.float32, [None]), size)
            with tf.compat.v1.Session() as sess:
                return sess.run(out, {out.graph.get_tensor_by_name("Placeholder:0"): x})
    return run


@pytest.mark.parametrize("size", [1, 3, 11, 255, 256, 4097, 10001, 100003])
def test_unnormalisation_rounds_alike_on_every_path(size):
    """The float32 arithmetic (exact products, explicit roundings) equals the float64
    reference on every point of the scan and 20000 random ones inside the image,
    whether run eagerly, as a graph (Grappler rewrites sums), under XLA (contracts
    products into FMAs), in TF1, or with the size known only at run time. Beyond 4096
    the size is split too. (Far beyond the left edge, fused, it may differ by an ulp:
    see ``spatial_convention._scaled_minus_one``.)"""
    x = np.concatenate([axis_points(size),
                        np.random.default_rng(size).uniform(-1.0, 1.0, 20000)]).astype(np.float32)
    fn = spatial_convention.normalized_to_pixel
    paths = {
        "eager": lambda v, n, *o: fn(tf.constant(v), n, *o).numpy(),
        "graph": lambda v, n, *o: tf.function(lambda t: fn(t, n, *o))(tf.constant(v)).numpy(),
        "xla": lambda v, n, *o: tf.function(lambda t: fn(t, n, *o), jit_compile=True)(
            tf.constant(v)).numpy(),
        "run-time size": lambda v, n, *o: tf.function(lambda t, m: fn(t, m, *o))(
            tf.constant(v), tf.constant(n)).numpy(),
        "run-time size, xla": lambda v, n, *o: tf.function(lambda t, m: fn(t, m, *o), jit_compile=True)(
            tf.constant(v), tf.constant(n)).numpy(),
        "tf1": lambda v, n, *o: _graph_v1(lambda t, m: fn(t, m, *o))(v, n),
    }
    counts = {}
    for align_corners, fused in [(False, False), (False, True), (True, False)]:
        want = rounded_in_float64(x, size, align_corners, fused)
        for name, run in paths.items():
            got = run(x, size, align_corners, fused)
            counts[f"{name}, align_corners={align_corners}, fused={fused}"] = int(np.sum(got != want))
    assert counts == dict.fromkeys(counts, 0), f"differences out of {x.size}: {counts}"


def test_unnormalisation_keeps_non_finite_and_huge_coordinates():
    x = tf.constant([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e30], tf.float32)
    got = spatial_convention.normalized_to_pixel(x, 10, fused=True).numpy()
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:5], [np.inf, -np.inf, np.inf, -np.inf])
    np.testing.assert_allclose(got[5], 5e30, rtol=1e-6)
