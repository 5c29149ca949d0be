"""stn.py against independent references.

References: PyTorch's affine_grid + grid_sample in float64 (forward and
gradients), SciPy's ndimage.map_coordinates (bilinear / nearest with the
matching boundary modes), a NumPy cubic-convolution loop, NumPy grids,
hand-computed cases and numerical gradients. torch and scipy are installed
by the test command, so they are imported plainly: a missing one fails.
"""
import itertools

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import tensorflow as tf
import torch

import stn
from tests.references import np_affine_grid, np_unnormalize, torch_warp

COMBOS = list(itertools.product([False, True], stn.PADDING_MODES, stn.INTERPOLATIONS))
COMBO_IDS = [f"{'ac' if a else 'noac'}-{p}-{i}" for a, p, i in COMBOS]


def random_theta(rng, batch, spread=0.3):
    base = np.array([[1.1, 0.3, 0.1], [-0.25, 0.9, -0.15]])
    return base + rng.normal(0.0, spread, (batch, 2, 3))


# ---------------------------------------------------------------- PyTorch

def torch_reference(img, grid, align_corners, padding_mode, interpolation, dy):
    ti = torch.tensor(img).permute(0, 3, 1, 2).requires_grad_(True)
    tg = torch.tensor(grid).requires_grad_(True)
    out = torch.nn.functional.grid_sample(ti, tg, mode=interpolation, padding_mode=padding_mode,
                                          align_corners=align_corners)
    out.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    return (out.detach().permute(0, 2, 3, 1).numpy(), ti.grad.permute(0, 2, 3, 1).numpy(),
            tg.grad.numpy())


def exact_lattice_case(align_corners):
    """(height, width) and a grid of normalised values that are exact pixel
    lattice points (whole and half pixels, inside, on the border and up to 2
    pixels outside) in float64, in PyTorch's arithmetic as in ours: n - 1
    (align_corners=True) or n (False) a power of two."""
    h, w = (5, 9) if align_corners else (4, 8)
    values = np.arange(-2.0, 2.001, 0.25)
    xs, ys = np.meshgrid(values, values[::2])
    return (h, w), np.stack([xs, ys], -1)[None].repeat(2, axis=0)


@pytest.mark.parametrize("align_corners", [False, True], ids=["noac", "ac"])
def test_grid_sample_on_the_pixel_lattice_matches_torch(align_corners, plain_ops):
    """Points exactly on pixels, on the borders, on reflection lines and on
    rounding ties: where every rule must make PyTorch's choice. Bilinear is
    kinked there (its gradient is one-sided, from the floor cell); border
    and reflection padding give no gradient to a coordinate exactly on the
    border (PyTorch's clip_coordinates_set_grad); nearest rounds half to
    even. Exact in float64 here, so any other choice shows at O(1).

    As plain ops: these are rules, not round-off, and nine XLA compilations
    per convention would cost 20 s; the identity test below checks the
    border rule compiled."""
    rng = np.random.default_rng(20)
    (h, w), grid = exact_lattice_case(align_corners)
    for padding_mode, interpolation in itertools.product(stn.PADDING_MODES, stn.INTERPOLATIONS):
        img = rng.standard_normal((2, h, w, 3))
        dy = rng.standard_normal(grid.shape[:3] + (3,))
        ref_out, ref_gimg, ref_ggrid = torch_reference(img, grid, align_corners, padding_mode,
                                                       interpolation, dy)
        x, g = tf.constant(img), tf.constant(grid)
        with tf.GradientTape() as tape:
            tape.watch([x, g])
            out = stn.grid_sample(x, g, align_corners=align_corners, padding_mode=padding_mode,
                                  interpolation=interpolation)
        gimg, ggrid = tape.gradient(out, [x, g], output_gradients=tf.constant(dy))
        msg = f"{padding_mode} {interpolation}"
        np.testing.assert_allclose(out.numpy(), ref_out, rtol=0, atol=1e-12, err_msg=msg)
        np.testing.assert_allclose(gimg.numpy(), ref_gimg, rtol=0, atol=1e-12, err_msg=msg)
        np.testing.assert_allclose(ggrid.numpy(), ref_ggrid, rtol=0, atol=1e-12, err_msg=msg)


@pytest.mark.parametrize("align_corners,size", [(True, (17, 9)), (False, (4, 8))],
                         ids=["ac-17x9", "noac-4x8"])
