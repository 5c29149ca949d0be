"""dsnt.py against independent references: NumPy written from the definitions, dsntnn.

The NumPy references below are written directly from the definitions, for
any number of spatial axes (Gaussians in pixel units on the full grid,
np.linspace pixel centres, KL as a sum of p log p / q), not from dsnt.py's
separable/vectorised formulation. This file holds the 2-D checks and the
comparison of the kernels (_dsnt_kernels.py) with the direct maths in 2-D
and 3-D; tests/test_dsnt_volumes.py holds the other 3-D checks.
"""
import contextlib
import math

import dsntnn
import numpy as np
import pytest
import tensorflow as tf
import torch
from hypothesis import given, settings, strategies as st

import _dsnt_kernels
import dsnt
import spatial_convention

EPS = 1e-24
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
RNG = None  # a fresh generator per test: conftest.py's per_test_rng

pytestmark = pytest.mark.usefixtures("per_test_rng")


# --------------------------------------------------------------------------
# NumPy references (channels-last [B, *spatial, K], coords [B, K, n] (x, y[, z]))
# --------------------------------------------------------------------------

def spatial(a):
    """The spatial axes of maps [B, *spatial, K]."""
    return tuple(range(1, a.ndim - 1))


def np_centres(n):
    return np.linspace(-1 + 1 / n, 1 - 1 / n, n)


def np_rectify(x, method):
    x = np.asarray(x, np.float64)
    axes = spatial(x)
    if method == "softmax":
        e = np.exp(x - x.max(axis=axes, keepdims=True))
    elif method == "relu":
        e = np.maximum(x, 0)
    elif method == "abs":
        e = np.abs(x)
    elif method == "sigmoid":
        e = 1 / (1 + np.exp(-x))
    else:
        return x
    return e / e.sum(axis=axes, keepdims=True)


def np_coords(p):
    """Expected (x, y[, z]) of maps p: x along the last spatial axis, z along the first of three."""
    out = []
    for axis in reversed(spatial(p)):
        shape = [1] * p.ndim
        shape[axis] = p.shape[axis]
        out.append((p * np_centres(p.shape[axis]).reshape(shape)).sum(spatial(p)))
    return np.stack(out, axis=-1)


def np_gauss(centres, size, sigma, normalize=True):
    """Gaussians exp(-d^2 / (2 sigma^2)) on the full pixel grid of `size` ([D,] H, W).

    centres [B, K, n] normalised (x, y[, z]); d is the distance in pixels.
    """
    centres = np.asarray(centres, np.float64)
    b, k, n = centres.shape
    px = ((centres + 1) * np.array(size[::-1]) - 1) / 2         # pixels, (x, y[, z])
    index = np.indices(size).astype(np.float64)                 # [n, *size], axis order
    d2 = 0
    for j in range(n):                                          # x is the last axis
        d2 = d2 + (index[n - 1 - j][None, ..., None] - px[:, :, j].reshape(b, *[1] * n, k)) ** 2
    g = np.exp(-d2 / (2 * sigma ** 2))
    if normalize:
        g = g / (g.sum(axis=spatial(g), keepdims=True) + EPS)
    return g


def np_kl(p, q):
    return (p * (np.log(p + EPS) - np.log(q + EPS))).sum(axis=spatial(p))


def np_js(p, q):
    m = (p + q) / 2
    return 0.5 * np_kl(p, m) + 0.5 * np_kl(q, m)


def np_variance_loss(p, sigma):
    out = 0
    for axis in reversed(spatial(p)):                            # x, y[, z]
        marg = p.sum(axis=tuple(a for a in spatial(p) if a != axis))   # [B, n, K]
        n = p.shape[axis]
        v = np_centres(n)[None, :, None]
        mu = (marg * v).sum(1, keepdims=True)
        var = (marg * (v - mu) ** 2).sum(1) * (n / 2) ** 2
        out = out + (var - sigma ** 2) ** 2
    return out


def rand_heatmaps(*shape):
    return np_rectify(RNG.normal(size=shape), "softmax")


# --------------------------------------------------------------------------
# the switch between the kernels and the direct maths
# --------------------------------------------------------------------------

@contextlib.contextmanager
def kernels(on):
    """Runs dsnt with its kernels (_dsnt_kernels.py) on or off (the direct maths)."""
    if hasattr(spatial_convention, "use_kernels"):
        previous = spatial_convention.kernels_enabled()
        spatial_convention.use_kernels(on)
        try:
            yield
        finally:
            spatial_convention.use_kernels(previous)
    else:  # before spatial_convention has the switch: the kernels' own shim
        previous = _dsnt_kernels.enabled
        _dsnt_kernels.enabled = lambda: on
        try:
            yield
        finally:
            _dsnt_kernels.enabled = previous


@pytest.fixture(params=["xla", "plain", "direct"])
def impl(request):
    """Runs the test with the kernels XLA-compiled, the kernels as plain ops,
    and the direct maths (kernels off)."""
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(request.param == "xla")
    try:
        with kernels(request.param != "direct"):
            yield request.param
    finally:
        spatial_convention.set_jit(previous)


# --------------------------------------------------------------------------
# convention
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_normalized_linspace_is_pixel_centres(n):
    np.testing.assert_allclose(dsnt.normalized_linspace(n).numpy(), np_centres(n), atol=1e-7)
    assert dsnt.normalized_linspace(n, tf.float64).dtype == tf.float64


def test_pixel_normalized_conversions_known_values_and_round_trip():
    # size is (height, width), coords (x, y): x uses width 8, y height 4.
    px = np.array([[0.0, 0.0], [7.0, 3.0], [3.5, 1.5], [-0.5, -0.5]], np.float32)
    want = np.array([[-0.875, -0.75], [0.875, 0.75], [0.0, 0.0], [-1.0, -1.0]])
    norm = dsnt.pixel_to_normalized_coordinates(px, (4, 8))
    np.testing.assert_allclose(norm.numpy(), want, atol=1e-7)
    back = dsnt.normalized_to_pixel_coordinates(norm, (4, 8))
    np.testing.assert_allclose(back.numpy(), px, atol=1e-6)
    # dynamic size tensor, float64 kept, int coords -> float32
    got = dsnt.pixel_to_normalized_coordinates(px.astype(np.float64), tf.constant([4, 8]))
    assert got.dtype == tf.float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    assert dsnt.pixel_to_normalized_coordinates([[1, 1]], (2, 2)).dtype == tf.float32


