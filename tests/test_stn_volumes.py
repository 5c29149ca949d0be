"""Volumes: stn's 5-D sampler, affine grids and 3-D transforms against independent references.

References: PyTorch's 5-D ``grid_sample`` / ``affine_grid`` (forward and
gradients, every mode), SciPy's ``ndimage.map_coordinates`` (orders 0 and
1 with the matching boundary modes), ``scipy.spatial.transform.Rotation``
and ``scipy.linalg.expm``.
"""
import itertools

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import tensorflow as tf
import torch
from scipy.spatial.transform import Rotation

import stn

pytestmark = pytest.mark.usefixtures("per_test_rng")
RNG = np.random.default_rng(0)

MODES = list(itertools.product([False, True], stn.PADDING_MODES, ["bilinear", "nearest"]))
MODE_IDS = [f"{'ac' if a else 'noac'}-{p}-{i}" for a, p, i in MODES]


def to_torch(volume):
    """[B, D, H, W, C] -> [B, C, D, H, W]."""
    return torch.tensor(volume).permute(0, 4, 1, 2, 3)


def from_torch(volume):
    return volume.permute(0, 2, 3, 4, 1).detach().numpy()


def torch_grid_sample_3d(vol, grid, dy, **kw):
    tv = to_torch(vol).requires_grad_(True)
    tg = torch.tensor(grid).requires_grad_(True)
    out = torch.nn.functional.grid_sample(tv, tg, **kw)
    out.backward(to_torch(dy))
    return from_torch(out), from_torch(tv.grad), tg.grad.numpy()


@pytest.mark.parametrize("align_corners,padding_mode,interpolation", MODES, ids=MODE_IDS)
def test_grid_sample_5d_matches_torch_float64(align_corners, padding_mode, interpolation):
    vol = RNG.standard_normal((2, 4, 5, 6, 3))
    grid = RNG.uniform(-1.6, 1.6, (2, 3, 4, 5, 3))    # well outside, every padding rule
    dy = RNG.standard_normal((2, 3, 4, 5, 3))
    want_out, want_dvol, want_dgrid = torch_grid_sample_3d(
        vol, grid, dy, mode=interpolation, padding_mode=padding_mode, align_corners=align_corners)
    v, g = tf.constant(vol), tf.constant(grid)
    with tf.GradientTape() as tape:
        tape.watch([v, g])
        out = stn.grid_sample(v, g, align_corners=align_corners, padding_mode=padding_mode,
                              interpolation=interpolation)
    dvol, dgrid = tape.gradient(out, [v, g], output_gradients=tf.constant(dy))
    np.testing.assert_allclose(out.numpy(), want_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dvol.numpy(), want_dvol, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dgrid.numpy(), want_dgrid, rtol=0, atol=1e-11)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior")
@pytest.mark.parametrize("out_dims", [None, (3, 5, 4), (1, 1, 1)], ids=str)
@pytest.mark.parametrize("align_corners,padding_mode,interpolation", MODES, ids=MODE_IDS)
def test_transformer_5d_matches_torch_float32(align_corners, padding_mode, interpolation,
                                              out_dims):
    vol = RNG.standard_normal((2, 5, 6, 7, 2)).astype(np.float32)
    theta = (np.eye(3, 4) + RNG.normal(0, 0.25, (2, 3, 4))).astype(np.float32)
    size = out_dims or vol.shape[1:4]
    dy = RNG.standard_normal((2,) + tuple(size) + (2,)).astype(np.float32)
    tt = torch.tensor(theta).requires_grad_(True)
    tgrid = torch.nn.functional.affine_grid(tt, (2, 2) + tuple(size), align_corners=align_corners)
    tv = to_torch(vol).requires_grad_(True)
    tout = torch.nn.functional.grid_sample(tv, tgrid, mode=interpolation,
                                           padding_mode=padding_mode, align_corners=align_corners)
    tout.backward(to_torch(dy))
    v, t = tf.constant(vol), tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch([v, t])
        out = stn.spatial_transformer_network(v, t, out_dims, align_corners=align_corners,
                                              padding_mode=padding_mode,
                                              interpolation=interpolation)
    dvol, dtheta = tape.gradient(out, [v, t], output_gradients=tf.constant(dy))
    # float32: both sides round; values are O(1) sums of a few products.
    np.testing.assert_allclose(out.numpy(), from_torch(tout), rtol=0, atol=2e-5)
    np.testing.assert_allclose(dvol.numpy(), from_torch(tv.grad), rtol=0, atol=2e-5)
    # theta's gradient sums over every output voxel.
    np.testing.assert_allclose(dtheta.numpy(), tt.grad.numpy(), rtol=2e-4, atol=2e-4)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior")
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_5d_matches_torch(align_corners):
    theta = np.eye(3, 4) + RNG.normal(0, 0.3, (3, 3, 4))
    want = torch.nn.functional.affine_grid(torch.tensor(theta), (3, 1, 4, 5, 6),
                                           align_corners=align_corners).numpy()
    got = stn.affine_grid(theta, (4, 5, 6), align_corners=align_corners).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    flat = stn.affine_grid(theta.reshape(3, 12), (4, 5, 6), align_corners=align_corners)
    np.testing.assert_array_equal(flat.numpy(), got)