def test_identity_theta_gradient_matches_torch(align_corners, size):
    """How an STN starts training: at the identity every border pixel sits
    exactly on the border, where border and reflection padding give the
    coordinate no gradient (PyTorch's rule). Counting the border as inside
    (>= for >) changes the theta gradient by more than 30 %. PyTorch's grid
    is exact for these sizes (n - 1, resp. n, a power of two); elsewhere its
    border points land an ulp inside or outside and one-sided bilinear
    gradients legitimately differ."""
    rng = np.random.default_rng(21)
    h, w = size
    theta = np.tile(np.eye(2, 3), (2, 1, 1))
    for padding_mode, interpolation in [("border", "bilinear"), ("reflection", "bilinear")]:
        img = rng.standard_normal((2, h, w, 3))
        dy = rng.standard_normal((2, h, w, 3))
        ref_out, ref_gimg, ref_gtheta = torch_warp(
            img, theta, align_corners=align_corners, padding_mode=padding_mode,
            interpolation=interpolation, dy=dy)
        x, t = tf.constant(img), tf.constant(theta)
        with tf.GradientTape() as tape:
            tape.watch([x, t])
            out = stn.spatial_transformer_network(x, t, align_corners=align_corners,
                                                  padding_mode=padding_mode,
                                                  interpolation=interpolation)
        gimg, gtheta = tape.gradient(out, [x, t], output_gradients=tf.constant(dy))
        msg = f"{padding_mode} {interpolation}"
        np.testing.assert_array_equal(out.numpy(), img, err_msg=msg)
        np.testing.assert_array_equal(ref_out, img, err_msg=msg)
        np.testing.assert_allclose(gimg.numpy(), ref_gimg, rtol=0, atol=1e-12, err_msg=msg)
        # Sums over every pixel: O(100), float64 round-off O(1e-13).
        np.testing.assert_allclose(gtheta.numpy(), ref_gtheta, rtol=1e-12, atol=1e-12,
                                   err_msg=msg)


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior")
@pytest.mark.parametrize("out_dims", [None, (4, 5), (13, 11), (1, 1)], ids=str)
@pytest.mark.parametrize("align_corners,padding_mode,interpolation", COMBOS, ids=COMBO_IDS)
def test_transformer_matches_torch_float32(align_corners, padding_mode, interpolation, out_dims):
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    theta = random_theta(rng, 2).astype(np.float32)
    h, w = out_dims or (7, 9)
    ti = torch.tensor(img).permute(0, 3, 1, 2).requires_grad_(True)
    tt = torch.tensor(theta).requires_grad_(True)
    tgrid = torch.nn.functional.affine_grid(tt, (2, 3, h, w), align_corners=align_corners)
    tout = torch.nn.functional.grid_sample(ti, tgrid, mode=interpolation,
                                           padding_mode=padding_mode, align_corners=align_corners)
    dy = rng.standard_normal(tout.shape).astype(np.float32)
    tout.backward(torch.tensor(dy))
    x, th = tf.constant(img), tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch([x, th])
        out = stn.spatial_transformer_network(x, th, out_dims, align_corners=align_corners,
                                              padding_mode=padding_mode,
                                              interpolation=interpolation)
    gimg, gtheta = tape.gradient(out, [x, th],
                                 output_gradients=tf.constant(dy.transpose(0, 2, 3, 1)))
    assert out.dtype == tf.float32 and out.shape == (2, h, w, 3)
    # float32 round-off: values are O(1), coordinates O(10) pixels.
    np.testing.assert_allclose(out.numpy(), tout.detach().permute(0, 2, 3, 1).numpy(),
                               rtol=0, atol=2e-5)
    np.testing.assert_allclose(gimg.numpy(), ti.grad.permute(0, 2, 3, 1).numpy(),
                               rtol=0, atol=2e-5)
    np.testing.assert_allclose(gtheta.numpy(), tt.grad.numpy(), rtol=1e-4, atol=1e-3)


def np_bilinear_zeros(img, x, y):
    """Bilinear, zeros outside, at float64 pixel coordinates; also d(sum out)/d img."""
    b, h, w, c = img.shape
    x0, y0 = np.floor(x), np.floor(y)
    out = np.zeros(x.shape + (c,))
    grad = np.zeros(b * h * w)
    bidx = np.arange(b).reshape(-1, 1, 1)
    for dx, dy in itertools.product((0, 1), (0, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        xi = np.clip(xi, 0, w - 1).astype(int)
        yi = np.clip(yi, 0, h - 1).astype(int)
        weight = np.where(inside, weight, 0.0)
        out += weight[..., None] * img[bidx, yi, xi]
        grad += np.bincount(((bidx * h + yi) * w + xi).ravel(), weight.ravel(), b * h * w)
    return out, np.repeat(grad.reshape(b, h, w, 1), c, axis=-1)


@pytest.mark.parametrize("user_jit", [False, True], ids=["default", "inside-user-jit"])
def test_float32_index_and_weight_agree_under_xla(user_jit):
    """Regression: one XLA computation once recomputed the coordinates per
    fusion, an FMA in one and not the other, so a corner index and its weight
    disagreed at coordinates within an ulp of an integer: output (15, 126, 117)
    here was 0 instead of -1.597 and an image gradient was 0.58 off (default
    call under a GradientTape). Also run inside the user's own XLA function,
    where the layer's two compiled functions are inlined into one."""
    rng = np.random.default_rng(0)
    b, h, w, c = 32, 128, 128, 16
    img = rng.standard_normal((b, h, w, c)).astype(np.float32)
    theta = (np.array([[0.9, 0.3, 0.05], [-0.3, 0.9, -0.1]], np.float32)
             + rng.normal(0, 0.05, (b, 2, 3)).astype(np.float32))
    grid = np_affine_grid(theta.astype(np.float64), h, w, False)
    ref_out, ref_grad = np_bilinear_zeros(img.astype(np.float64), np_unnormalize(grid[..., 0], w, False),
                                          np_unnormalize(grid[..., 1], h, False))
    def warp_and_gradient(x, th):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = stn.spatial_transformer_network(x, th)
        return out, tape.gradient(out, x)

    if user_jit:
        warp_and_gradient = tf.function(warp_and_gradient, jit_compile=True)
    out, grad = warp_and_gradient(tf.constant(img), tf.constant(theta.reshape(b, 6)))
    # float32 coordinates (O(100) px) cost ~1e-4 here; a mismatch costs O(1).
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=0, atol=1e-3)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=0, atol=1e-3)


