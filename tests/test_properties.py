"""Property-based tests (Hypothesis) of the geometric invariants.

Run with ``--hypothesis-show-statistics`` to see how many cases ran. The
sampler runs as plain ops here (``stn.set_jit(False)``) so that every
generated shape does not cost an XLA compilation; test_stn.py checks that
the compiled path gives the same numbers.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsnt
import stn

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("plain_ops")


def smooth_image(rng, size, channels=2):
    """Low-frequency image: bilinear resampling errors stay small."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((1, size, size, channels))
    for c in range(channels):
        fx, fy, px, py = rng.uniform(0.5, 1.5, 4)
        out[0, :, :, c] = np.sin(2 * np.pi * fx * xx + 6 * px) * np.cos(2 * np.pi * fy * yy + 6 * py)
    return out


def near_identity(draw_params):
    a, b, c, d, tx, ty = draw_params
    return np.array([[[1 + a, b, tx], [c, 1 + d, ty]]])


small = st.floats(-0.15, 0.15)
shift = st.floats(-0.2, 0.2)
affine_params = st.tuples(small, small, small, small, shift, shift)


@SETTINGS
@given(h=st.integers(1, 12), w=st.integers(1, 12), batch=st.integers(0, 3),
       align_corners=st.booleans(), padding_mode=st.sampled_from(stn.PADDING_MODES),
       interpolation=st.sampled_from(stn.INTERPOLATIONS), seed=st.integers(0, 2 ** 16))
def test_identity_returns_the_input_exactly(h, w, batch, align_corners, padding_mode,
                                            interpolation, seed):
    img = np.random.default_rng(seed).standard_normal((batch, h, w, 2)).astype(np.float32)
    out = stn.spatial_transformer_network(img, stn.identity_theta(batch),
                                          align_corners=align_corners,
                                          padding_mode=padding_mode, interpolation=interpolation)
    np.testing.assert_array_equal(out.numpy(), img)


@SETTINGS
@given(h=st.integers(2, 12), w=st.integers(2, 12), dx=st.integers(-4, 4), dy=st.integers(-4, 4),
       align_corners=st.booleans(), interpolation=st.sampled_from(stn.INTERPOLATIONS),
       seed=st.integers(0, 2 ** 16))
def test_whole_pixel_translation_equals_an_array_shift(h, w, dx, dy, align_corners,
                                                       interpolation, seed):
    img = np.random.default_rng(seed).standard_normal((1, h, w, 3))
    per_pixel = (lambda n: 2.0 / (n - 1)) if align_corners else (lambda n: 2.0 / n)
    theta = np.array([[1.0, 0.0, dx * per_pixel(w), 0.0, 1.0, dy * per_pixel(h)]])
    out = stn.spatial_transformer_network(img, theta, align_corners=align_corners,
                                          interpolation=interpolation).numpy()
    expected = np.zeros_like(img)          # out[i, j] = img[i + dy, j + dx], zeros outside
    ys, xs = np.arange(h) + dy, np.arange(w) + dx
    vy, vx = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    expected[0][np.ix_(vy, vx)] = img[0][np.ix_(ys[vy], xs[vx])]
    if interpolation == "bicubic":
        # Cubic taps next to the border reach the padding: compare the part
        # whose 4x4 neighbourhood lies inside.
        iy, ix = np.ix_(np.where((ys >= 1) & (ys < h - 2))[0], np.where((xs >= 1) & (xs < w - 2))[0])
        np.testing.assert_allclose(out[0][iy, ix], expected[0][iy, ix], atol=1e-12)
    else:
        np.testing.assert_allclose(out, expected, atol=1e-12)


def interior_mask(theta, size, margin):
    """Output pixels whose sample point lies at least `margin` pixels inside."""
    grid = stn.affine_grid(theta, (size, size)).numpy()[0]
    px = stn.normalized_to_pixel(grid, size).numpy()
    return np.all((px >= margin) & (px <= size - 1 - margin), axis=-1)


@SETTINGS
@given(first=affine_params, second=affine_params, seed=st.integers(0, 2 ** 16))
def test_two_warps_equal_one_warp_by_the_composition(first, second, seed):
    size = 48
    img = smooth_image(np.random.default_rng(seed), size)
    a, b = near_identity(first), near_identity(second)
    composed = stn.compose_affine(a, b)
    twice = stn.spatial_transformer_network(stn.spatial_transformer_network(img, a), b).numpy()
    once = stn.spatial_transformer_network(img, composed).numpy()
    # Away from the borders: the composed point and the intermediate point
    # (where the second warp reads the first's output) are inside.
    mask = interior_mask(composed, size, 2) & interior_mask(b, size, 2)
    assert mask.sum() > 0.2 * size * size
    np.testing.assert_allclose(twice[0][mask], once[0][mask], atol=0.02)


@SETTINGS
@given(params=affine_params, seed=st.integers(0, 2 ** 16))
def test_warp_then_inverse_restores_the_interior(params, seed):
    size = 48
    img = smooth_image(np.random.default_rng(seed), size)
    theta = near_identity(params)
    inverse = stn.invert_affine(theta)
    back = stn.spatial_transformer_network(stn.spatial_transformer_network(img, theta),
                                           inverse).numpy()
    mask = interior_mask(inverse, size, 2) & interior_mask(
        stn.compose_affine(theta, inverse), size, 2)
    assert mask.sum() > 0.2 * size * size
    np.testing.assert_allclose(back[0][mask], img[0][mask], atol=0.02)
    np.testing.assert_allclose(stn.compose_affine(theta, inverse).numpy(),
                               np.eye(2, 3)[None], atol=1e-12)


@SETTINGS
@given(h=st.integers(1, 16), w=st.integers(1, 16), k=st.integers(1, 4), data=st.data())
def test_dsnt_of_a_delta_heatmap_is_its_pixel_centre(h, w, k, data):
    rows = data.draw(st.lists(st.integers(0, h - 1), min_size=k, max_size=k))
    cols = data.draw(st.lists(st.integers(0, w - 1), min_size=k, max_size=k))
    heat = np.zeros((1, h, w, k), np.float32)
    heat[0, rows, cols, range(k)] = 1.0
    expected = np.stack([(2 * np.array(cols) + 1) / w - 1, (2 * np.array(rows) + 1) / h - 1], -1)
    _, coords = dsnt.dsnt(heat, method="none")
    np.testing.assert_allclose(np.reshape(coords.numpy(), (k, 2)), expected, atol=1e-6)
    # A huge logit under softmax is a delta too.
    _, coords = dsnt.dsnt(heat * 1e4, method="softmax")
    np.testing.assert_allclose(np.reshape(coords.numpy(), (k, 2)), expected, atol=1e-6)
    # And the STN samples exactly that pixel at DSNT's coordinate.
    img = np.random.default_rng(h * w).standard_normal((1, h, w, 1))
    point = np.reshape(expected[0], (1, 1, 1, 2))
    np.testing.assert_allclose(stn.grid_sample(img, point).numpy().item(),
                               img[0, rows[0], cols[0], 0], atol=1e-12)