@pytest.mark.parametrize("size", [(1, 1, 1), (2, 3, 4), (5, 5, 5), (6, 7, 8)], ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_is_exact_in_3d(size, align_corners):
    vol = RNG.standard_normal((2,) + size + (3,)).astype(np.float32)
    for theta in (stn.identity_theta(2, ndim=3), tf.reshape(stn.identity_theta(2, ndim=3), [2, 12])):
        out = stn.spatial_transformer_network(vol, theta, align_corners=align_corners)
        np.testing.assert_array_equal(out.numpy(), vol)
    out = stn.warp(vol, tf.zeros((2,) + size + (3,)), align_corners=align_corners)
    np.testing.assert_array_equal(out.numpy(), vol)


SCIPY_MODES = {("zeros", False): "grid-constant", ("zeros", True): "grid-constant",
               ("border", False): "nearest", ("border", True): "nearest",
               ("reflection", False): "reflect", ("reflection", True): "mirror"}


@pytest.mark.parametrize("interpolation,order", [("bilinear", 1), ("nearest", 0)])
@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_5d_matches_scipy(interpolation, order, padding_mode, align_corners):
    vol = RNG.standard_normal((1, 5, 6, 7, 1))
    grid = RNG.uniform(-1.4, 1.4, (1, 4, 3, 5, 3))
    out = stn.grid_sample(vol, grid, align_corners=align_corners, padding_mode=padding_mode,
                          interpolation=interpolation).numpy()[0, ..., 0]
    pixels = []
    for axis, n in zip(range(3), (7, 6, 5)):   # x along W, y along H, z along D
        g = grid[0, ..., axis]
        pixels.append((g + 1) / 2 * (n - 1) if align_corners else ((g + 1) * n - 1) / 2)
    want = scipy.ndimage.map_coordinates(vol[0, ..., 0], [pixels[2], pixels[1], pixels[0]],
                                         order=order, mode=SCIPY_MODES[padding_mode, align_corners])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)


def test_bicubic_is_2d_only():
    with pytest.raises(ValueError, match="bicubic.*2-D only"):
        stn.grid_sample(tf.zeros([1, 2, 2, 2, 1]), tf.zeros([1, 1, 1, 1, 3]),
                        interpolation="bicubic")


# ------------------------------------------------------------------ 3-D transforms

def test_3d_transform_families_against_their_definitions():
    p = RNG.normal(0, 0.4, (3, 12))
    np.testing.assert_array_equal(stn.affine_theta(p).numpy(), p.reshape(3, 3, 4))
    for t, q in zip(stn.affine_diffeomorphic_theta(p).numpy(), p):
        generator = np.vstack([q.reshape(3, 4), np.zeros(4)])
        np.testing.assert_allclose(t, scipy.linalg.expm(generator)[:3], rtol=0, atol=1e-12)
    a = RNG.normal(0, 0.4, (3, 4))
    want = np.concatenate([a[:, 0, None, None] * np.eye(3), a[:, 1:, None]], -1)
    np.testing.assert_allclose(stn.attention_theta(a).numpy(), want, rtol=0, atol=0)
    s = RNG.normal(0, 0.6, (3, 7))
    got = stn.similarity_theta(s).numpy()
    for g, q in zip(got, s):
        r = Rotation.from_rotvec(q[1:4]).as_matrix()
        np.testing.assert_allclose(g, np.c_[q[0] * r, q[4:]], rtol=0, atol=1e-12)
    proj = RNG.normal(0, 0.1, (2, 15)) + np.eye(4).ravel()[:15]
    np.testing.assert_array_equal(stn.projective_theta(proj).numpy(),
                                  np.c_[proj, np.ones(2)].reshape(2, 4, 4))


def test_rotations_match_scipy():
    v = RNG.normal(0, 1.0, (4, 3))
    v[0] = 0.0          # the identity
    v[1] = [1e-9, 0, 0]  # tiny: the series, not 0 / 0
    got = stn.rotation_theta(v, scale=2.0, translation=(0.1, 0.2, 0.3)).numpy()
    for g, rv in zip(got, v):
        np.testing.assert_allclose(g[:, :3], 2.0 * Rotation.from_rotvec(rv).as_matrix(),
                                   rtol=0, atol=1e-12)
        np.testing.assert_array_equal(g[:, 3], [0.1, 0.2, 0.3])
    angles = RNG.uniform(-np.pi, np.pi, (5, 3))
    got = stn.euler_rotation_theta(angles).numpy()
    want = Rotation.from_euler("xyz", angles).as_matrix()
    np.testing.assert_allclose(got[..., :3], want, rtol=0, atol=1e-12)


