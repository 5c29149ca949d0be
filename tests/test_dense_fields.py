"""Dense displacement fields: stn.warp, integrate_velocity, compose_displacements,
jacobian_determinant and the unit/resolution helpers.

References: SciPy's ndimage.map_coordinates (warping, and a NumPy
scaling-and-squaring written with it), numpy.gradient, hand-computed
fields, and finite differences.
"""
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

import stn

pytestmark = pytest.mark.usefixtures("per_test_rng")
RNG = np.random.default_rng(0)


def smooth_field(shape, amplitude, sigma=2.0):
    """A smooth random displacement [B, *spatial, n] (Gaussian-filtered noise)."""
    batch, *spatial = shape
    n = len(spatial)
    comps = [scipy.ndimage.gaussian_filter(RNG.standard_normal(spatial), sigma)
             for _ in range(batch * n)]
    field = np.stack(comps).reshape(batch, n, *spatial)
    field = np.moveaxis(field, 1, -1)
    return amplitude * field / np.abs(field).max()


def np_warp(image, displacement, order=1, mode="nearest"):
    """image [B, *spatial, C] sampled at identity + displacement (pixels, x first)."""
    out = []
    for img, d in zip(image, displacement):
        spatial = d.shape[:-1]
        n = len(spatial)
        grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij")
        # grid[k] runs along tensor axis k, which is coordinate n - 1 - k (x last).
        coords = [grid[k] + d[..., n - 1 - k] for k in range(n)]
        out.append(np.stack([scipy.ndimage.map_coordinates(img[..., c], coords, order=order,
                                                           mode=mode)
                             for c in range(img.shape[-1])], -1))
    return np.stack(out)


@pytest.mark.parametrize("shape", [(2, 9, 11, 2), (1, 5, 6, 7, 2)], ids=["2d", "3d"])
@pytest.mark.parametrize("interpolation,order", [("bilinear", 1), ("nearest", 0)])
@pytest.mark.parametrize("padding_mode,mode", [("border", "nearest"), ("zeros", "grid-constant")])
def test_warp_matches_scipy(shape, interpolation, order, padding_mode, mode):
    image = RNG.standard_normal(shape)
    displacement = smooth_field(shape[:-1], 3.0) + 0.3 * RNG.standard_normal(shape[:-1] + (len(shape) - 2,))
    got = stn.warp(image, displacement, padding_mode=padding_mode, interpolation=interpolation)
    np.testing.assert_allclose(got.numpy(), np_warp(image, displacement, order, mode),
                               rtol=0, atol=1e-12)


def test_warp_float32_and_normalized_units():
    image = RNG.standard_normal((2, 8, 10, 3)).astype(np.float32)
    pixels = (2.0 * RNG.standard_normal((2, 8, 10, 2))).astype(np.float32)
    want = np_warp(image.astype(np.float64), pixels.astype(np.float64))
    got = stn.warp(image, pixels)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    normalized = pixels / np.array([10 / 2, 8 / 2], np.float32)     # one unit = n / 2 pixels
    got = stn.warp(image, normalized, units="normalized")
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)
    np.testing.assert_allclose(stn.displacement_to_normalized(pixels).numpy(), normalized,
                               rtol=1e-6)
    np.testing.assert_allclose(stn.displacement_to_pixels(normalized).numpy(), pixels, rtol=1e-6)


def test_warp_with_a_field_of_another_size_samples_the_same_normalised_positions():
    image = RNG.standard_normal((1, 8, 8, 1))
    zero = np.zeros((1, 4, 4, 2))
    # A zero field on a 4 x 4 grid is the identity of the normalised
    # coordinates: grid_sample at the 4 x 4 pixel centres.
    grid = stn.affine_grid(stn.identity_theta(1, tf.float64), (4, 4))
    np.testing.assert_allclose(stn.warp(image, zero).numpy(),
                               stn.grid_sample(image, grid, padding_mode="border").numpy(),
                               rtol=0, atol=1e-12)