@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
def test_projective_matches_torch_grid_sample(padding_mode):
    rng = np.random.default_rng(2)
    img = rng.standard_normal((2, 8, 10, 2))
    h = np.tile(np.eye(3), (2, 1, 1)) + rng.normal(0, 0.15, (2, 3, 3))
    h[:, 2, 2] = 1.0
    grid = np_affine_grid(h, 6, 7, False)
    dy = rng.standard_normal((2, 6, 7, 2))
    ref_out, ref_gimg, _ = torch_reference(img, grid, False, padding_mode, "bilinear", dy)
    for theta in (h, h.reshape(2, 9)[:, :8]):
        out = stn.spatial_transformer_network(tf.constant(img), tf.constant(theta), (6, 7),
                                              padding_mode=padding_mode)
        np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)


# ---------------------------------------------------------------- SciPy

SCIPY_MODES = {  # (padding_mode, align_corners) -> map_coordinates mode
    ("zeros", False): "grid-constant", ("zeros", True): "grid-constant",
    ("border", False): "nearest", ("border", True): "nearest",
    ("reflection", False): "reflect",   # mirror about the image edges
    ("reflection", True): "mirror",     # mirror about the corner pixel centres
}


@pytest.mark.parametrize("interpolation,order", [("bilinear", 1), ("nearest", 0)])
@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_matches_scipy_map_coordinates(interpolation, order, padding_mode,
                                                   align_corners):
    rng = np.random.default_rng(3)
    img = rng.standard_normal((2, 9, 12, 2))
    grid = rng.uniform(-2.5, 2.5, (2, 10, 11, 2))
    out = stn.grid_sample(tf.constant(img), tf.constant(grid), align_corners=align_corners,
                          padding_mode=padding_mode, interpolation=interpolation).numpy()
    px = np_unnormalize(grid[..., 0], 12, align_corners)
    py = np_unnormalize(grid[..., 1], 9, align_corners)
    mode = SCIPY_MODES[(padding_mode, align_corners)]
    for b in range(2):
        for c in range(2):
            ref = scipy.ndimage.map_coordinates(img[b, :, :, c], [py[b], px[b]], order=order,
                                                mode=mode, cval=0.0, prefilter=False)
            if order == 0:
                # Only rounding ties may differ (SciPy rounds half up); none occur here.
                assert not np.any(np.isclose(np.abs(px[b] % 1), 0.5))
            np.testing.assert_allclose(out[b, :, :, c], ref, atol=1e-12)


# ---------------------------------------------------------------- bicubic

