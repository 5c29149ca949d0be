"""dsnt.py in 3-D: volumes [B, D, H, W, K] -> coordinates [B, K, 3] (x, y, z).

Against NumPy written from the definitions (the N-D references of
test_dsnt.py), hand-computed voxel centres and the authors' dsntnn (which
is N-D, channels-first [B, K, D, H, W]); then the compatibility matrix
(tf.function with unknown dims, TF1 graph + Session, XLA, dtypes) for the
3-D paths. The kernels are compared with the direct maths in 3-D in
test_dsnt.py (test_kernels_*).
"""
import dsntnn
import numpy as np
import pytest
import tensorflow as tf
import torch

import dsnt
import spatial_convention
from tests.test_compat import check, eager, flat, traced
from tests.test_dsnt import (FWHM_PER_SIGMA, assert_rounded_from, impl, np_coords,  # noqa: F401
                             np_gauss, np_js, np_kl, np_rectify, np_variance_loss)

RNG = None  # a fresh generator per test: conftest.py's per_test_rng

pytestmark = pytest.mark.usefixtures("per_test_rng")


def rand_volumes(*shape):
    return np_rectify(RNG.normal(size=shape), "softmax")


# --------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["softmax", "relu", "abs", "sigmoid", "none"])
def test_dsnt_volumes_match_numpy(method):
    x = RNG.normal(size=(2, 3, 5, 4, 3)) * 2
    if method == "none":
        x = rand_volumes(2, 3, 5, 4, 3)
    x = x.astype(np.float32).astype(np.float64)
    h, c = dsnt.dsnt(x.astype(np.float32), method=method)
    assert h.shape == (2, 3, 5, 4, 3) and c.shape == (2, 3, 3)
    p = np_rectify(x, method)
    np.testing.assert_allclose(h.numpy(), p, atol=2e-7)
    np.testing.assert_allclose(c.numpy(), np_coords(p), atol=3e-7)
    np.testing.assert_allclose(dsnt.normalize_heatmaps(x, method=method).numpy(), p, atol=1e-15)
    np.testing.assert_allclose(dsnt.heatmap_coords(p).numpy(), np_coords(p), atol=1e-15)


def test_delta_volume_gives_its_voxel_centre_as_x_y_z():
    """A delta at (depth 2, row 1, column 4) of a 3 x 4 x 5 volume is at
    x = (2*4+1)/5 - 1, y = (2*1+1)/4 - 1, z = (2*2+1)/3 - 1."""
    delta = np.zeros([1, 3, 4, 5, 1], np.float32)
    delta[0, 2, 1, 4, 0] = 1
    want = [[[0.8, -0.25, 2 / 3]]]
    np.testing.assert_allclose(dsnt.heatmap_coords(delta).numpy(), want, atol=1e-7)
    hm, c = dsnt.dsnt(np.where(delta > 0, 1e30, -1e30).astype(np.float32))
    np.testing.assert_allclose(c.numpy(), want, atol=1e-7)
    np.testing.assert_array_equal(hm.numpy(), delta)
    np.testing.assert_allclose(dsnt.normalized_to_pixel_coordinates(c, (3, 4, 5)).numpy(),
                               [[[4, 1, 2]]], atol=1e-6)


def test_one_point_volumes_keep_their_k_axis():
    """K == 1 is not squeezed in 3-D: [B, D, H, W] would read as 2-D maps."""
    x = RNG.normal(size=(2, 3, 4, 5, 1)).astype(np.float32)
    h, c = dsnt.dsnt(x)
    assert h.shape == (2, 3, 4, 5, 1) and c.shape == (2, 1, 3)
    t = RNG.uniform(-1, 1, size=(2, 1, 3)).astype(np.float32)
    assert dsnt.js_reg_loss(h, t, reduction="none").shape == (2, 1)
    assert dsnt.variance_reg_loss(h, reduction="none").shape == (2, 1)
    assert dsnt.euclidean_loss(c, t, reduction="none").shape == (2, 1)
    assert dsnt.make_gauss(t, (3, 4, 5)).shape == (2, 3, 4, 5, 1)