def test_warp_gradients_match_finite_differences():
    image = tf.constant(RNG.standard_normal((1, 5, 6, 2)))
    field = tf.constant(smooth_field((1, 4, 5), 1.5) + 0.25)   # off the pixel grid
    theoretical, numerical = tf.test.compute_gradient(lambda i, d: stn.warp(i, d), [image, field],
                                                      delta=1e-6)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 5, 6), (1, 3, 4, 5)], ids=["2d", "3d"])
def test_integrate_velocity_gradients_match_finite_differences(shape, jit):
    # The field samples itself (warp(d, d)): its gradient flows through the
    # image and the coordinates at once, and must be counted once, compiled
    # or as plain ops (where both arguments are the same eager tensor).
    velocity = tf.constant(smooth_field(shape, 1.5) + 0.25)
    theoretical, numerical = tf.test.compute_gradient(
        lambda v: stn.integrate_velocity(v, steps=2), [velocity], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("field_shape,size", [((2, 8, 10, 2), (16, 10)),
                                              ((1, 3, 4, 5, 3), (6, 7, 9))], ids=["2d", "3d"])
def test_unit_conversions_with_an_explicit_size(field_shape, size, align_corners):
    # size is (height, width) or (depth, height, width); x is scaled by the
    # width, y by the height, z by the depth: pixels per unit n/2 or (n-1)/2.
    pixels = RNG.standard_normal(field_shape)
    n = np.array(size[::-1], np.float64)
    half = (n - 1) / 2 if align_corners else n / 2
    normalized = stn.displacement_to_normalized(pixels, size=size, align_corners=align_corners)
    np.testing.assert_allclose(normalized.numpy(), pixels / half, rtol=1e-12, atol=0)
    back = stn.displacement_to_pixels(normalized, size=size, align_corners=align_corners)
    np.testing.assert_allclose(back.numpy(), pixels, rtol=1e-12, atol=1e-15)


def np_scaling_and_squaring(velocity, steps):
    d = velocity / 2.0 ** steps
    for _ in range(steps):
        d = d + np_warp(d, d)
    return d


@pytest.mark.parametrize("shape", [(2, 16, 12), (1, 8, 9, 10)], ids=["2d", "3d"])
def test_integrate_velocity_matches_numpy_scaling_and_squaring(shape):
    velocity = smooth_field(shape, 4.0)
    got = stn.integrate_velocity(velocity, steps=6).numpy()
    np.testing.assert_allclose(got, np_scaling_and_squaring(velocity, 6), rtol=0, atol=1e-10)


def test_integrate_velocity_of_a_constant_field_is_a_translation():
    v = np.full((1, 6, 6, 2), 0.75)
    np.testing.assert_allclose(stn.integrate_velocity(v).numpy(), v, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stn.integrate_velocity(v, steps=0).numpy(), v)


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 16, 16, 16)], ids=["2d", "3d"])
def test_inverse_consistency(shape):
    """Integrating -v composes with integrating v to about the identity."""
    velocity = smooth_field(shape, 3.0, sigma=3.0)
    forward = stn.integrate_velocity(velocity)
    backward = stn.integrate_velocity(-velocity)
    residual = stn.compose_displacements(forward, backward).numpy()
    # Measured: max |residual| 0.02-0.05 px for 3 px fields away from the
    # border (the border clamps both maps); see the closing note of the test run.
    n = len(shape) - 1
    inner = (slice(None),) + (slice(4, -4),) * n
    assert np.abs(residual[inner]).max() < 0.1
    assert np.abs(residual[inner]).mean() < 0.02