def np_bicubic(img, px, py, padding_mode, align_corners):
    """Direct statement of cubic convolution (A = -0.75) with per-tap padding."""
    a = -0.75

    def kernel(s):
        s = abs(s)
        if s <= 1:
            return (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1
        if s < 2:
            return a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a
        return 0.0

    def tap(i, n):
        if padding_mode == "border":
            return min(max(i, 0), n - 1)
        if padding_mode == "reflection":
            if n == 1:
                return 0
            lo, hi = (0, n - 1) if align_corners else (-0.5, n - 0.5)
            span = hi - lo
            d = abs(i - lo)
            flips, extra = divmod(d, span)
            r = lo + extra if flips % 2 == 0 else hi - extra
            return int(min(max(round(r), 0), n - 1))
        return i

    h, w, c = img.shape
    out = np.zeros(px.shape + (c,))
    for idx in np.ndindex(px.shape):
        x, y = px[idx], py[idx]
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for j in range(-1, 3):
            for i in range(-1, 3):
                wgt = kernel(x - (x0 + i)) * kernel(y - (y0 + j))
                xi, yi = tap(x0 + i, w), tap(y0 + j, h)
                if 0 <= xi < w and 0 <= yi < h:
                    out[idx] += wgt * img[yi, xi]
    return out


@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_bicubic_matches_numpy_cubic_convolution(padding_mode, align_corners):
    rng = np.random.default_rng(4)
    img = rng.standard_normal((1, 6, 7, 2))
    grid = rng.uniform(-2.2, 2.2, (1, 5, 6, 2))
    out = stn.grid_sample(tf.constant(img), tf.constant(grid), align_corners=align_corners,
                          padding_mode=padding_mode, interpolation="bicubic").numpy()
    px = np_unnormalize(grid[0, ..., 0], 7, align_corners)
    py = np_unnormalize(grid[0, ..., 1], 6, align_corners)
    np.testing.assert_allclose(out[0], np_bicubic(img[0], px, py, padding_mode, align_corners),
                               atol=1e-12)


# ---------------------------------------------------------------- hand-computed

def test_hand_computed_bilinear_cases():
    img = tf.constant([[[[1.0], [2.0]], [[3.0], [4.0]]]])            # 2x2, one channel
    # Centre of the image: the mean of the four pixels, in both conventions.
    for ac in (False, True):
        out = stn.grid_sample(img, tf.zeros([1, 1, 1, 2]), align_corners=ac)
        assert out.numpy().item() == 2.5
    # align_corners=False: x = -1 is the left edge, half a pixel left of
    # pixel 0's centre: zeros padding blends pixel 0 with 0.
    edge = tf.constant([[[[-1.0, -0.5]]]])                           # x=-1, y=-0.5 (row 0)
    assert stn.grid_sample(img, edge).numpy().item() == 0.5
    assert stn.grid_sample(img, edge, padding_mode="border").numpy().item() == 1.0
    assert stn.grid_sample(img, edge, padding_mode="reflection").numpy().item() == 1.0
    # align_corners=True: (-1, -1) is pixel (0, 0)'s centre; y = -0.5 is a
    # quarter of the way from row 0 to row 1.
    corner = tf.constant([[[[-1.0, -1.0]]]])
    assert stn.grid_sample(img, corner, align_corners=True).numpy().item() == 1.0
    assert stn.grid_sample(img, edge, align_corners=True).numpy().item() == 1.5
    # Nearest, ties round half to even: pixel coordinate 0.5 -> 0.
    assert stn.grid_sample(img, tf.constant([[[[0.0, -0.5]]]]),
                           interpolation="nearest").numpy().item() == 1.0


def test_whole_pixel_translation_is_a_shift():
    rng = np.random.default_rng(5)
    img = rng.standard_normal((1, 6, 8, 2)).astype(np.float32)
    # tx = 2 pixels of 8 = 0.5 normalised (align_corners=False): out[:, j] = img[:, j + 2].
    theta = tf.constant([[1.0, 0.0, 0.5, 0.0, 1.0, 0.0]])
    out = stn.spatial_transformer_network(img, theta).numpy()
    np.testing.assert_array_equal(out[0, :, :6], img[0, :, 2:])
    np.testing.assert_array_equal(out[0, :, 6:], 0.0)


def test_rotation_45_degrees_against_numpy():
    rng = np.random.default_rng(6)
    img = rng.standard_normal((1, 9, 9, 1))
    out = stn.spatial_transformer_network(img, stn.rotation_theta(np.float64(np.pi / 4))).numpy()
    c = np.cos(np.pi / 4)
    # Output pixel (i, j): centred offsets rotated by R(45 deg), then read.
    jj, ii = np.meshgrid(np.arange(9) - 4.0, np.arange(9) - 4.0)
    px, py = c * jj - c * ii + 4.0, c * jj + c * ii + 4.0
    ref = scipy.ndimage.map_coordinates(img[0, :, :, 0], [py, px], order=1,
                                        mode="grid-constant", prefilter=False)
    np.testing.assert_allclose(out[0, :, :, 0], ref, atol=1e-12)


# ---------------------------------------------------------------- identity

@pytest.mark.parametrize("size", [(1, 1), (1, 5), (7, 7), (13, 6), (200, 200)],
                         ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_is_exact(size, align_corners):
    rng = np.random.default_rng(7)
    img = rng.standard_normal((2,) + size + (3,)).astype(np.float32)
    theta = stn.identity_theta(2)
    for padding_mode, interpolation in itertools.product(stn.PADDING_MODES, stn.INTERPOLATIONS):
        out = stn.spatial_transformer_network(img, theta, align_corners=align_corners,
                                              padding_mode=padding_mode,
                                              interpolation=interpolation)
        np.testing.assert_array_equal(out.numpy(), img, err_msg=f"{padding_mode} {interpolation}")
    for form in (tf.reshape(theta, [2, 6]), stn.projective_theta([[1., 0, 0, 0, 1., 0, 0, 0]] * 2)):
        out = stn.spatial_transformer_network(img, form, align_corners=align_corners)
        np.testing.assert_array_equal(out.numpy(), img)


def test_seed_readme_snippet_tf1_graph():
    """Seed 001's usage note, with tf.compat.v1 names, returns the input exactly."""
    from stn import spatial_transformer_network as transformer
    n_fc = 6
    B, H, W, C = (2, 200, 200, 3)
    initial = np.array([[1., 0, 0], [0, 1., 0]])
    initial = initial.astype('float32').flatten()
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [B, H, W, C])
        W_fc1 = tf.Variable(tf.zeros([H * W * C, n_fc]), name='W_fc1')
        b_fc1 = tf.Variable(initial_value=initial, name='b_fc1')
        h_fc1 = tf.matmul(tf.zeros([B, H * W * C]), W_fc1) + b_fc1
        h_trans = transformer(x, h_fc1)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            data = np.random.default_rng(8).uniform(0, 255, (B, H, W, C)).astype(np.float32)
            out = sess.run(h_trans, {x: data})
    np.testing.assert_array_equal(out, data)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
def test_numerical_gradients(padding_mode, interpolation):
    rng = np.random.default_rng(9)
    img = tf.constant(rng.standard_normal((1, 5, 6, 2)))
    theta = tf.constant(random_theta(rng, 1, 0.1).reshape(1, 6))

    def f(image, th):
        return stn.spatial_transformer_network(image, th, (4, 5), padding_mode=padding_mode,
                                               interpolation=interpolation)

    theoretical, numerical = tf.test.compute_gradient(f, [img, theta], delta=1e-6)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_second_order_gradient(jit, interpolation):
    """The sampler's written-out gradient is itself differentiable."""
    rng = np.random.default_rng(9)
    img = tf.constant(rng.standard_normal((2, 5, 6, 2)))
    theta = tf.constant(rng.normal(0, 0.2, (2, 6)) + [1, 0.1, 0.05, -0.1, 0.9, 0.02])

    def theta_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = tf.reduce_sum(stn.spatial_transformer_network(
                x, theta, interpolation=interpolation) ** 2)
        return tape.gradient(loss, theta)

    analytic, numeric = tf.test.compute_gradient(theta_gradient, [img])
    np.testing.assert_allclose(analytic[0], numeric[0], rtol=0, atol=1e-8)


def test_numerical_gradient_wrt_grid():
    rng = np.random.default_rng(10)
    img = tf.constant(rng.standard_normal((1, 5, 6, 2)))
    grid = tf.constant(rng.uniform(-1.3, 1.3, (1, 3, 4, 2)))
    for padding_mode in stn.PADDING_MODES:
        theoretical, numerical = tf.test.compute_gradient(
            lambda g: stn.grid_sample(img, g, padding_mode=padding_mode), [grid], delta=1e-7)
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-5)