def test_all_zero_relu_volume_is_uniform_with_finite_gradient():
    x = tf.zeros([1, 2, 3, 4, 2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        h, c = dsnt.dsnt(x, method="relu")
        loss = tf.reduce_sum(c) + tf.reduce_sum(h * h)
    np.testing.assert_allclose(h.numpy(), np.full([1, 2, 3, 4, 2], 1 / 24), atol=1e-8)
    np.testing.assert_allclose(c.numpy(), np.zeros([1, 2, 3]), atol=1e-7)
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


# --------------------------------------------------------------------------
# Gaussians, regularisers, coordinate losses
# --------------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(), (4,), (2, 3), (2, 1, 3)], ids=str)
@pytest.mark.parametrize("size", [(5, 6), (3, 5, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("normalize", [True, False])
def test_make_gauss_takes_any_leading_axes_as_dsntnn(lead, size, normalize):
    # dsntnn draws [..., n] centres as [..., *size]; ours is the same for [n]
    # and [N, n] (e.g. its own tests' [K, 3]) and puts K last for [..., B, K, n].
    n = len(size)
    t = RNG.uniform(-1.1, 1.1, size=(*lead, n)).astype(np.float32)
    sigma = 1.3
    want = dsntnn.make_gauss(torch.tensor(t), size, sigma, normalize=normalize).numpy()
    if len(lead) >= 2:
        want = np.moveaxis(want, -(n + 1), -1)
    got = dsnt.make_gauss(t, size, fwhm=dsnt.sigma_to_fwhm(sigma), normalize=normalize)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    # unknown leading sizes in a graph: the same maps
    traced_fn = tf.function(lambda c: dsnt.make_gauss(c, size, fwhm=dsnt.sigma_to_fwhm(sigma),
                                                      normalize=normalize),
                            input_signature=[tf.TensorSpec([None] * len(lead) + [n])])
    np.testing.assert_allclose(traced_fn(t).numpy(), got.numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fwhm", [0.5, 2.0])
def test_make_gauss_volumes_match_numpy(fwhm):
    c = RNG.uniform(-1.2, 1.2, size=(2, 3, 3))
    sigma = fwhm / FWHM_PER_SIGMA
    g = dsnt.make_gauss(c, (4, 5, 6), fwhm=fwhm)
    assert g.shape == (2, 4, 5, 6, 3) and g.dtype == tf.float64
    np.testing.assert_allclose(g.numpy(), np_gauss(c, (4, 5, 6), sigma), atol=1e-14)
    peak1 = dsnt.make_gauss(c.astype(np.float32), tf.constant([4, 5, 6]), fwhm=fwhm,
                            normalize=False)
    assert peak1.dtype == tf.float32
    np.testing.assert_allclose(peak1.numpy(), np_gauss(c, (4, 5, 6), sigma, False), atol=3e-7)
    far = dsnt.make_gauss([[[50.0, -50.0, 50.0]]], (2, 3, 4))
    np.testing.assert_array_equal(far.numpy(), np.zeros([1, 2, 3, 4, 1]))


@pytest.mark.parametrize("impl", ["plain", "direct"], indirect=True)  # XLA: test_kernels_*
def test_divergences_and_variance_of_volumes_match_numpy(impl):
    p = rand_volumes(3, 4, 5, 6, 2)
    t = RNG.uniform(-1, 1, size=(3, 2, 3))
    for fwhm in (0.7, 2.5):
        sigma = fwhm / FWHM_PER_SIGMA
        q = np_gauss(t, (4, 5, 6), sigma)
        for got, want in [(dsnt.js_reg_loss(p, t, fwhm=fwhm, reduction="none"), np_js(p, q)),
                          (dsnt.kl_reg_loss(p, t, fwhm=fwhm, reduction="none"), np_kl(p, q)),
                          (dsnt.variance_reg_loss(p, fwhm=fwhm, reduction="none"),
                           np_variance_loss(p, sigma))]:
            assert got.shape == (3, 2)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    mask = np.array([[1, 0], [1, 1], [0, 0]], bool)
    want = (np_js(p, q) * mask).sum() / mask.sum()
    t_nan = np.where(mask[..., None], t, np.nan)   # absent points may carry garbage
    assert float(dsnt.js_reg_loss(p, t_nan, fwhm=2.5, mask=mask)) == pytest.approx(want, rel=1e-12)
    assert float(dsnt.js_reg_loss(p, t, fwhm=2.5, reduction="sum")) == \
        pytest.approx(np_js(p, q).sum(), rel=1e-12)


def test_divergences_of_a_volume_float32_close_to_float64_truth(impl):
    """Peaky maps, a tiny Gaussian and centres outside the volume in float32."""
    x = RNG.normal(size=(2, 5, 6, 7, 3)) * np.array([1, 5, 30])   # the shape of CASES["basic"]:
    p = np_rectify(x, "softmax")                                  # one XLA compilation less
    t = RNG.uniform(-1.1, 1.1, size=(2, 3, 3))
    for fwhm in (0.5, 3.0):
        q = np_gauss(t, (5, 6, 7), fwhm / FWHM_PER_SIGMA)
        for loss, ref in (("js", np_js), ("kl", np_kl)):
            got = getattr(dsnt, f"{loss}_reg_loss")(p.astype(np.float32), t.astype(np.float32),
                                                    fwhm=fwhm, reduction="none")
            np.testing.assert_allclose(got.numpy(), ref(p, q), rtol=2e-5, atol=3e-6, err_msg=loss)


def test_coordinate_losses_conversions_and_masks_in_3d():
    c = RNG.normal(size=(4, 3, 3))
    t = RNG.normal(size=(4, 3, 3))
    d = c - t
    np.testing.assert_allclose(dsnt.euclidean_loss(c, t, reduction="none").numpy(),
                               np.sqrt((d ** 2).sum(-1)), rtol=1e-14)
    np.testing.assert_allclose(dsnt.mse_loss(c, t, reduction="none").numpy(),
                               (d ** 2).mean(-1), rtol=1e-14)
    np.testing.assert_allclose(dsnt.l1_loss(c, t, reduction="none").numpy(),
                               np.abs(d).mean(-1), rtol=1e-14)
    w = RNG.uniform(size=(4, 3)) * (RNG.uniform(size=(4, 3)) > 0.4)
    assert float(dsnt.mse_loss(c, t, mask=w)) == \
        pytest.approx(((d ** 2).mean(-1) * w).sum() / max(w.sum(), 1), rel=1e-14)
    # size is (depth, height, width), coordinates (x, y, z): x uses 8, y 4, z 2
    px = np.array([[0.0, 0.0, 0.0], [7.0, 3.0, 1.0], [3.5, 1.5, 0.5]])
    norm = np.array([[-0.875, -0.75, -0.5], [0.875, 0.75, 0.5], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(dsnt.pixel_to_normalized_coordinates(px, (2, 4, 8)).numpy(),
                               norm, atol=1e-15)
    np.testing.assert_allclose(dsnt.normalized_to_pixel_coordinates(norm, (2, 4, 8)).numpy(),
                               px, atol=1e-15)


# --------------------------------------------------------------------------
# agreement with the authors' dsntnn (PyTorch, channels-first [B, K, D, H, W])
# --------------------------------------------------------------------------

CASES = {  # B, D, H, W, K, logit scale, sigma (px), centres' reach
    "basic": (2, 5, 6, 7, 3, 2.0, 1.3, 1.0),
    "one point, peaky, tiny Gaussian, centres outside": (2, 9, 4, 11, 1, 20.0, 0.4, 1.2),
    "flat, wide Gaussian": (1, 6, 8, 8, 2, 0.1, 3.0, 1.0),
}


@pytest.mark.parametrize("case,impl", [
    ("basic", "xla"), ("basic", "direct"),
    ("one point, peaky, tiny Gaussian, centres outside", "plain"),
    ("flat, wide Gaussian", "direct")], indirect=["impl"])
def test_agrees_with_dsntnn_in_3d(case, impl):
    B, D, H, W, K, scale, sigma, reach = CASES[case]
    x = (RNG.normal(size=(B, D, H, W, K)) * scale).astype(np.float32)
    t = RNG.uniform(-reach, reach, size=(B, K, 3)).astype(np.float32)
    mask = (RNG.uniform(size=(B, K)) > 0.3).astype(np.float32)
    xt = torch.tensor(np.ascontiguousarray(np.moveaxis(x, -1, 1)), requires_grad=True)
    tt, mt = torch.tensor(t, requires_grad=True), torch.tensor(mask)
    hp = dsntnn.flat_softmax(xt)
    cp = dsntnn.dsnt(hp)
    ref = {"js": dsntnn.js_reg_losses(hp, tt, sigma), "kl": dsntnn.kl_reg_losses(hp, tt, sigma),
           "var": dsntnn.variance_reg_losses(hp, sigma), "euc": dsntnn.euclidean_losses(cp, tt),
           "mse": dsntnn.mse_losses(cp, tt), "l1": dsntnn.l1_losses(cp, tt)}
    total_ref = sum(dsntnn.average_loss(v, mt) for v in ref.values())
    total_ref.backward()

    xv, tv = tf.constant(x), tf.constant(t)
    fwhm = dsnt.sigma_to_fwhm(sigma)
    with tf.GradientTape() as tape:
        tape.watch([xv, tv])
        h, c = dsnt.dsnt(xv)
        ours = {"js": dsnt.js_reg_loss(h, tv, fwhm, reduction="none"),
                "kl": dsnt.kl_reg_loss(h, tv, fwhm, reduction="none"),
                "var": dsnt.variance_reg_loss(h, fwhm, reduction="none"),
                "euc": dsnt.euclidean_loss(c, tv, reduction="none"),
                "mse": dsnt.mse_loss(c, tv, reduction="none"),
                "l1": dsnt.l1_loss(c, tv, reduction="none")}
        total = tf.add_n([dsnt.average_loss(v, mask) for v in ours.values()])
    grad_x, grad_t = tape.gradient(total, [xv, tv])

    np.testing.assert_allclose(h.numpy(), np.moveaxis(hp.detach().numpy(), 1, -1), atol=1e-7)
    np.testing.assert_allclose(c.numpy(), cp.detach().numpy(), atol=5e-7)
    for k, v in ref.items():
        # dsntnn's float32 KL forms q before log(q + 1e-24) and loses up to
        # ~4e-4 relative where q is tiny; ours is within 2e-5 of float64
        # (test_divergences_of_a_volume_float32_close_to_float64_truth).
        rtol = 1e-3 if k == "kl" else 2e-6
        np.testing.assert_allclose(ours[k].numpy(), v.detach().numpy(), rtol=rtol, atol=2e-6,
                                   err_msg=k)
    assert float(total) == pytest.approx(float(total_ref.detach()), rel=2e-6)
    # float32 gradients: both are a few ulps of the gradient's scale (~5e-7
    # relative) off the float64 value where terms cancel
    for got, want in ((grad_x.numpy(), np.moveaxis(xt.grad.numpy(), 1, -1)),
                      (grad_t.numpy(), tt.grad.numpy())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    g_ref = np.moveaxis(dsntnn.make_gauss(torch.tensor(t), (D, H, W), sigma).numpy(), 1, -1)
    np.testing.assert_allclose(dsnt.make_gauss(t, (D, H, W), fwhm).numpy(), g_ref, atol=5e-6)
    px = np.array([[0.0, 0.0, 0.0], [W - 1.0, H - 1.0, D - 1.0], [2.5, 1.25, 3.75]], np.float32)
    np.testing.assert_allclose(
        dsnt.pixel_to_normalized_coordinates(px, (D, H, W)).numpy(),
        dsntnn.pixel_to_normalized_coordinates(torch.tensor(px), (D, H, W)).numpy(), atol=1e-7)
    np.testing.assert_allclose(
        dsnt.normalized_to_pixel_coordinates(c, (D, H, W)).numpy(),
        dsntnn.normalized_to_pixel_coordinates(cp.detach(), (D, H, W)).numpy(), atol=2e-6)


def test_regulariser_gradients_to_heatmaps_agree_with_dsntnn_in_3d(impl):
    """JS, KL and variance differentiated to the heatmaps themselves (maps
    bounded away from zero: below ~1e-24 the kernels' JS gradient drops
    autodiff's p / (p + 1e-24) weighting, see _dsnt_kernels.js_divergence)."""
    p = rand_volumes(2, 5, 6, 7, 3).astype(np.float32)   # the shape of CASES["basic"]
    t = RNG.uniform(-1, 1, size=(2, 3, 3)).astype(np.float32)
    sigma = 1.5
    pt = torch.tensor(np.ascontiguousarray(np.moveaxis(p, -1, 1)), requires_grad=True)
    (dsntnn.js_reg_losses(pt, torch.tensor(t), sigma).sum()
     + dsntnn.kl_reg_losses(pt, torch.tensor(t), sigma).sum()
     + 1e-3 * dsntnn.variance_reg_losses(pt, sigma).sum()).backward()
    pv = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(pv)
        fwhm = dsnt.sigma_to_fwhm(sigma)
        loss = (dsnt.js_reg_loss(pv, t, fwhm, reduction="sum")
                + dsnt.kl_reg_loss(pv, t, fwhm, reduction="sum")
                + 1e-3 * dsnt.variance_reg_loss(pv, fwhm, reduction="sum"))
    np.testing.assert_allclose(tape.gradient(loss, pv).numpy(), np.moveaxis(pt.grad.numpy(), 1, -1),
                               rtol=1e-5, atol=2e-5)


# --------------------------------------------------------------------------
# compatibility matrix: tf.function with unknown dims, TF1 graph, XLA, dtypes
# --------------------------------------------------------------------------

HEAT = np.random.default_rng(5).uniform(-2, 2, (2, 3, 5, 4, 2)).astype(np.float32)
CENTRES = np.random.default_rng(6).uniform(-0.8, 0.8, (2, 2, 3)).astype(np.float32)


def _volume_paths(h, c):
    """Every 3-D path: the layer (softmax and an expectation-only method),
    the regularisers, the coordinate losses and the Gaussians."""
    heat, coords = dsnt.dsnt(h)
    return (heat, coords, dsnt.dsnt(h, method="sigmoid")[1],
            dsnt.js_reg_loss(heat, c, fwhm=2.0, reduction="none"),
            dsnt.kl_reg_loss(heat, c, reduction="none"),
            dsnt.variance_reg_loss(heat, fwhm=2.0, reduction="none"),
            dsnt.euclidean_loss(coords, c), dsnt.mse_loss(coords, c), dsnt.l1_loss(coords, c),
            dsnt.make_gauss(c, (3, 5, 4), fwhm=2.0))


@pytest.mark.parametrize("mode", ["tf.function", "tf1", "xla"])
def test_volumes_in_every_execution_mode(mode):
    """Every 3-D path gives its eager numbers and gradients (to the logits
    and the centres) in tf.function with every dim unknown, in a TF1 graph
    with None placeholders + Session, and under jit_compile=True
    (tests/test_compat.py's checks). The eager reference runs the kernels
    as plain ops (one XLA compilation less; test_dsnt.py's test_kernels_*
    compare the two)."""
    inputs, wrt = (HEAT, CENTRES), (0, 1)
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(False)
    try:
        want = eager(_volume_paths, inputs, wrt)
    finally:
        spatial_convention.set_jit(previous)
    if mode == "tf.function":
        out, grads = tf.function(traced(_volume_paths, wrt), input_signature=[
            tf.TensorSpec([None] * np.ndim(x), tf.float32) for x in inputs])(*inputs)
        got = flat(out), [np.asarray(g) for g in grads]
    elif mode == "xla":
        out, grads = tf.function(traced(_volume_paths, wrt), jit_compile=True)(*inputs)
        got = flat(out), [np.asarray(g) for g in grads]
    else:
        with tf.Graph().as_default():
            placeholders = [tf.compat.v1.placeholder(tf.float32, [None] * np.ndim(x))
                            for x in inputs]
            out, grads = traced(_volume_paths, wrt)(*placeholders)
            with tf.compat.v1.Session() as sess:
                got_out, got_grads = sess.run([tf.nest.flatten(out), grads],
                                              dict(zip(placeholders, inputs)))
        got = [np.asarray(o) for o in got_out], got_grads
    check(got, want)


def test_tf1_graph_checks_centres_against_volumes_at_run_time():
    with tf.Graph().as_default():
        hp = tf.compat.v1.placeholder(tf.float32, [None] * 5)
        cp = tf.compat.v1.placeholder(tf.float32, [None, None, 3])
        loss = dsnt.js_reg_loss(hp, cp)
        with tf.compat.v1.Session() as sess:
            sess.run(loss, {hp: rand_volumes(2, 3, 4, 5, 2), cp: CENTRES})
            with pytest.raises(tf.errors.InvalidArgumentError, match="centres"):
                sess.run(loss, {hp: rand_volumes(2, 3, 4, 5, 3), cp: CENTRES})


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_volume_dtypes_kept_and_computed_in_float32_or_better(dtype):
    x = tf.cast(RNG.normal(size=(2, 4, 8, 8, 2)) * 2, dtype)
    t = tf.cast(RNG.uniform(-0.8, 0.8, size=(2, 2, 3)), dtype)
    h, c = dsnt.dsnt(x)
    assert h.dtype == dtype and c.dtype == dtype
    p = np_rectify(tf.cast(x, tf.float64).numpy(), "softmax")
    assert_rounded_from(c, np_coords(p), dtype)
    assert_rounded_from(h, p, dtype)
    h64, t64 = tf.cast(h, tf.float64).numpy(), tf.cast(t, tf.float64).numpy()
    q = np_gauss(t64, (4, 8, 8), 2.0 / FWHM_PER_SIGMA)
    for got, want in [(dsnt.js_reg_loss(h, t, fwhm=2.0, reduction="none"), np_js(h64, q)),
                      (dsnt.variance_reg_loss(h, fwhm=2.0, reduction="none"),
                       np_variance_loss(h64, 2.0 / FWHM_PER_SIGMA)),
                      (dsnt.make_gauss(t, (4, 8, 8), fwhm=2.0), q)]:
        assert got.dtype == dtype
        assert_rounded_from(got, want, dtype)


# --------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda: dsnt.dsnt(tf.zeros([1, 0, 4, 4, 1])), ValueError,
     "inputs must have a non-empty depth"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 3, 4, 4, 2]), tf.zeros([2, 2, 2])), ValueError,
     r"centres must have shape \[batch, K, 3\] = \[2, 2, 3\] for volumes"),
    (lambda: dsnt.js_reg_loss(tf.zeros([2, 3, 4, 4, 1]), tf.zeros([2, 3])), ValueError,
     r"centres must have shape \[batch, K, 3\]"),
    (lambda: dsnt.kl_reg_loss(tf.zeros([2, 3, 4, 4, 2]), tf.zeros([3, 2, 3])), ValueError,
     "centres"),
    (lambda: dsnt.make_gauss(tf.zeros([]), (3, 4, 4)), ValueError,
     r"centres must be \[\.\.\., 3\] \(x, y, z\) for a size of 3 axes; got shape \(\)"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 1, 3]), (4, 4)), ValueError,
     "centres must be .* for a size of 2 axes"),
    (lambda: dsnt.make_gauss(tf.zeros([2, 1, 3]), (2, 3, 4, 4)), ValueError,
     r"size must be .*\(depth, height, width\)"),
    (lambda: dsnt.euclidean_loss(tf.zeros([2, 1, 3]), tf.zeros([2, 1, 2])), ValueError,
     "targets"),
])
def test_bad_volume_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