def test_fwhm_sigma():
    assert dsnt.fwhm_to_sigma(FWHM_PER_SIGMA) == pytest.approx(1.0)
    assert dsnt.sigma_to_fwhm(2.0) == pytest.approx(2 * FWHM_PER_SIGMA)


# --------------------------------------------------------------------------
# dsnt values and shapes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["softmax", "relu", "abs", "sigmoid"])
def test_dsnt_multi_point_matches_numpy(method):
    x = RNG.normal(size=(3, 5, 7, 4)).astype(np.float32) * 2
    h, c = dsnt.dsnt(x, method=method)
    assert h.shape == (3, 5, 7, 4) and c.shape == (3, 4, 2)
    p = np_rectify(x, method)
    np.testing.assert_allclose(h.numpy(), p, atol=2e-7)
    np.testing.assert_allclose(c.numpy(), np_coords(p), atol=3e-7)


@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 5, 1)])
def test_dsnt_single_point_gives_seed_shapes(shape):
    x = RNG.normal(size=shape).astype(np.float32)
    h, c = dsnt.dsnt(x)
    assert h.shape == (2, 6, 5) and c.shape == (2, 2)
    p = np_rectify(x.reshape(2, 6, 5, 1), "softmax")
    np.testing.assert_allclose(h.numpy(), p[..., 0], atol=2e-7)
    np.testing.assert_allclose(c.numpy(), np_coords(p)[:, 0], atol=3e-7)


def test_normalize_heatmaps_keeps_shape():
    x = RNG.normal(size=(2, 3, 4, 1)).astype(np.float32)
    h = dsnt.normalize_heatmaps(x, method="sigmoid")
    assert h.shape == x.shape
    np.testing.assert_allclose(h.numpy(), np_rectify(x, "sigmoid"), atol=2e-7)


@pytest.mark.parametrize("row,col", [(0, 0), (3, 8), (1, 5), (2, 0)])
def test_delta_heatmap_gives_pixel_centre(row, col):
    h, w = 4, 9
    delta = np.zeros([1, h, w], np.float32)
    delta[0, row, col] = 1
    want = [(2 * col + 1) / w - 1, (2 * row + 1) / h - 1]
    np.testing.assert_allclose(dsnt.dsnt(delta, method="none")[1].numpy()[0], want, atol=1e-7)
    np.testing.assert_allclose(dsnt.heatmap_coords(delta).numpy()[0], want, atol=1e-7)
    # huge logits are a delta after softmax; relu too
    logits = np.where(delta > 0, 1e30, -1e30).astype(np.float32)
    for method in ("softmax", "relu"):
        hm, c = dsnt.dsnt(logits, method=method)
        np.testing.assert_allclose(c.numpy()[0], want, atol=1e-7)
        np.testing.assert_allclose(hm.numpy(), delta, atol=0)