def test_nearest_grid_gradient_is_zero_not_none():
    img = tf.random.normal([1, 4, 4, 1])
    theta = tf.constant([[0.9, 0.1, 0.05, -0.1, 1.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = stn.spatial_transformer_network(img, theta, interpolation="nearest")
    grad = tape.gradient(out, theta)
    assert grad is not None
    np.testing.assert_array_equal(grad.numpy(), 0.0)


# ---------------------------------------------------------------- compatibility
#
# Each execution mode against PyTorch in float64 (not against stn's own
# other path). float32 inputs: coordinates of O(10) px carry ~1e-6 px of
# round-off, so values agree to ~1e-5; theta gradients sum O(100) terms.

F32_ATOL = 2e-5


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    return (rng.standard_normal((3, 10, 12, 4)).astype(np.float32),
            random_theta(rng, 3).astype(np.float32).reshape(3, 6))


@pytest.mark.parametrize("padding_mode,interpolation", [("zeros", "bilinear"),
                                                        ("reflection", "bicubic"),
                                                        ("border", "nearest")])
def test_xla_and_plain_ops_match_torch(data, jit, padding_mode, interpolation):
    img, theta = data
    out = stn.spatial_transformer_network(img, theta, padding_mode=padding_mode,
                                          interpolation=interpolation).numpy()
    np.testing.assert_allclose(out, torch_warp(img, theta, padding_mode=padding_mode,
                                               interpolation=interpolation),
                               rtol=0, atol=F32_ATOL)


def test_tf_function_with_unknown_dims(data):
    img, theta = data
    fn = tf.function(lambda x, t: stn.spatial_transformer_network(x, t, (5, 7)),
                     input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                      tf.TensorSpec([None, 6], tf.float32)])
    np.testing.assert_allclose(fn(img, theta).numpy(), torch_warp(img, theta, (5, 7)),
                               rtol=0, atol=F32_ATOL)
    np.testing.assert_allclose(fn(img[:1, :7], theta[:1]).numpy(),
                               torch_warp(img[:1, :7], theta[:1], (5, 7)), rtol=0, atol=F32_ATOL)
    grid_fn = tf.function(lambda x, g: stn.grid_sample(x, g),
                          input_signature=[tf.TensorSpec([None, None, None, None], tf.float32),
                                           tf.TensorSpec([None, None, None, 2], tf.float32)])
    grid = np_affine_grid(theta.reshape(3, 2, 3).astype(np.float64), 4, 4, False)
    ref, _, _ = torch_reference(img.astype(np.float64), grid, False, "zeros", "bilinear",
                                np.zeros((3, 4, 4, 4)))
    np.testing.assert_allclose(grid_fn(img, grid.astype(np.float32)).numpy(), ref,
                               rtol=0, atol=F32_ATOL)


def test_dynamic_out_dims_tensor(data):
    img, theta = data
    fn = tf.function(lambda x, t, size: stn.spatial_transformer_network(x, t, size),
                     input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                      tf.TensorSpec([None, 6], tf.float32),
                                      tf.TensorSpec([2], tf.int32)])
    np.testing.assert_allclose(fn(img, theta, tf.constant([6, 3])).numpy(),
                               torch_warp(img, theta, (6, 3)), rtol=0, atol=F32_ATOL)


def test_tf1_graph_with_unknown_dims_and_gradients(data):
    img, theta = data
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, None])
        t = tf.compat.v1.placeholder(tf.float32, [None, 6])
        out = stn.spatial_transformer_network(x, t, padding_mode="border")
        grads = tf.compat.v1.gradients(tf.reduce_sum(out ** 2), [x, t])
        with tf.compat.v1.Session() as sess:
            got, (gx, gt) = sess.run([out, grads], {x: img, t: theta})
    ref = torch_warp(img, theta, padding_mode="border")
    _, ref_gx, ref_gt = torch_warp(img, theta, padding_mode="border", dy=2 * ref)
    np.testing.assert_allclose(got, ref, rtol=0, atol=F32_ATOL)
    np.testing.assert_allclose(gx, ref_gx, rtol=0, atol=1e-4)
    np.testing.assert_allclose(gt, ref_gt, rtol=1e-4, atol=1e-3)


