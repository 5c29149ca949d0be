"""coordconv.add_coords / coord_conv*: values against NumPy references, shapes,
unknown dims (tf.function, TF1 graphs), XLA, dtypes and argument errors."""
import numpy as np
import pytest
import tensorflow as tf

import coordconv


# ---------------------------------------------------------------- references

def _lin(n, align_corners=True):
    """Independent reference: numpy.linspace, or pixel centres."""
    if align_corners:
        return np.zeros(1) if n == 1 else np.linspace(-1.0, 1.0, n)
    return (np.arange(n) + 0.5) * (2.0 / n) - 1.0


def ref_add_coords(x, with_r=False, align_corners=True):
    """NumPy reference for channels-last inputs of rank 3, 4 or 5."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    grids = np.meshgrid(*[_lin(n, align_corners) for n in spatial], indexing="ij")
    # grids[a] varies along spatial axis a; channel order is x (last axis), y, z.
    chans = [grids[a] for a in reversed(range(len(spatial)))]
    if with_r:
        chans.append(np.sqrt(sum(c ** 2 for c in chans)))
    coords = np.stack(chans, axis=-1)
    coords = np.broadcast_to(coords, (x.shape[0],) + coords.shape)
    return np.concatenate([x, coords], axis=-1)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- values

def test_readme_example_values():
    c = coordconv.add_coords(tf.zeros([2, 3, 5, 1]), with_r=True).numpy()
    assert c.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(c[1, 2, :, 1], [-1.0, -0.5, 0.0, 0.5, 1.0])  # x along W
    np.testing.assert_array_equal(c[0, :, 4, 2], [-1.0, 0.0, 1.0])             # y along H
    np.testing.assert_allclose(c[0, 0, 0, 3], np.sqrt(2.0), rtol=1e-7)
    np.testing.assert_allclose(c[0, 1, 2, 3], 0.0)


@pytest.mark.parametrize("shape", [(2, 4, 7, 3), (1, 7, 4, 1), (3, 1, 5, 2),
                                   (2, 6, 1, 1), (1, 1, 1, 1), (2, 2, 9, 4)])
@pytest.mark.parametrize("with_r", [False, True])
def test_2d_matches_numpy_reference_non_square(shape, with_r):
    x = _rand(shape)
    got = coordconv.add_coords(x, with_r=with_r).numpy()
    want = ref_add_coords(x, with_r=with_r)
    assert got.shape == want.shape == shape[:-1] + (shape[-1] + 2 + with_r,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # the input channels pass through untouched
    np.testing.assert_array_equal(got[..., :shape[-1]], x)


def test_x_is_width_and_y_is_height_on_non_square():
    # Uber's reference swaps x_dim / y_dim; on a 3x5 image x must have 5 values.
    c = coordconv.add_coords(tf.zeros([1, 3, 5, 1])).numpy()
    xs, ys = c[0, ..., 1], c[0, ..., 2]
    assert np.all(xs == xs[0:1, :])     # x constant down each column
    assert np.all(ys == ys[:, 0:1])     # y constant along each row
    np.testing.assert_array_equal(xs[0], np.linspace(-1, 1, 5).astype(np.float32))
    np.testing.assert_array_equal(ys[:, 0], np.linspace(-1, 1, 3).astype(np.float32))


@pytest.mark.parametrize("shape,with_r", [((2, 5, 1), False), ((2, 5, 3), True),
                                          ((1, 1, 2), True)])
def test_1d_matches_reference(shape, with_r):
    x = _rand(shape)
    got = coordconv.add_coords(x, with_r=with_r).numpy()
    np.testing.assert_allclose(got, ref_add_coords(x, with_r), rtol=1e-6, atol=1e-7)
    if with_r:  # r = |x| in 1-D
        np.testing.assert_allclose(got[..., -1], np.abs(got[..., -2]), atol=1e-7)


@pytest.mark.parametrize("with_r", [False, True])
def test_3d_matches_reference(with_r):
    x = _rand((2, 3, 4, 5, 2))
    got = coordconv.add_coords(x, with_r=with_r).numpy()
    want = ref_add_coords(x, with_r)
    assert got.shape == (2, 3, 4, 5, 2 + 3 + with_r)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # z varies along depth only
    np.testing.assert_array_equal(got[0, :, 0, 0, 4], np.linspace(-1, 1, 3).astype(np.float32))


def test_align_corners_false_uses_pixel_centres():
    x = _rand((2, 4, 6, 1))
    got = coordconv.add_coords(x, with_r=True, align_corners=False).numpy()
    np.testing.assert_allclose(got, ref_add_coords(x, True, align_corners=False),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[0, 0, :, 1], [-5 / 6, -3 / 6, -1 / 6, 1 / 6, 3 / 6, 5 / 6],
                               rtol=1e-6)


@pytest.mark.parametrize("fmt,shape", [("NCHW", (2, 3, 4, 5)), ("NCW", (2, 3, 6)),
                                       ("NCDHW", (1, 2, 3, 4, 5)),
                                       ("channels_first", (2, 1, 3, 2))])
def test_channels_first_equals_transposed_channels_last(fmt, shape):
    x = _rand(shape)
    got = coordconv.add_coords(x, with_r=True, data_format=fmt).numpy()
    perm_in = [0] + list(range(2, len(shape))) + [1]
    last = ref_add_coords(np.transpose(x, perm_in), with_r=True)
    perm_back = [0, len(shape) - 1] + list(range(1, len(shape) - 1))
    np.testing.assert_allclose(got, np.transpose(last, perm_back), rtol=1e-6, atol=1e-7)


def test_empty_batch_and_empty_spatial():
    assert coordconv.add_coords(tf.zeros([0, 3, 4, 2])).shape == (0, 3, 4, 4)
    assert coordconv.add_coords(tf.zeros([2, 0, 4, 2]), with_r=True).shape == (2, 0, 4, 5)


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype,tol", [(tf.float16, 1e-3), (tf.bfloat16, 8e-3),
                                       (tf.float32, 1e-6), (tf.float64, 1e-14)])
def test_dtype_kept(dtype, tol):
    x = tf.cast(_rand((2, 5, 3, 1)), dtype)
    out = coordconv.add_coords(x, with_r=True)
    assert out.dtype == dtype
    want = ref_add_coords(tf.cast(x, tf.float64).numpy(), with_r=True)
    np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("np_dtype", [np.uint8, np.int32, np.int64, np.bool_])
def test_integer_and_bool_inputs_cast_to_float32(np_dtype):
    x = (np.arange(2 * 3 * 4).reshape(2, 3, 4, 1) % 2).astype(np_dtype)
    out = coordconv.add_coords(x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), ref_add_coords(x.astype(np.float64)), rtol=1e-6)


def test_float64_coords_are_exact_linspace():
    out = coordconv.add_coords(tf.zeros([1, 1, 11, 1], tf.float64)).numpy()
    np.testing.assert_allclose(out[0, 0, :, 1], np.linspace(-1, 1, 11), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- graphs / XLA

def test_tf_function_unknown_dims_one_trace():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    def f(t):
        return coordconv.add_coords(t, with_r=True)

    out_spec = f.get_concrete_function().structured_outputs
    assert out_spec.shape.as_list() == [None, None, None, 5]
    for shape in [(1, 3, 7, 2), (4, 8, 2, 2), (2, 1, 1, 2)]:
        x = _rand(shape)
        np.testing.assert_allclose(f(x).numpy(), ref_add_coords(x, True), rtol=1e-6, atol=1e-7)
    assert len(f._list_all_concrete_functions()) == 1  # no retracing


def test_tf_function_unknown_channels():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    def f(t):
        return coordconv.add_coords(t)

    x = _rand((2, 3, 5, 3))
    np.testing.assert_allclose(f(x).numpy(), ref_add_coords(x), rtol=1e-6, atol=1e-7)


def test_tf1_graph_placeholders_and_session():
    x1 = _rand((2, 3, 6, 1))
    x2 = _rand((1, 5, 2, 1), seed=1)
    filters = _rand((3, 3, 4, 2), seed=2)
    with tf.Graph().as_default():
        ph = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1])
        out = coordconv.add_coords(ph, with_r=True)
        conv = coordconv.coord_conv2d(ph, tf.constant(filters), with_r=True)
        assert out.shape.as_list() == [None, None, None, 4]
        with tf.compat.v1.Session() as sess:
            for x in (x1, x2):
                got, got_conv = sess.run([out, conv], {ph: x})
                want = ref_add_coords(x, True)
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(got_conv, _np_conv2d_same(want, filters),
                                           rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_xla_jit_compile(dtype):
    f = tf.function(lambda t: coordconv.add_coords(t, with_r=True), jit_compile=True)
    x = _rand((2, 5, 3, 2))
    out = f(tf.cast(x, dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(),
                               ref_add_coords(tf.cast(tf.cast(x, dtype), tf.float64).numpy(), True),
                               rtol=2e-3, atol=2e-3)


def test_gradient_flows_to_input_unchanged():
    x = tf.constant(_rand((2, 3, 4, 2)))
    w = tf.constant(_rand((2, 3, 4, 4), seed=3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(coordconv.add_coords(x) * w)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), w.numpy()[..., :2])


# ---------------------------------------------------------------- coord_conv

def _np_conv2d_same(x, w, stride=1):
    """Direct NumPy cross-correlation with TF 'SAME' padding (reference)."""
    b, h, wd, _ = x.shape
    kh, kw, _, co = w.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((b, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("with_r,stride", [(False, 1), (True, 2)])
def test_coord_conv2d_matches_numpy_conv_over_concatenated_coords(with_r, stride):
    x = _rand((2, 5, 7, 3))
    w = _rand((3, 3, 3 + 2 + with_r, 4), seed=1)
    got = coordconv.coord_conv2d(x, w, strides=stride, padding="SAME", with_r=with_r).numpy()
    want = _np_conv2d_same(ref_add_coords(x, with_r), w.astype(np.float64), stride)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _np_conv(x, w, strides=1, dilations=1, padding="SAME"):
    """Direct NumPy N-D cross-correlation, channels-last, TF's SAME / VALID
    padding, per-axis strides and dilations (reference)."""
    n = x.ndim - 2
    k = w.shape[:n]
    s = (strides,) * n if np.isscalar(strides) else tuple(strides)
    d = (dilations,) * n if np.isscalar(dilations) else tuple(dilations)
    extent = [(k[a] - 1) * d[a] + 1 for a in range(n)]
    size = x.shape[1:-1]
    if padding == "SAME":
        out = [-(-size[a] // s[a]) for a in range(n)]
        total = [max((out[a] - 1) * s[a] + extent[a] - size[a], 0) for a in range(n)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        out = [(size[a] - extent[a]) // s[a] + 1 for a in range(n)]
        pads = [(0, 0)] * n
    xp = np.pad(np.asarray(x, np.float64), [(0, 0)] + pads + [(0, 0)])
    result = np.zeros((x.shape[0], *out, w.shape[-1]))
    for tap in np.ndindex(*k):
        window = tuple(slice(tap[a] * d[a], tap[a] * d[a] + (out[a] - 1) * s[a] + 1, s[a])
                       for a in range(n))
        result += np.tensordot(xp[(slice(None),) + window], w[tap], axes=([-1], [0]))
    return result


@pytest.mark.parametrize("fn,shape,kernel,dilations", [
    (coordconv.coord_conv1d, (2, 11, 2), (3,), 2),
    (coordconv.coord_conv2d, (2, 7, 9, 2), (3, 2), (2, 3)),
    (coordconv.coord_conv3d, (1, 5, 6, 7, 1), (2, 3, 2), (1, 2, 2)),
], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_coord_conv_nd_convention_and_dilations_match_numpy(fn, shape, kernel, dilations,
                                                            align_corners):
    """align_corners and dilations reach the coordinates and the convolution:
    the two conventions differ by up to 1/n per coordinate, O(0.1) here."""
    x = _rand(shape)
    n = len(shape) - 2
    w = _rand(kernel + (shape[-1] + n + 1, 3), seed=1)
    got = fn(x, w, padding="SAME", with_r=True, dilations=dilations,
             align_corners=align_corners).numpy()
    want = _np_conv(ref_add_coords(x, True, align_corners), w, dilations=dilations)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_coord_conv_convention_dilations_and_valid_match_numpy(align_corners):
    x = _rand((2, 8, 6, 3))
    w = _rand((3, 2, 3 + 2, 4), seed=2)
    got = coordconv.coord_conv(x, w, padding="valid", dilations=(2, 1),
                               align_corners=align_corners).numpy()
    want = _np_conv(ref_add_coords(x, False, align_corners), w, dilations=(2, 1),
                    padding="VALID")
    assert got.shape == want.shape == (2, 4, 5, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    strided = coordconv.coord_conv(x, w, strides=(2, 3), align_corners=align_corners).numpy()
    np.testing.assert_allclose(
        strided, _np_conv(ref_add_coords(x, False, align_corners), w, strides=(2, 3)),
        rtol=1e-5, atol=1e-5)


def test_coord_conv_sees_position():
    # On a constant image a plain conv gives the same value everywhere; the
    # CoordConv with a kernel reading only the x channel reproduces x.
    w = np.zeros((1, 1, 3, 1), np.float32)
    w[0, 0, 1, 0] = 1.0
    out = coordconv.coord_conv2d(tf.ones([1, 4, 6, 1]), w).numpy()
    np.testing.assert_allclose(out[0, 2, :, 0], np.linspace(-1, 1, 6), rtol=1e-6)


def test_coord_conv1d_and_3d_valid_shapes():
    assert coordconv.coord_conv1d(tf.zeros([2, 9, 3]), tf.zeros([3, 4, 5]),
                                  padding="VALID").shape == (2, 7, 5)
    assert coordconv.coord_conv3d(tf.zeros([1, 4, 5, 6, 1]), tf.zeros([2, 2, 2, 5, 3]),
                                  with_r=True, padding="valid").shape == (1, 3, 4, 5, 3)


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(inputs=np.zeros((2, 3))), ValueError, ["rank 3 or 4 or 5", "; got shape (2, 3)"]),
    (dict(inputs=np.zeros((1, 2, 3, 4, 5, 6))), ValueError, ["rank", "6"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), with_r="yes"), TypeError, ["with_r", "bool"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), with_r=1), TypeError, ["with_r"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), data_format="HWC"), ValueError, ["data_format", "NHWC", "; got 'HWC'"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), data_format="NCW"), ValueError, ["data_format", "rank"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), data_format=3), ValueError, ["data_format must be one of", "; got 3"]),
    (dict(inputs=np.zeros((2, 3, 4, 1), np.complex64)), TypeError, ["inputs", "complex64"]),
    (dict(inputs=[["a"]]), TypeError, ["inputs"]),
    (dict(inputs=np.zeros((2, 3, 4, 1)), align_corners=None), TypeError, ["align_corners"]),
])
def test_add_coords_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        coordconv.add_coords(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_unknown_rank_rejected_with_clear_message():
    with tf.Graph().as_default():
        ph = tf.compat.v1.placeholder(tf.float32, None)
        with pytest.raises(ValueError, match="statically known rank"):
            coordconv.add_coords(ph)


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(filters=np.zeros((3, 3, 3, 4), np.float32)), ValueError, ["filters", "5 input channels"]),
    (dict(filters=np.zeros((3, 3, 5, 4), np.float32), with_r=True), ValueError, ["6 input channels", "r"]),
    (dict(filters=np.zeros((3, 5, 4), np.float32)), ValueError, ["filters", "rank 4"]),
    (dict(filters=np.zeros((3, 3, 5, 4), np.float32), padding="FULL"), ValueError, ["padding", "VALID", "; got 'FULL'"]),
    (dict(filters=np.zeros((3, 3, 5, 4), np.int32)), TypeError, ["filters", "floating"]),
])
def test_coord_conv2d_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        coordconv.coord_conv2d(np.zeros((1, 4, 4, 3), np.float32), **kwargs)
    for w in words:
        assert w in str(info.value)


def test_coord_conv2d_rejects_wrong_rank_input():
    with pytest.raises(ValueError, match=r"rank 4.*coord_conv2d"):
        coordconv.coord_conv2d(np.zeros((1, 4, 3), np.float32), np.zeros((3, 4, 2), np.float32))


def test_num_coord_channels():
    assert coordconv.num_coord_channels(2) == 2
    assert coordconv.num_coord_channels(2, with_r=True) == 3
    assert coordconv.num_coord_channels(3, True) == 4
    with pytest.raises(ValueError, match="num_spatial_dims"):
        coordconv.num_coord_channels(4)


def test_keras_lambda_coordconv_layer():
    import keras   # installed with TensorFlow: a missing one fails, not skips
    inp = keras.Input((None, None, 1))
    out = keras.layers.Conv2D(2, 1, use_bias=False)(keras.layers.Lambda(coordconv.add_coords)(inp))
    model = keras.Model(inp, out)
    x = _rand((2, 3, 5, 1))
    kernel = model.layers[-1].kernel.numpy()          # [1, 1, 3, 2]
    want = np.einsum("bhwc,co->bhwo", ref_add_coords(x), kernel[0, 0])
    np.testing.assert_allclose(model(x).numpy(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
       with_r=st.booleans(), align=st.booleans())
def test_add_coords_invariants(b, h, w, c, with_r, align):
    x = np.random.default_rng(h * 31 + w).normal(size=(b, h, w, c)).astype(np.float32)
    out = coordconv.add_coords(x, with_r=with_r, align_corners=align).numpy()
    assert out.shape == (b, h, w, c + 2 + with_r)
    np.testing.assert_array_equal(out[..., :c], x)                # passthrough
    if b == 0:
        return
    xs, ys = out[0, ..., c], out[0, ..., c + 1]
    np.testing.assert_allclose(xs, -xs[:, ::-1], atol=1e-6)         # antisymmetric about the centre
    np.testing.assert_allclose(ys, -ys[::-1, :], atol=1e-6)
    if h == w:
        np.testing.assert_allclose(xs.T, ys, atol=1e-6)             # square: y is x transposed
    assert np.all(np.abs(xs) <= 1) and np.all(np.abs(ys) <= 1)
    if align and w > 1:
        assert xs[0, 0] == -1 and xs[0, -1] == 1                    # corner to corner
    if w > 1:
        assert np.all(np.diff(xs, axis=1) > 0)                      # increasing along the width
    if with_r:
        np.testing.assert_allclose(out[0, ..., -1] ** 2, xs ** 2 + ys ** 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[-1, ..., c:], out[0, ..., c:])  # same for every batch item