def test_all_zero_relu_is_uniform_with_finite_gradient():
    x = tf.zeros([2, 3, 5, 2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        h, c = dsnt.dsnt(x, method="relu")
        loss = tf.reduce_sum(c) + tf.reduce_sum(h * h)
    g = tape.gradient(loss, x)
    np.testing.assert_allclose(h.numpy(), np.full([2, 3, 5, 2], 1 / 15), atol=1e-7)
    np.testing.assert_allclose(c.numpy(), np.zeros([2, 2, 2]), atol=1e-7)
    assert np.all(np.isfinite(g.numpy()))


@pytest.mark.parametrize("method", ["softmax", "relu", "abs", "sigmoid"])
def test_nan_input_gives_nan_not_a_silent_answer(method):
    x = np.zeros([2, 3, 3], np.float32)
    x[0, 1, 2] = np.nan
    _, c = dsnt.dsnt(x, method=method)
    assert np.all(np.isnan(c.numpy()[0]))
    np.testing.assert_allclose(c.numpy()[1], [0.0, 0.0], atol=1e-7)  # the finite map is fine


def test_minus_inf_logits_are_zero_probability():
    x = np.full([1, 3, 4], -np.inf, np.float32)
    x[0, 2, 1] = 0.0
    x[0, 0, 3] = 0.0
    h, c = dsnt.dsnt(x)
    # pixels (row 2, col 1) and (row 0, col 3), half the mass each
    want = [((2 * 1 + 1) / 4 - 1 + (2 * 3 + 1) / 4 - 1) / 2, ((2 * 2 + 1) / 3 - 1 + 1 / 3 - 1) / 2]
    np.testing.assert_allclose(c.numpy()[0], want, atol=1e-7)


def test_relu_overflow_safe():
    x = np.zeros([1, 2, 2], np.float32)
    x[0, 0, 0] = x[0, 1, 1] = 3e38        # the sum overflows float32
    h, c = dsnt.dsnt(x, method="relu")
    np.testing.assert_allclose(h.numpy()[0], [[0.5, 0], [0, 0.5]], atol=1e-7)
    np.testing.assert_allclose(c.numpy()[0], [0, 0], atol=1e-7)


def assert_rounded_from(got, want, dtype):
    """`got` (of `dtype`) is `want` computed in float32 or better and rounded
    once to `dtype`: within half an ulp of `dtype` (|want| * eps / 2) plus
    a few ulps of the computation's own round-off. Computing in half
    precision fails this (several ulps off)."""
    half_ulp = {tf.float16: 2.0 ** -11, tf.bfloat16: 2.0 ** -8}.get(dtype, 0.0)
    compute_ulp, atol = (2.0 ** -52, 1e-12) if dtype == tf.float64 else (2.0 ** -23, 1e-6)
    np.testing.assert_allclose(tf.cast(got, tf.float64).numpy(), want,
                               rtol=half_ulp + 8 * compute_ulp, atol=atol)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_dtypes_kept_and_computed_in_float32_or_better(dtype):
    """Half-precision inputs are computed in float32 and rounded once: the
    coordinates, maps and JS loss are within half an ulp of the float64
    truth (in float16 arithmetic the coordinates are several ulps off)."""
    x = tf.cast(RNG.normal(size=(4, 16, 16, 3)) * 2, dtype)
    t = tf.cast(RNG.uniform(-0.8, 0.8, size=(4, 3, 2)), dtype)
    h, c = dsnt.dsnt(x)
    assert h.dtype == dtype and c.dtype == dtype
    p = np_rectify(tf.cast(x, tf.float64).numpy(), "softmax")
    assert_rounded_from(c, np_coords(p), dtype)
    assert_rounded_from(h, p, dtype)
    js = dsnt.js_reg_loss(h, t, fwhm=2.0, reduction="none")
    assert js.dtype == dtype
    t64 = tf.cast(t, tf.float64).numpy()
    q = np_gauss(t64, (16, 16), 2.0 / FWHM_PER_SIGMA)
    assert_rounded_from(js, np_js(tf.cast(h, tf.float64).numpy(), q), dtype)


def test_integer_input_becomes_float32():
    x = np.zeros([1, 3, 3], np.int32)
    x[0, 2, 1] = 50
    h, c = dsnt.dsnt(x)
    assert h.dtype == tf.float32 and c.dtype == tf.float32
    np.testing.assert_allclose(c.numpy()[0], [0, 2 / 3], atol=1e-6)


def test_empty_batch():
    h, c = dsnt.dsnt(tf.zeros([0, 4, 4, 3]))
    assert h.shape == (0, 4, 4, 3) and c.shape == (0, 3, 2)
    assert float(dsnt.js_reg_loss(h, tf.zeros([0, 3, 2]))) == 0.0
    assert float(dsnt.euclidean_loss(c, tf.zeros([0, 3, 2]))) == 0.0


# --------------------------------------------------------------------------
# Gaussians and regularisers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fwhm", [0.5, 1.0, 3.0])
def test_make_gauss_matches_2d_reference(fwhm):
    c = RNG.uniform(-1.2, 1.2, size=(3, 2, 2))
    sigma = fwhm / FWHM_PER_SIGMA
    g = dsnt.make_gauss(c, (6, 9), fwhm=fwhm)
    assert g.shape == (3, 6, 9, 2) and g.dtype == tf.float64
    np.testing.assert_allclose(g.numpy(), np_gauss(c, (6, 9), sigma), atol=1e-12)
    g1 = dsnt.make_gauss(c[:, 0].astype(np.float32), (6, 9), fwhm=fwhm, normalize=False)
    assert g1.shape == (3, 6, 9)
    np.testing.assert_allclose(g1.numpy(), np_gauss(c[:, :1], (6, 9), sigma, False)[..., 0],
                               atol=1e-6)


def test_make_gauss_far_outside_is_zero_not_nan():
    g = dsnt.make_gauss([[50.0, 50.0]], (4, 4), fwhm=1.0)
    np.testing.assert_array_equal(g.numpy(), np.zeros([1, 4, 4]))


@pytest.mark.parametrize("fwhm", [1.0, 2.5])
@pytest.mark.parametrize("loss,ref", [("js", np_js), ("kl", np_kl)])
def test_divergences_match_numpy(loss, ref, fwhm, impl):
    p = rand_heatmaps(3, 5, 7, 2)
    t = RNG.uniform(-1, 1, size=(3, 2, 2))
    want = ref(p, np_gauss(t, (5, 7), fwhm / FWHM_PER_SIGMA))           # [B, K]
    f = getattr(dsnt, f"{loss}_reg_loss")
    got = f(p, t, fwhm=fwhm, reduction="none")
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    assert float(f(p, t, fwhm=fwhm)) == pytest.approx(want.mean(), rel=1e-9)
    assert float(f(p, t, fwhm=fwhm, reduction="sum")) == pytest.approx(want.sum(), rel=1e-9)
    # single point: [B, H, W] with [B, 2], and [B, H, W, 1] with [B, 2]
    single = f(p[..., 0], t[:, 0], fwhm=fwhm, reduction="none")
    assert single.shape == (3,)
    np.testing.assert_allclose(single.numpy(), want[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f(p[..., :1], t[:, 0], fwhm=fwhm, reduction="none").numpy(),
                               want[:, 0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss,ref", [("js", np_js), ("kl", np_kl)])
def test_divergences_float32_close_to_float64_truth(loss, ref, impl):
    """float32 stays within round-off of the exact value, also where the
    target is tiny (~1e-24, where log(q + eps) still sees it)."""
    x = RNG.normal(size=(4, 23, 31, 3)) * np.array([1, 5, 30])
    p = np_rectify(x, "softmax")
    t = RNG.uniform(-1.1, 1.1, size=(4, 3, 2))
    for fwhm in (0.5, 0.7, 2.0, 8.0):
        want = ref(p, np_gauss(t, (23, 31), fwhm / FWHM_PER_SIGMA))
        got = getattr(dsnt, f"{loss}_reg_loss")(p.astype(np.float32), t.astype(np.float32),
                                                fwhm=fwhm, reduction="none")
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=3e-6)


def test_js_of_matching_gaussian_is_zero_and_bounded(impl):
    t = np.array([[[0.1, -0.2]]])
    g = np_gauss(t, (8, 8), 2.0 / FWHM_PER_SIGMA)
    assert float(dsnt.js_reg_loss(g, t, fwhm=2.0)) == pytest.approx(0.0, abs=1e-15)
    far = np_gauss(np.array([[[-0.9, -0.9]]]), (8, 8), 1.0 / FWHM_PER_SIGMA)
    assert float(dsnt.js_reg_loss(far, np.array([[[0.9, 0.9]]]), fwhm=1.0)) == \
        pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("loss,ref", [("js", np_js), ("kl", np_kl)])
def test_divergences_extreme_cases_match_numpy(loss, ref, impl):
    """Delta heatmaps, a tiny fwhm and a target far outside the image."""
    p = np.zeros([3, 6, 5, 1])
    p[0, 2, 3] = p[1, 0, 0] = 1
    p[2] = 1 / 30
    t = np.array([[[0.1, -0.3]], [[40.0, -40.0]], [[0.9, 0.9]]])
    for fwhm in (0.05, 1.0):
        want = ref(p, np_gauss(t, (6, 5), fwhm / FWHM_PER_SIGMA))[:, 0]   # K = 1 -> [B]
        got = getattr(dsnt, f"{loss}_reg_loss")(p, t, fwhm=fwhm, reduction="none")
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    assert want[1] == pytest.approx(math.log(2) / 2 if loss == "js" else 55.262, abs=1e-3)


def test_variance_loss_matches_numpy():
    p = rand_heatmaps(2, 6, 9, 3)
    got = dsnt.variance_reg_loss(p, fwhm=2.0, reduction="none")
    want = np_variance_loss(p, 2.0 / FWHM_PER_SIGMA)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert float(dsnt.variance_reg_loss(p[..., 0], fwhm=2.0)) == pytest.approx(want[:, 0].mean())


def test_masks_follow_average_loss_semantics():
    p = rand_heatmaps(3, 5, 5, 2)
    t = RNG.uniform(-1, 1, size=(3, 2, 2))
    mask = np.array([[1, 0], [1, 1], [0, 0]], bool)
    per = np_js(p, np_gauss(t, (5, 5), 1 / FWHM_PER_SIGMA))
    want = (per * mask).sum() / mask.sum()
    assert float(dsnt.js_reg_loss(p, t, mask=mask)) == pytest.approx(want, rel=1e-9)
    # absent points may carry garbage targets: no NaN leaks through
    t_nan = t.copy()
    t_nan[~mask] = np.nan
    assert float(dsnt.js_reg_loss(p, t_nan, mask=mask)) == pytest.approx(want, rel=1e-9)
    got = dsnt.euclidean_loss(np.zeros((3, 2, 2)), t_nan, mask=mask, reduction="none")
    np.testing.assert_allclose(got.numpy(), np.linalg.norm(t, axis=-1) * mask)
    # fractional weights and an all-zero mask
    w = np.array([[0.5, 0], [1, 2], [0, 0]])
    assert float(dsnt.average_loss(per, w)) == pytest.approx((per * w).sum() / w.sum())
    assert float(dsnt.average_loss(per, np.zeros_like(w))) == 0.0
    # the denominator is clamped at 1 (dsntnn), also for small fractional weights
    small = np.zeros_like(w)
    small[0, 0] = 0.25
    assert float(dsnt.average_loss(per, small)) == pytest.approx(per[0, 0] * 0.25)
    assert float(dsnt.average_loss(per)) == pytest.approx(per.mean())


def test_coordinate_losses_match_numpy_and_tf1_mse():
    c = RNG.normal(size=(4, 3, 2)).astype(np.float32)
    t = RNG.normal(size=(4, 3, 2)).astype(np.float32)
    d = c.astype(np.float64) - t
    np.testing.assert_allclose(dsnt.euclidean_loss(c, t, reduction="none").numpy(),
                               np.sqrt((d ** 2).sum(-1)), rtol=1e-6)
    np.testing.assert_allclose(dsnt.mse_loss(c, t, reduction="none").numpy(),
                               (d ** 2).mean(-1), rtol=1e-6)
    np.testing.assert_allclose(dsnt.l1_loss(c, t, reduction="none").numpy(),
                               np.abs(d).mean(-1), rtol=1e-6)
    assert float(dsnt.mse_loss(c, t)) == pytest.approx(
        float(tf.compat.v1.losses.mean_squared_error(t, c)), rel=1e-6)
    assert float(dsnt.euclidean_loss(c[:, 0], t[:, 0])) == \
        pytest.approx(np.sqrt((d[:, 0] ** 2).sum(-1)).mean(), rel=1e-6)


# --------------------------------------------------------------------------
# gradients (numerical, float64)
# --------------------------------------------------------------------------
#
# The kernels' hand-written gradients against finite differences and against
# autodiff of independent definitions, run as plain ops: the XLA-compiled
# kernels and the direct maths are compared with these below
# (test_kernels_*), so an XLA compilation per finite-difference test would
# only cost time.


def _check_grad(f, *args, atol=1e-6, rtol=1e-5):
    theoretical, numerical = tf.test.compute_gradient(tf.function(f),
                                                      [tf.constant(a) for a in args])
    for th, nu in zip(theoretical, numerical):
        np.testing.assert_allclose(th, nu, atol=atol, rtol=rtol)


@pytest.mark.parametrize("method", ["softmax", "relu", "abs", "sigmoid"])
def test_dsnt_gradient(method, plain_ops):
    x = RNG.normal(size=(2, 3, 4, 2))
    x = np.where(np.abs(x) < 0.1, 0.5, x)    # keep relu/abs away from their kinks
    w_maps = tf.constant(RNG.normal(size=(2, 3, 4, 2)))
    w_coords = tf.constant(RNG.normal(size=(2, 2, 2)))

    def both(v):   # upstream gradients to the maps and to the coordinates at once
        h, c = dsnt.dsnt(v, method=method)
        return tf.reduce_sum(h * w_maps) + tf.reduce_sum(c * w_coords)

    _check_grad(lambda v: dsnt.dsnt(v, method=method)[1], x)
    _check_grad(lambda v: dsnt.dsnt(v, method=method)[0], x)
    _check_grad(both, x)


def test_dsnt_second_order_gradient_matches_autodiff_of_the_definition(plain_ops):
    """The softmax DSNT's hand-written gradient is itself differentiable: a
    Hessian-vector product through maps and coordinates equals plain autodiff
    of softmax + expectation."""
    x = tf.constant(RNG.normal(size=(2, 5, 6, 2)))
    v = tf.constant(RNG.normal(size=(2, 5, 6, 2)))
    w_maps = tf.constant(RNG.normal(size=(2, 5, 6, 2)))
    t = tf.constant(RNG.uniform(-0.5, 0.5, size=(2, 2, 2)))

    def definition(x):
        p = tf.reshape(tf.nn.softmax(tf.reshape(x, [2, 30, 2]), axis=1), [2, 5, 6, 2])
        xs = tf.constant((2 * np.arange(6) + 1) / 6 - 1)
        ys = tf.constant((2 * np.arange(5) + 1) / 5 - 1)
        c = tf.stack([tf.einsum("bhwk,w->bk", p, xs), tf.einsum("bhwk,h->bk", p, ys)], -1)
        return p, c

    def hessian_vector(layer):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                p, c = layer(x)
                value = tf.reduce_sum(tf.square(c - t)) + tf.reduce_sum(tf.square(p * w_maps))
            g = inner.gradient(value, x)
            s = tf.reduce_sum(g * v)
        return g, outer.gradient(s, x)

    for got, want in zip(hessian_vector(dsnt.dsnt), hessian_vector(definition)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["js", "kl"])
def test_divergence_gradient_wrt_heatmaps_and_centres(loss, plain_ops):
    logits = RNG.normal(size=(2, 4, 5, 2))
    t = RNG.uniform(-0.8, 0.8, size=(2, 2, 2))
    f = getattr(dsnt, f"{loss}_reg_loss")
    _check_grad(lambda v, c: f(dsnt.dsnt(v)[0], c, fwhm=2.0, reduction="none"), logits, t)
    # a learned width: the gradient reaches fwhm too
    _check_grad(lambda fwhm: f(dsnt.dsnt(logits)[0], t, fwhm=fwhm, reduction="none"),
                np.float64(2.0))


def test_js_second_order_gradient_matches_autodiff_of_the_definition(plain_ops):
    """JS's hand-written gradient is itself differentiable: a Hessian-vector
    product (to heatmaps and centres) equals plain autodiff of dsntnn's
    formula, with the Gaussian written out on the pixel grid."""
    p = tf.constant(rand_heatmaps(2, 5, 6, 1)[..., 0])
    c = tf.constant(RNG.uniform(-0.5, 0.5, size=(2, 2)))
    v = tf.constant(RNG.normal(size=(2, 5, 6)))
    rows, cols = np.mgrid[0:5, 0:6].astype(np.float64)
    sigma = 2.0 / FWHM_PER_SIGMA

    def definition(p, c):
        cx = ((c[:, 0] + 1) * 6 - 1) / 2      # pixels
        cy = ((c[:, 1] + 1) * 5 - 1) / 2
        d2 = tf.square(cols - cx[:, None, None]) + tf.square(rows - cy[:, None, None])
        g = tf.exp(-d2 / (2 * sigma ** 2))
        q = g / (tf.reduce_sum(g, axis=[1, 2], keepdims=True) + EPS)
        log_m = tf.math.log(0.5 * (p + q) + EPS)
        terms = p * (tf.math.log(p + EPS) - log_m) + q * (tf.math.log(q + EPS) - log_m)
        return tf.reduce_mean(0.5 * tf.reduce_sum(terms, axis=[1, 2]))

    def hessian_vector(loss):
        with tf.GradientTape() as outer:
            outer.watch([p, c])
            with tf.GradientTape() as inner:
                inner.watch([p, c])
                value = loss(p, c)
            g_p, g_c = inner.gradient(value, [p, c])
            s = tf.reduce_sum(g_p * v) + tf.reduce_sum(g_c)
        return outer.gradient(s, [p, c])

    got = hessian_vector(lambda p, c: dsnt.js_reg_loss(p, c, fwhm=2.0))
    want = hessian_vector(definition)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-9, atol=1e-9)


def test_other_gradients():
    p = rand_heatmaps(2, 4, 5, 2)
    # quartic in p with values ~100: finite differences are good to ~1e-5 relative
    _check_grad(lambda v: dsnt.variance_reg_loss(v, fwhm=1.5, reduction="none"), p,
                atol=1e-5, rtol=1e-4)
    c = RNG.normal(size=(3, 2, 2))
    t = RNG.normal(size=(3, 2, 2))
    _check_grad(lambda a: dsnt.euclidean_loss(a, t), c)
    _check_grad(lambda a: dsnt.mse_loss(a, t), c)
    _check_grad(lambda a: dsnt.make_gauss(a, (4, 5), fwhm=2.0), c * 0.5)


def test_euclidean_gradient_at_zero_distance_is_zero():
    c = tf.zeros([2, 2])
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = dsnt.euclidean_loss(c, tf.zeros([2, 2]))
    np.testing.assert_array_equal(tape.gradient(loss, c).numpy(), np.zeros([2, 2]))


# --------------------------------------------------------------------------
# the kernels (_dsnt_kernels.py) against the direct maths, 2-D and 3-D
# --------------------------------------------------------------------------

SHAPES = {"2d": (2, 5, 6, 2), "3d": (2, 3, 4, 5, 2)}


def _inputs(ndim):
    """float64 logits, centres and upstream weights for maps and coordinates."""
    shape = SHAPES[ndim]
    b, k, n = shape[0], shape[-1], len(shape) - 2
    return (tf.constant(RNG.normal(size=shape)),
            tf.constant(RNG.uniform(-0.8, 0.8, size=(b, k, n))),
            tf.constant(RNG.normal(size=shape)), tf.constant(RNG.normal(size=(b, k, n))))


@pytest.mark.parametrize("method", ["softmax", "sigmoid"])   # the two kernels of dsnt()
@pytest.mark.parametrize("ndim", ["2d", "3d"])
def test_kernels_match_the_direct_maths(ndim, method, jit):
    """Maps, coordinates, JS and the gradients of all three (to the logits,
    the centres and fwhm) with the kernels (XLA on and off) equal the direct
    maths (plain ops, autodiff) to float64 round-off."""
    x, t, w_maps, w_coords = _inputs(ndim)
    fwhm = tf.constant(2.0, tf.float64)

    def run():
        with tf.GradientTape() as tape:
            tape.watch([x, t, fwhm])
            h, c = dsnt.dsnt(x, method=method)
            js = dsnt.js_reg_loss(h, t, fwhm=fwhm, reduction="none")
            loss = tf.reduce_sum(h * w_maps) + tf.reduce_sum(c * w_coords) + tf.reduce_sum(js)
        return [h, c, js] + tape.gradient(loss, [x, t, fwhm])

    with kernels(True):
        fast = run()
    with kernels(False):
        direct = run()
    for name, f, d in zip(["maps", "coords", "js", "d/dx", "d/dcentres", "d/dfwhm"], fast, direct):
        np.testing.assert_allclose(f.numpy(), d.numpy(), rtol=1e-11, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("ndim,jit", [("2d", False), ("3d", False), ("3d", True)],
                         ids=["plain-2d", "plain-3d", "xla-3d"], indirect=["jit"])
def test_kernels_second_order_match_the_direct_maths(ndim, jit):
    """The kernels' hand-written gradients are differentiable again: a
    Hessian-vector product through the softmax DSNT and JS (to the logits
    and the centres) equals that of the direct maths. (XLA in 3-D only:
    the 2-D kernels are the same code, and each second-order XLA
    compilation costs seconds.)"""
    x, t, w_maps, _ = _inputs(ndim)
    v_x, v_t = tf.constant(RNG.normal(size=x.shape)), tf.constant(RNG.normal(size=t.shape))

    def run():
        with tf.GradientTape() as outer:
            outer.watch([x, t])
            with tf.GradientTape() as inner:
                inner.watch([x, t])
                h, c = dsnt.dsnt(x)
                value = (tf.reduce_sum(tf.square(c - t)) + tf.reduce_sum(tf.square(h * w_maps))
                         + dsnt.js_reg_loss(h, t, fwhm=2.0, reduction="sum"))
            g_x, g_t = inner.gradient(value, [x, t])
            s = tf.reduce_sum(g_x * v_x) + tf.reduce_sum(g_t * v_t)
        return [g_x, g_t] + outer.gradient(s, [x, t])

    with kernels(True):
        fast = run()
    with kernels(False):
        direct = run()
    for name, f, d in zip(["d/dx", "d/dcentres", "Hv x", "Hv centres"], fast, direct):
        np.testing.assert_allclose(f.numpy(), d.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_kernels_off_runs_plain_ops_only(monkeypatch):
    """With the kernels off no kernel and no compiled function runs: the
    layer, JS and their gradients come from the direct maths."""
    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran with the kernels off")
    for name in ("dsnt", "js_divergence"):
        monkeypatch.setattr(_dsnt_kernels, name, fail)
    monkeypatch.setattr(spatial_convention, "compiled", fail)
    x, t, _, _ = _inputs("3d")
    with kernels(False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h, c = dsnt.dsnt(x)
            loss = dsnt.js_reg_loss(h, t) + dsnt.euclidean_loss(c, t)
        assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))
    p = np_rectify(x.numpy(), "softmax")
    np.testing.assert_allclose(c.numpy(), np_coords(p), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------
# compatibility matrix: tf.function, TF1 graph + Session, XLA
# --------------------------------------------------------------------------

def _pipeline(x, t):
    h, c = dsnt.dsnt(x)
    return c, dsnt.euclidean_loss(c, t) + dsnt.js_reg_loss(h, t, fwhm=2.0) \
        + dsnt.variance_reg_loss(h, fwhm=2.0)


def _pipeline_ref(x, t):
    p = np_rectify(x, "softmax")
    c = np_coords(p)
    sigma = 2.0 / FWHM_PER_SIGMA
    loss = np.linalg.norm(c - t, axis=-1).mean() \
        + np_js(p, np_gauss(t, x.shape[1:3], sigma)).mean() \
        + np_variance_loss(p, sigma).mean()
    return c, loss


@pytest.mark.parametrize("shape", [(2, 5, 7, 3)])
def test_tf_function_unknown_dims(shape):
    fn = tf.function(_pipeline, input_signature=[
        tf.TensorSpec([None, None, None, None], tf.float32),
        tf.TensorSpec([None, None, 2], tf.float32)])
    x = RNG.normal(size=shape).astype(np.float32)
    t = RNG.uniform(-1, 1, size=(shape[0], shape[3], 2)).astype(np.float32)
    c, loss = fn(x, t)
    c_ref, loss_ref = _pipeline_ref(x, t)
    np.testing.assert_allclose(c.numpy(), c_ref, atol=3e-7)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-5)


def test_jit_compile():
    fn = tf.function(_pipeline, jit_compile=True)
    x = RNG.normal(size=(2, 6, 5, 2)).astype(np.float32)
    t = RNG.uniform(-1, 1, size=(2, 2, 2)).astype(np.float32)
    c, loss = fn(x, t)
    c_ref, loss_ref = _pipeline_ref(x, t)
    np.testing.assert_allclose(c.numpy(), c_ref, atol=3e-7)
    assert float(loss) == pytest.approx(loss_ref, rel=1e-5)


def test_tf1_graph_unknown_dims_session():
    x = RNG.normal(size=(2, 6, 5, 3)).astype(np.float32)
    t = RNG.uniform(-1, 1, size=(2, 3, 2)).astype(np.float32)
    with tf.Graph().as_default():
        xp = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
        tp = tf.compat.v1.placeholder(tf.float32, [None, None, 2])
        fwhm = tf.compat.v1.placeholder(tf.float32, [])
        h, c = dsnt.dsnt(xp)
        loss = dsnt.euclidean_loss(c, tp) + dsnt.js_reg_loss(h, tp, fwhm=fwhm) \
            + dsnt.variance_reg_loss(h, fwhm=fwhm)
        grad = tf.gradients(loss, xp)[0]
        with tf.compat.v1.Session() as sess:
            cv, lv, gv = sess.run([c, loss, grad], {xp: x, tp: t, fwhm: 2.0})
            with pytest.raises(tf.errors.InvalidArgumentError, match="fwhm"):
                sess.run(loss, {xp: x, tp: t, fwhm: -1.0})
            with pytest.raises(tf.errors.InvalidArgumentError, match="centres"):
                sess.run(loss, {xp: x, tp: t[:1], fwhm: 2.0})
    c_ref, loss_ref = _pipeline_ref(x, t)
    np.testing.assert_allclose(cv, c_ref, atol=3e-7)
    assert lv == pytest.approx(loss_ref, rel=1e-5)
    assert np.all(np.isfinite(gv)) and gv.shape == x.shape


# --------------------------------------------------------------------------
# the seed README snippets
# --------------------------------------------------------------------------

def test_seed_snippets_eager():
    my_tensor = RNG.normal(size=(2, 8, 8, 1)).astype(np.float32)
    norm_heatmaps, coords = dsnt.dsnt(my_tensor)
    p = np_rectify(my_tensor, "softmax")
    np.testing.assert_allclose(coords.numpy(), np_coords(p)[:, 0], atol=3e-7)
    norm_heatmaps, coords = dsnt.dsnt(my_tensor, method='relu')
    p = np_rectify(my_tensor, "relu")
    np.testing.assert_allclose(norm_heatmaps.numpy(), p[..., 0], atol=2e-7)
    np.testing.assert_allclose(coords.numpy(), np_coords(p)[:, 0], atol=3e-7)


def test_seed_snippet_tf1_loss():
    x = RNG.normal(size=(2, 8, 6, 1)).astype(np.float32)
    tv = RNG.uniform(-1, 1, size=(2, 2)).astype(np.float32)
    with tf.Graph().as_default():
        my_tensor = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1])
        targets = tf.compat.v1.placeholder(tf.float32, [None, 2])
        norm_heatmaps, coords = dsnt.dsnt(my_tensor)
        # Coordinate regression loss
        loss_1 = tf.compat.v1.losses.mean_squared_error(targets, coords)
        # Regularization loss
        loss_2 = dsnt.js_reg_loss(norm_heatmaps, targets, fwhm=3)
        loss = loss_1 + loss_2
        grad = tf.gradients(loss, my_tensor)[0]
        with tf.compat.v1.Session() as sess:
            l1, l2, lv, gv = sess.run([loss_1, loss_2, loss, grad], {my_tensor: x, targets: tv})
    assert gv.shape == x.shape and np.all(np.isfinite(gv))
    p = np_rectify(x, "softmax")
    c = np_coords(p)[:, 0]
    assert l1 == pytest.approx(((c - tv) ** 2).mean(), rel=1e-5)
    want2 = np_js(p, np_gauss(tv[:, None], (8, 6), 3 / FWHM_PER_SIGMA)).mean()
    assert l2 == pytest.approx(want2, rel=1e-5)
    assert lv == pytest.approx(l1 + l2, rel=1e-6)


# --------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: dsnt.dsnt(tf.zeros([1, 4, 4]), method="soft"), ValueError, "method"),
    (lambda: dsnt.dsnt(tf.zeros([1, 4, 4]), method=None), ValueError, "method"),
    (lambda: dsnt.dsnt(tf.zeros([4, 4])), ValueError, "inputs.*rank 3 or 4 or 5"),
    (lambda: dsnt.dsnt(tf.zeros([1, 2, 4, 4, 1, 1])), ValueError, "inputs.*rank 3 or 4 or 5"),
    (lambda: dsnt.dsnt(tf.zeros([1, 0, 4])), ValueError, "height"),
    (lambda: dsnt.dsnt(["a"]), TypeError, "inputs"),
    (lambda: dsnt.dsnt(tf.zeros([1, 4, 4], tf.complex64)), TypeError, "real-valued"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4, 3]), tf.zeros([2, 2])), ValueError,
     r"centres.*\[batch, K, 2\]"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4, 3]), tf.zeros([2, 2, 2])), ValueError,
     "centres"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([3, 2])), ValueError, "centres"),
    (lambda: dsnt.kl_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([2, 3])), ValueError, "centres"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([2, 2]), fwhm=0), ValueError,
     "fwhm"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([2, 2]), fwhm=tf.constant(-2.0)),
     ValueError, "fwhm"),
    (lambda: dsnt.variance_reg_loss(tf.zeros([2, 4, 4]), fwhm=float("nan")), ValueError,
     "fwhm"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 2]), (4, 4), fwhm=-1), ValueError, "fwhm"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 2]), (4, 4), fwhm=True), TypeError, "fwhm"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 3]), (4, 4)), ValueError, "centres"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 2]), (4, 4, 4)), ValueError, "size"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([2, 2]), reduction="avg"),
     ValueError, "reduction"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 4, 4]), tf.zeros([2, 2]), mask=tf.ones([3])),
     ValueError, "mask"),
    (lambda: dsnt.mse_loss(tf.zeros([2, 2]), tf.zeros([2, 3])), ValueError, "targets"),
    (lambda: dsnt.pixel_to_normalized_coordinates(tf.zeros([2, 2]), (4, 4, 4)), ValueError,
     "size"),
    (lambda: dsnt.normalized_linspace(0), ValueError, "length"),
])
def test_bad_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_unknown_rank_rejected_in_graph():
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, None)
        with pytest.raises(ValueError, match="statically known rank"):
            dsnt.dsnt(x)