def test_inside_jit_compiled_function(data):
    img, theta = data

    @tf.function(jit_compile=True)
    def step(x, t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            out = stn.spatial_transformer_network(x, t, (8, 8), interpolation="bicubic")
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, t)

    out, grad = step(img, theta)
    ref, _, ref_grad = torch_warp(img, theta, (8, 8), interpolation="bicubic",
                                  dy=np.ones((3, 8, 8, 4)))
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=F32_ATOL)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-4, atol=1e-3)


# Unit round-off u of each half type, and the error allowed in units of
# u * max|img|. The sampler computes coordinates in float32 and rounds each
# weight, product and partial sum to the half type: a sum of K terms whose
# weights add up to ~1 (bilinear, 4 taps) or ~1.9 in absolute value
# (bicubic, 16 taps). Measured: 0.8 (bilinear) and 2.2 (bicubic) u * max|img|
# on float16 and bfloat16, XLA and plain ops; nearest is exact. Coordinates
# computed in the half type itself would cost ~5x the bilinear allowance
# here (a 10x12 image: float16 spacing near x = 10 is 1/128 px).
HALF_UNIT_ROUNDOFF = {tf.float16: 2.0 ** -11, tf.bfloat16: 2.0 ** -8}
HALF_ALLOWANCE = {"bilinear": 3.0, "bicubic": 6.0, "nearest": 0.0}


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64],
                         ids=lambda d: d.name)
def test_dtype_is_kept(data, dtype):
    img, theta = data
    x, t = tf.cast(img, dtype), tf.cast(theta, dtype)
    # The reference sees exactly the rounded inputs.
    x64, t64 = tf.cast(x, tf.float64).numpy(), tf.cast(t, tf.float64).numpy()
    for interpolation in stn.INTERPOLATIONS:
        out = stn.spatial_transformer_network(x, t, interpolation=interpolation)
        assert out.dtype == dtype
        ref = torch_warp(x64, t64, interpolation=interpolation)
        if dtype in HALF_UNIT_ROUNDOFF:
            atol = (HALF_ALLOWANCE[interpolation] * HALF_UNIT_ROUNDOFF[dtype]
                    * np.abs(x64).max())
        else:
            atol = F32_ATOL if dtype == tf.float32 else 1e-12
        np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(), ref, rtol=0, atol=atol,
                                   err_msg=interpolation)
    grid = stn.affine_grid(t, (3, 3))
    assert grid.dtype == dtype


def test_float64_coordinates_stay_float64_with_a_float32_image():
    """Coordinates are computed in float64 if the grid or theta is float64
    (spatial_convention.compute_dtype), whatever the image's dtype. Pixel
    x = 2.5 + 1e-9: nearest reads pixel 3; in float32 the offset vanishes
    and the tie rounds to even, pixel 2."""
    img = np.arange(8.0, dtype=np.float32).reshape(1, 1, 8, 1)
    x = 2.5 + 1e-9
    grid = np.array([[[[(2 * x + 1) / 8 - 1, 0.0]]]])                  # align_corners=False
    out = stn.grid_sample(img, grid, interpolation="nearest")
    assert out.dtype == tf.float32 and out.numpy().item() == 3.0
    theta = np.array([[1.0, 0.0, 2 * (x - 3.0) / 8, 0.0, 1.0, 0.0]])   # output pixel 3 -> x
    out = stn.spatial_transformer_network(img, theta, interpolation="nearest")
    assert out.dtype == tf.float32 and out.numpy()[0, 0, 3, 0] == 3.0


def test_integer_images_are_cast_to_float32():
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    out = stn.spatial_transformer_network(img, stn.identity_theta(2))
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), img.astype(np.float32))


# ---------------------------------------------------------------- seed layouts

