"""Thin-plate splines: stn.tps_grid / tps_coefficients / the "tps" family.

References: an independent NumPy float64 solve of the TPS linear system
written from its definition, affine_grid for affine point sets, finite
differences for the gradients.
"""
import numpy as np
import pytest
import tensorflow as tf

import stn

pytestmark = pytest.mark.usefixtures("per_test_rng")
RNG = np.random.default_rng(0)


def np_kernel(r2):
    return np.where(r2 > 0, r2 * np.log(np.where(r2 > 0, r2, 1.0)), 0.0)


def np_tps_grid(control, source, size, align_corners=False):
    """f(p) = sum_i w_i U(|p - c_i|^2) + a0 + ax x + ay y with f(c_i) = s_i, in float64."""
    c = np.asarray(control, np.float64)
    n = len(c)
    k = np_kernel(((c[:, None] - c[None]) ** 2).sum(-1))
    p = np.c_[np.ones(n), c]
    system = np.block([[k, p], [p.T, np.zeros((3, 3))]])
    h, w = size

    def centres(m):
        i = np.arange(m)
        if align_corners:
            return 2.0 * i / (m - 1) - 1.0 if m > 1 else np.zeros(1)
        return (2.0 * i + 1.0) / m - 1.0

    x, y = np.meshgrid(centres(w), centres(h))
    pts = np.stack([x.ravel(), y.ravel()], -1)
    features = np.c_[np_kernel(((pts[:, None] - c[None]) ** 2).sum(-1)), np.ones(len(pts)), pts]
    out = []
    for s in np.asarray(source, np.float64):
        coef = np.linalg.solve(system, np.r_[s, np.zeros((3, 2))])
        out.append((features @ coef).reshape(h, w, 2))
    return np.stack(out)


def random_points(n, batch=2, jitter=0.15):
    control = RNG.uniform(-0.9, 0.9, (n, 2))
    source = control[None] + jitter * RNG.standard_normal((batch, n, 2))
    return control.astype(np.float32), source.astype(np.float32)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n,size", [(4, (5, 7)), (9, (8, 6)), (16, (12, 12))])
def test_agrees_with_numpy_solve(n, size, align_corners):
    control, source = random_points(n)
    got = stn.tps_grid(control, source, size, align_corners=align_corners).numpy()
    want = np_tps_grid(control, source, size, align_corners)
    # float32 solve of a well-conditioned system, values of order 1.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert got.dtype == np.float32


def test_float64_agrees_to_float64_round_off():
    control, source = random_points(9)
    got = stn.tps_grid(control.astype(np.float64), source.astype(np.float64), (6, 5)).numpy()
    np.testing.assert_allclose(got, np_tps_grid(control, source, (6, 5)), rtol=0, atol=1e-12)


def test_sends_each_control_point_to_its_source_point():
    # Control points on pixel centres (align_corners=True, 5 x 5 grid at
    # normalised -1, -0.5, ..., 1) are sampled by the grid itself.
    lattice = stn.control_point_lattice(3).numpy()
    source = lattice[None] + 0.2 * RNG.standard_normal((3, 9, 2)).astype(np.float32)
    grid = stn.tps_grid(lattice, source, (5, 5), align_corners=True).numpy()
    rows = ((lattice[:, 1] + 1) * 2).astype(int)
    cols = ((lattice[:, 0] + 1) * 2).astype(int)
    np.testing.assert_allclose(grid[:, rows, cols], source, rtol=0, atol=1e-6)


def test_affine_point_sets_give_the_affine_grid():
    control = stn.control_point_lattice(4, 3).numpy()
    theta = np.array([[[0.8, 0.3, 0.1], [-0.2, 1.2, -0.3]],
                      [[1.1, -0.1, 0.0], [0.05, 0.9, 0.2]]], np.float32)
    source = np.einsum("brc,nc->bnr", theta, np.c_[control, np.ones(len(control))])
    for align_corners in (False, True):
        got = stn.tps_grid(control, source, (7, 8), align_corners=align_corners)
        want = stn.affine_grid(theta, (7, 8), align_corners=align_corners)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)


def test_batched_control_points_equal_shared_ones():
    control, source = random_points(6, batch=3)
    shared = stn.tps_grid(control, source, (4, 5))
    batched = stn.tps_grid(np.tile(control[None], (3, 1, 1)), source, (4, 5))
    np.testing.assert_allclose(batched.numpy(), shared.numpy(), rtol=0, atol=1e-6)


def test_gradients_to_source_and_control_points():
    control, source = random_points(5, batch=1)
    c = tf.constant(control.astype(np.float64))
    s = tf.constant(source.astype(np.float64))
    theoretical, numerical = tf.test.compute_gradient(
        lambda s_: stn.tps_grid(c, s_, (3, 4)), [s])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-7)
    theoretical, numerical = tf.test.compute_gradient(
        lambda c_: stn.tps_grid(c_, s, (3, 4)), [c], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-6)


def test_lattice():
    np.testing.assert_array_equal(
        stn.control_point_lattice(2, 3).numpy(),
        [[-1, -1], [0, -1], [1, -1], [-1, 1], [0, 1], [1, 1]])
    assert stn.control_point_lattice(4).shape == (16, 2)
    with pytest.raises(ValueError, match="at least 3 control points"):
        stn.control_point_lattice(1)


def test_tps_family():
    family = stn.transform_family("tps", control_points=(2, 3))
    assert family.num_params == 12
    np.testing.assert_array_equal(np.reshape(family.identity_params, (6, 2)),
                                  stn.control_point_lattice(2, 3).numpy())
    params = RNG.uniform(-1, 1, (2, 12)).astype(np.float32)
    np.testing.assert_array_equal(family.theta(params).numpy(), params.reshape(2, 6, 2))
    img = RNG.standard_normal((2, 9, 10, 3)).astype(np.float32)
    got = family.warp(img, family.theta(params), (5, 6), align_corners=False,
                      padding_mode="border", interpolation="bilinear")
    want = stn.grid_sample(img, stn.tps_grid(stn.control_point_lattice(2, 3),
                                             params.reshape(2, 6, 2), (5, 6)),
                           padding_mode="border")
    # Two float32 paths to the same sampling points (a displacement added to
    # exact pixel centres vs a normalised grid): values of order 1 with
    # gradients of a few units per pixel.
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)
    assert stn.transform_family("tps").num_params == 32     # default 4 x 4 lattice


@pytest.mark.parametrize("call,match", [
    (lambda: stn.tps_grid(np.zeros((4, 3)), np.zeros((1, 4, 2)), (3, 3)), "control_points"),
    (lambda: stn.tps_grid(np.zeros((4, 2)), np.zeros((1, 5, 2)), (3, 3)), "source_points"),
    (lambda: stn.tps_grid(np.zeros((4, 2)), np.zeros((4, 2)), (3, 3)), "source_points"),
    (lambda: stn.tps_grid(np.zeros((4, 2)), np.zeros((1, 4, 2)), (0, 3)), "size"),
    (lambda: stn.transform_family("tps", ndim=3), "2-D only"),
    (lambda: stn.transform_family("affine", control_points=4), "control_points"),
    (lambda: stn.transform_family("tps", control_points=np.zeros((2, 2))), "control_points"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