# --------------------------------------------------------------------------
# agreement with the authors' dsntnn (PyTorch)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("B,H,W,K,scale,sigma,reach,impl", [
    (3, 7, 10, 2, 2.0, 1.3, 1.0, "xla"),      # the basic case
    (4, 16, 16, 1, 1.0, 1.0, 1.0, "direct"),  # one point, square
    (2, 25, 13, 3, 30.0, 0.3, 1.2, "plain"),  # peaky logits, tiny Gaussian, centres outside
    (3, 9, 31, 4, 0.1, 5.0, 1.2, "xla"),      # flat heatmaps, wide Gaussian
], indirect=["impl"])
def test_agrees_with_dsntnn(B, H, W, K, scale, sigma, reach, impl):
    x = (RNG.normal(size=(B, H, W, K)) * scale).astype(np.float32)
    t = RNG.uniform(-reach, reach, size=(B, K, 2)).astype(np.float32)
    mask = (RNG.uniform(size=(B, K)) > 0.3).astype(np.float32)
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    tt, mt = torch.tensor(t), torch.tensor(mask)
    hp = dsntnn.flat_softmax(xt)
    cp = dsntnn.dsnt(hp)
    ref = {
        "js": dsntnn.js_reg_losses(hp, tt, sigma), "kl": dsntnn.kl_reg_losses(hp, tt, sigma),
        "var": dsntnn.variance_reg_losses(hp, sigma), "euc": dsntnn.euclidean_losses(cp, tt),
        "mse": dsntnn.mse_losses(cp, tt), "l1": dsntnn.l1_losses(cp, tt)}
    total_ref = sum(dsntnn.average_loss(v, mt) for v in ref.values())
    total_ref.backward()

    xv = tf.constant(x)
    fwhm = dsnt.sigma_to_fwhm(sigma)
    tc = t[:, 0] if K == 1 else t   # the seed's [B, 2] targets for one point
    with tf.GradientTape() as tape:
        tape.watch(xv)
        h, c = dsnt.dsnt(xv)
        ours = {
            "js": dsnt.js_reg_loss(h, tc, fwhm, reduction="none"),
            "kl": dsnt.kl_reg_loss(h, tc, fwhm, reduction="none"),
            "var": dsnt.variance_reg_loss(h, fwhm, reduction="none"),
            "euc": dsnt.euclidean_loss(c, tc, reduction="none"),
            "mse": dsnt.mse_loss(c, tc, reduction="none"),
            "l1": dsnt.l1_loss(c, tc, reduction="none")}
        # per-point losses are [B] for K == 1 (seed layout), [B, K] otherwise
        total = tf.add_n([dsnt.average_loss(v, np.reshape(mask, v.shape))
                          for v in ours.values()])
    grad = tape.gradient(total, xv)

    np.testing.assert_allclose(np.reshape(h.numpy(), [B, H, W, K]),
                               hp.detach().numpy().transpose(0, 2, 3, 1), atol=1e-7)
    np.testing.assert_allclose(np.reshape(c.numpy(), [B, K, 2]), cp.detach().numpy(), atol=5e-7)
    for k, v in ref.items():
        # dsntnn's float32 KL forms q before log(q + 1e-24) and loses up to
        # ~4e-4 relative where q is tiny; ours is within 2e-6 of float64
        # (test_divergences_float32_close_to_float64_truth).
        rtol = 1e-3 if k == "kl" else 2e-6
        np.testing.assert_allclose(np.reshape(ours[k].numpy(), [B, K]), v.detach().numpy(),
                                   rtol=rtol, atol=2e-6, err_msg=k)
    assert float(total) == pytest.approx(float(total_ref.detach()), rel=2e-6)
    # float32 gradients: both are a few ulps of the gradient's scale (~5e-7
    # relative) off the float64 value where terms cancel
    grad_ref = xt.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(grad.numpy(), grad_ref, rtol=1e-5,
                               atol=1e-6 * np.abs(grad_ref).max())
    g_ref = dsntnn.make_gauss(tt, (H, W), sigma).numpy().transpose(0, 2, 3, 1)
    # float32 Gaussians with sigma 0.3 px: both are ~2e-6 from float64 near the peak
    np.testing.assert_allclose(dsnt.make_gauss(t, (H, W), fwhm).numpy(), g_ref, atol=5e-6)
    for px in ([[0.0, 0.0]], [[9.0, 6.0]], [[2.5, 3.25]]):
        np.testing.assert_allclose(
            dsnt.pixel_to_normalized_coordinates(px, (H, W)).numpy(),
            dsntnn.pixel_to_normalized_coordinates(torch.tensor(px), (H, W)).numpy(), atol=1e-7)
        np.testing.assert_allclose(
            dsnt.normalized_to_pixel_coordinates(px, (H, W)).numpy(),
            dsntnn.normalized_to_pixel_coordinates(torch.tensor(px), (H, W)).numpy(), atol=1e-6)