def test_compose_displacements():
    first = smooth_field((2, 12, 14), 2.0)
    second = smooth_field((2, 12, 14), 2.0)
    # p -> p + second(p) -> (p + second(p)) + first(p + second(p))
    want = second + np_warp(first, second)
    np.testing.assert_allclose(stn.compose_displacements(first, second).numpy(), want,
                               rtol=0, atol=1e-12)
    # Warping by the composition is warping twice, up to the second
    # resampling (a smooth image: the difference is interpolation error).
    image = scipy.ndimage.gaussian_filter(RNG.standard_normal((1, 40, 40, 1)), (0, 3, 3, 0))
    f, s = smooth_field((1, 40, 40), 2.0, 4.0), smooth_field((1, 40, 40), 2.0, 4.0)
    twice = stn.warp(stn.warp(image, f), s).numpy()
    once = stn.warp(image, stn.compose_displacements(f, s)).numpy()
    inner = (slice(None), slice(5, -5), slice(5, -5))
    assert np.abs(twice - once)[inner].max() < 0.05 * np.abs(image).max()


@pytest.mark.parametrize("shape", [(2, 7, 9), (1, 5, 6, 7), (1, 1, 5)], ids=["2d", "3d", "thin"])
def test_jacobian_determinant_matches_numpy_gradient(shape):
    d = smooth_field(shape, 2.0)
    got = stn.jacobian_determinant(d).numpy()
    n = len(shape) - 1
    want = []
    for field in d:
        j = np.zeros(field.shape[:-1] + (n, n))
        for a in range(n):
            for c in range(n):
                axis = n - 1 - c             # coordinate c runs along tensor axis n - 1 - c
                j[..., a, c] = (np.gradient(field[..., a], axis=axis)
                                if field.shape[axis] > 1 else 0.0) + (a == c)
        want.append(np.linalg.det(j))
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=1e-12)


def test_folding_is_cut_by_integration():
    """A smooth field large enough to fold as a displacement gives a positive
    Jacobian everywhere when integrated as a velocity (7 steps)."""
    for shape in [(4, 32, 32), (2, 16, 16, 16)]:
        field = smooth_field(shape, 6.0, sigma=2.5)
        assert (stn.jacobian_determinant(field).numpy() <= 0).any()
        assert (stn.jacobian_determinant(stn.integrate_velocity(field)).numpy() > 0).all()


def test_resize_displacement():
    coarse = smooth_field((1, 8, 8), 2.0)
    fine = stn.resize_displacement(coarse, (16, 16)).numpy()
    # A constant field is rescaled by the resolution ratio and stays constant.
    const = np.full((1, 4, 6, 2), 1.0)
    np.testing.assert_allclose(stn.resize_displacement(const, (8, 12)).numpy(),
                               np.full((1, 8, 12, 2), 2.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        stn.resize_displacement(const, (8, 12), units="normalized").numpy(),
        np.full((1, 8, 12, 2), 1.0), rtol=0, atol=1e-12)
    # Down again: bilinear at the coarse pixels' centres (the fine grid's
    # centres sit between them), twice the resolution each way.
    back = stn.resize_displacement(fine, (8, 8)).numpy()
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(back[inner], coarse[inner], rtol=0, atol=0.15)
    assert fine.shape == (1, 16, 16, 2)


@pytest.mark.parametrize("call,match", [
    (lambda: stn.warp(tf.zeros([1, 4, 4, 1]), tf.zeros([1, 4, 4, 3])), "displacement"),
    (lambda: stn.warp(tf.zeros([1, 4, 4, 1]), tf.zeros([1, 4, 4, 2]), units="px"), "units"),
    (lambda: stn.warp(tf.zeros([1, 4, 4, 4, 1]), tf.zeros([1, 4, 4, 2])), "displacement"),
    (lambda: stn.integrate_velocity(tf.zeros([1, 4, 4, 2]), steps=-1), "steps"),
    (lambda: stn.integrate_velocity(tf.zeros([1, 4, 2])), "velocity"),
    (lambda: stn.jacobian_determinant(tf.zeros([1, 4, 4, 3])), "displacement"),
    (lambda: stn.resize_displacement(tf.zeros([1, 4, 4, 2]), (4, 4, 4)), "size"),
    (lambda: stn.compose_displacements(tf.zeros([1, 4, 4, 2]), tf.zeros([1, 4, 4, 4, 3])),
     "second"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