def test_rotation_gradient_at_zero_is_finite_and_right():
    v = tf.constant(np.zeros((1, 3)))
    theoretical, numerical = tf.test.compute_gradient(lambda v_: stn.rotation_theta(v_), [v],
                                                      delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-9)
    assert np.isfinite(theoretical[0]).all()


def test_3d_rotation_of_a_volume_moves_content_as_theta_says():
    # A quarter turn about z maps output (x, y, z) to input (-y, x, z).
    vol = RNG.standard_normal((1, 3, 4, 4, 1))
    theta = stn.rotation_theta(np.array([[0.0, 0.0, np.pi / 2]]))
    out = stn.spatial_transformer_network(vol, theta).numpy()
    # output row i, column j <- input row j, column n - 1 - i: numpy's rot90.
    want = np.rot90(vol, k=1, axes=(2, 3))
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_invert_and_compose_in_3d():
    a = np.eye(3, 4) + RNG.normal(0, 0.2, (2, 3, 4))
    b = np.eye(3, 4) + RNG.normal(0, 0.2, (2, 3, 4))
    h = lambda m: np.concatenate([m, np.tile([[[0, 0, 0, 1.0]]], (len(m), 1, 1))], 1)
    np.testing.assert_allclose(stn.invert_affine(a).numpy(), np.linalg.inv(h(a))[:, :3],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(stn.compose_affine(a, b).numpy(), (h(a) @ h(b))[:, :3],
                               rtol=0, atol=1e-12)
    p = np.eye(4) + RNG.normal(0, 0.05, (2, 4, 4))
    p /= p[:, 3:, 3:]
    inv = stn.invert_affine(p).numpy()
    want = np.linalg.inv(p)
    np.testing.assert_allclose(inv, want / want[:, 3:, 3:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"second must have shape \[B, 12\]"):
        stn.compose_affine(a, np.eye(2, 3)[None])


@pytest.mark.parametrize("transform", sorted(set(stn.TRANSFORMS) - {"tps"}))
def test_every_family_has_a_3d_identity(transform):
    family = stn.transform_family(transform, 3)
    theta = family.theta(tf.constant([family.identity_params]))
    rows = theta.shape[1]
    np.testing.assert_allclose(theta.numpy()[0], np.eye(4)[:rows], rtol=0, atol=1e-15)
    vol = RNG.standard_normal((1, 3, 4, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(family.warp(vol, theta).numpy(), vol)


def test_constraints_in_3d():
    c = stn.AffineWarpConstraints.translation_only(ndim=3)
    assert c.num_free_params == 3 and c.ndim == 3
    theta = c.theta([[0.1, 0.2, 0.3]]).numpy()
    np.testing.assert_array_equal(theta, [np.c_[np.eye(3), np.float32([0.1, 0.2, 0.3])]])
    family = stn.transform_family("affine", 3, constraints=c)
    assert family.num_params == 3
    with pytest.raises(ValueError, match="constraints are 3-D"):
        stn.transform_family("affine", 2, constraints=c)


@pytest.mark.parametrize("call,match", [
    (lambda: stn.spatial_transformer_network(tf.zeros([1, 2, 2, 2, 1]), tf.zeros([1, 6])),
     r"theta must have shape \[B, 12\] or \[B, 3, 4\]"),
    (lambda: stn.spatial_transformer_network(tf.zeros([1, 2, 2, 1]), tf.zeros([1, 3, 4])),
     r"theta must have shape \[B, 6\] or \[B, 2, 3\]"),
    (lambda: stn.spatial_transformer_network(tf.zeros([1, 2, 2, 2, 1]), tf.zeros([1, 12]),
                                             (2, 2)), "out_dims"),
    (lambda: stn.grid_sample(tf.zeros([1, 2, 2, 2, 1]), tf.zeros([1, 1, 1, 1, 2])),
     r"grid must have shape \[B, Do, Ho, Wo, 3\]"),
    (lambda: stn.grid_sample(tf.zeros([1, 2, 2, 2, 1]), tf.zeros([1, 1, 1, 3])), "grid must have rank 5"),
    (lambda: stn.affine_grid(tf.zeros([1, 3, 4]), (2, 2)), "theta"),
    (lambda: stn.transform_family("tps", 3), "2-D"),
    (lambda: stn.similarity_theta(tf.zeros([1, 5])), r"\[B, 4\] \(2-D\) or \[B, 7\] \(3-D\)"),
    (lambda: stn.rotation_theta(tf.zeros([1, 2])), "axis-angle"),
])
def test_bad_3d_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