def test_affine_grid_generator_and_bilinear_sampler_layouts(data):
    img, theta = data
    grids = stn.affine_grid_generator(5, 6, tf.reshape(theta, [3, 2, 3]))
    assert grids.shape == (3, 2, 5, 6)
    np.testing.assert_allclose(grids.numpy(), np_affine_grid(theta.reshape(3, 2, 3).astype(
        np.float64), 5, 6, False).transpose(0, 3, 1, 2), atol=1e-6)
    out = stn.bilinear_sampler(img, grids[:, 0], grids[:, 1])
    np.testing.assert_allclose(out.numpy(), torch_warp(img, theta, (5, 6)), rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_matches_numpy(align_corners):
    rng = np.random.default_rng(12)
    theta = random_theta(rng, 2)
    for h, w in [(1, 1), (3, 5), (8, 2)]:
        grid = stn.affine_grid(theta, (h, w), align_corners=align_corners).numpy()
        np.testing.assert_allclose(grid, np_affine_grid(theta, h, w, align_corners), atol=1e-14)


def test_conversions_round_trip_and_convention():
    np.testing.assert_allclose(stn.pixel_centers(4).numpy(), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(stn.pixel_centers(3, align_corners=True).numpy(), [-1, 0, 1])
    np.testing.assert_allclose(stn.pixel_centers(1, align_corners=True).numpy(), [0.0])
    np.testing.assert_allclose(stn.normalized_to_pixel([-1.0, 1.0], 4).numpy(), [-0.5, 3.5])
    p = tf.constant([0.0, 1.5, 3.0])
    np.testing.assert_allclose(stn.normalized_to_pixel(stn.pixel_to_normalized(p, 4), 4), p)


# ---------------------------------------------------------------- transforms

def test_transform_parameterisations():
    params = np.array([[0.5, 0.2, -0.3]])
    np.testing.assert_allclose(stn.attention_theta(params).numpy(),
                               [[[0.5, 0, 0.2], [0, 0.5, -0.3]]])
    s, a = 1.5, 0.3
    np.testing.assert_allclose(
        stn.similarity_theta([[s, a, 0.1, 0.2]]).numpy(),
        [[[s * np.cos(a), -s * np.sin(a), 0.1], [s * np.sin(a), s * np.cos(a), 0.2]]], atol=1e-6)
    np.testing.assert_allclose(stn.rotation_theta(a).numpy(),
                               stn.similarity_theta([[1.0, a, 0.0, 0.0]]).numpy())
    for name in set(stn.TRANSFORMS) - {"tps"}:   # tps: tests/test_tps.py
        theta = stn.transform_theta(name, [stn.transform_family(name).identity_params])
        eye = np.eye(3)[: theta.shape[1]]
        np.testing.assert_allclose(theta.numpy()[0], eye, atol=1e-7, err_msg=name)


def test_affine_diffeomorphic_is_the_matrix_exponential():
    rng = np.random.default_rng(13)
    params = rng.normal(0, 0.5, (4, 6))
    theta = stn.affine_diffeomorphic_theta(params).numpy()
    for p, t in zip(params, theta):
        generator = np.vstack([p.reshape(2, 3), np.zeros(3)])
        np.testing.assert_allclose(t, scipy.linalg.expm(generator)[:2], atol=1e-12)
    # The inverse is the exponential of the negated generator.
    np.testing.assert_allclose(stn.invert_affine(theta).numpy(),
                               stn.affine_diffeomorphic_theta(-params).numpy(), atol=1e-12)
    theoretical, numerical = tf.test.compute_gradient(stn.affine_diffeomorphic_theta,
                                                      [tf.constant(params[:1])], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


def test_invert_and_compose():
    rng = np.random.default_rng(14)
    a, b = random_theta(rng, 3), random_theta(rng, 3)
    ha = np.concatenate([a, np.tile([[[0, 0, 1.0]]], (3, 1, 1))], 1)
    hb = np.concatenate([b, np.tile([[[0, 0, 1.0]]], (3, 1, 1))], 1)
    np.testing.assert_allclose(stn.compose_affine(a, b).numpy(), (ha @ hb)[:, :2], atol=1e-12)
    np.testing.assert_allclose(stn.invert_affine(a).numpy(), np.linalg.inv(ha)[:, :2], atol=1e-12)
    np.testing.assert_allclose(stn.compose_affine(a, stn.invert_affine(a)).numpy(),
                               np.tile(np.eye(2, 3), (3, 1, 1)), atol=1e-12)
    proj = np.tile(np.eye(3), (3, 1, 1)) + rng.normal(0, 0.1, (3, 3, 3))
    composed = stn.compose_affine(a, proj).numpy()
    expected = ha @ proj
    np.testing.assert_allclose(composed, expected / expected[:, 2:, 2:], atol=1e-12)
    # A projective inverse is normalised to h22 = 1, like projective_theta's.
    inverse = np.linalg.inv(proj)
    np.testing.assert_allclose(stn.invert_affine(proj).numpy(), inverse / inverse[:, 2:, 2:],
                               atol=1e-12)


def test_warp_then_inverse_restores_interior():
    # Smooth image, so two resamplings stay close to the original.
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    img = np.sin(3 * xx + 2 * yy)[None, :, :, None]
    theta = stn.similarity_theta([[0.9, 0.3, 0.05, -0.05]])
    once = stn.spatial_transformer_network(img, theta)
    back = stn.spatial_transformer_network(once, stn.invert_affine(theta)).numpy()
    np.testing.assert_allclose(back[0, 8:-8, 8:-8], img[0, 8:-8, 8:-8], atol=0.01)


def test_affine_warp_constraints():
    c = stn.AffineWarpConstraints.translation_only()
    assert c.num_free_params == 2 and c.identity_params == [0.0, 0.0]
    np.testing.assert_allclose(c.theta([[0.2, -0.4]]).numpy(), [[[1, 0, 0.2], [0, 1, -0.4]]])
    c = stn.AffineWarpConstraints(((None, 0.5, None), (0.0, None, 0.0)))
    np.testing.assert_allclose(c.theta([[2.0, 3.0, 4.0]]).numpy(), [[[2, 0.5, 3], [0, 4, 0]]])
    assert stn.AffineWarpConstraints.no_constraints().num_free_params == 6
    assert stn.AffineWarpConstraints.scale_only().identity_params == [1.0, 1.0]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(padding_mode="wrap"), "padding_mode must be one of 'zeros', 'border', 'reflection'"),
    (dict(interpolation="area"), "interpolation must be one of"),
    (dict(align_corners="yes"), "align_corners must be True or False"),
    (dict(out_dims=(0, 4)), "out_dims must be two positive integers"),
    (dict(out_dims=(4,)), r"out_dims must be \(height, width\)"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    img = tf.zeros([2, 4, 4, 1])
    with pytest.raises((ValueError, TypeError), match=match):
        stn.spatial_transformer_network(img, stn.identity_theta(2), **kwargs)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match=r"theta must have shape \[B, 6\] or \[B, 2, 3\]"):
        stn.spatial_transformer_network(tf.zeros([2, 4, 4, 1]), tf.zeros([2, 5]))
    with pytest.raises(ValueError, match=r"input_fmap must have rank 4 or 5 \(\[B, H, W, C\] or \[B, D, H, W, C\]\)"):
        stn.spatial_transformer_network(tf.zeros([4, 4, 1]), tf.zeros([1, 6]))
    with pytest.raises(ValueError, match="theta must have the same batch size as the image"):
        stn.spatial_transformer_network(tf.zeros([2, 4, 4, 1]), tf.zeros([3, 6]))
    with pytest.raises(ValueError, match=r"grid must have shape \[B, Ho, Wo, 2\]"):
        stn.grid_sample(tf.zeros([2, 4, 4, 1]), tf.zeros([2, 3, 3, 3]))
    with pytest.raises(TypeError, match="img must be a real-valued tensor"):
        stn.grid_sample(tf.zeros([1, 2, 2, 1], tf.complex64), tf.zeros([1, 1, 1, 2]))


# ---------------------------------------------------------------- odd input

@pytest.mark.parametrize("padding_mode", stn.PADDING_MODES)
@pytest.mark.parametrize("interpolation", stn.INTERPOLATIONS)
def test_non_finite_theta_never_crashes_or_leaks(padding_mode, interpolation):
    """NaN theta -> NaN output for that element only; +-inf -> far outside."""
    rng = np.random.default_rng(16)
    img = rng.standard_normal((3, 5, 6, 2)).astype(np.float32)
    theta = np.array([[np.nan] * 6,
                      [1, 0, np.inf, 0, 1, 0],
                      [1, 0, 0.1, 0, 1, -0.1]], np.float32)
    t = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out = stn.spatial_transformer_network(img, t, padding_mode=padding_mode,
                                              interpolation=interpolation)
        loss = tf.reduce_sum(out[2])
    grad = tape.gradient(loss, t).numpy()
    out = out.numpy()
    assert np.isnan(out[0]).all()
    # Other batch elements are untouched by their neighbours' NaN / inf.
    np.testing.assert_allclose(out[2], torch_warp(img[2:], theta[2:], padding_mode=padding_mode,
                                                  interpolation=interpolation)[0],
                               rtol=0, atol=F32_ATOL)
    assert np.isfinite(grad[2]).all()
    if padding_mode == "zeros":          # x -> inf: everything reads outside
        np.testing.assert_array_equal(out[1], 0.0)
    elif padding_mode == "border":       # x -> inf: the right edge column
        np.testing.assert_allclose(out[1], np.repeat(img[1, :, -1:], 6, axis=1), atol=1e-6)


def test_huge_theta_reads_padding():
    img = tf.random.normal([1, 4, 4, 1])
    out = stn.spatial_transformer_network(img, [[1e30, 0, 0, 0, 1e30, 0]]).numpy()
    np.testing.assert_array_equal(out[0, 0, 0], 0.0)


@pytest.mark.parametrize("interpolation", stn.INTERPOLATIONS)
def test_empty_batch_and_unit_images(interpolation):
    out = stn.spatial_transformer_network(tf.zeros([0, 4, 5, 2]), tf.zeros([0, 6]), (3, 3),
                                          interpolation=interpolation)
    assert out.shape == (0, 3, 3, 2)
    # A 1x1 image with align_corners=True: -1 and 1 are both its centre.
    one = tf.constant([[[[3.0, -1.0]]]])
    for padding_mode in stn.PADDING_MODES:
        out = stn.spatial_transformer_network(one, [[0.5, 0.1, 0.3, 0.2, 0.7, -0.4]], (2, 3),
                                              align_corners=True, padding_mode=padding_mode,
                                              interpolation=interpolation)
        np.testing.assert_array_equal(out.numpy(), np.tile([[[[3.0, -1.0]]]], (1, 2, 3, 1)))


def test_dynamic_batch_mismatch_is_reported_in_graphs():
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 1])
        t = tf.compat.v1.placeholder(tf.float32, [None, 6])
        out = stn.spatial_transformer_network(x, t)
        with tf.compat.v1.Session() as sess:
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match="theta must have the same batch size as the image"):
                sess.run(out, {x: np.zeros((2, 4, 4, 1)), t: np.zeros((3, 6))})


def test_dynamic_theta_size_is_checked():
    fn = tf.function(lambda x, t: stn.spatial_transformer_network(x, t),
                     input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32),
                                      tf.TensorSpec([None, None], tf.float32)])
    x = np.random.default_rng(17).standard_normal((2, 4, 4, 1)).astype(np.float32)
    np.testing.assert_array_equal(fn(x, np.tile(np.eye(2, 3).reshape(1, 6), (2, 1))).numpy(), x)
    np.testing.assert_array_equal(
        fn(x, np.tile([[1.0, 0, 0, 0, 1, 0, 0, 0]], (2, 1)).astype(np.float32)).numpy(), x)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"theta must have shape \[B, 6\]"):
        fn(x, np.zeros((2, 7), np.float32))