# --------------------------------------------------------------------------
# property: the DSNT of a delta heatmap is its pixel centre, in 2-D and 3-D
# --------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(size=st.lists(st.integers(1, 9), min_size=2, max_size=3), k=st.integers(1, 3),
       data=st.data())
def test_property_delta_heatmap_gives_its_coordinate(size, k, data):
    """A huge logit at pixel (..., row, col) of each map gives that pixel's
    centre, (x, y[, z]) = (col, row[, depth]), in normalised and pixel units."""
    pixels = [data.draw(st.tuples(*[st.integers(0, n - 1) for n in size])) for _ in range(k)]
    logits = np.full([1, *size, k], -1e4, np.float32)
    for j, index in enumerate(pixels):
        logits[(0, *index, j)] = 1e4
    _, coords = dsnt.dsnt(logits)
    want_px = np.array([index[::-1] for index in pixels], np.float64)   # (x, y[, z])
    want = (2 * want_px + 1) / np.array(size[::-1]) - 1
    np.testing.assert_allclose(np.reshape(coords.numpy(), [k, len(size)]), want, atol=1e-6)
    px = dsnt.normalized_to_pixel_coordinates(coords, size).numpy()
    np.testing.assert_allclose(np.reshape(px, [k, len(size)]), want_px, atol=1e-5)
