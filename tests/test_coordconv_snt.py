"""coordconv_snt.CoordConv{1,2,3}D against hand-built convolutions over
explicitly concatenated NumPy coordinate channels with the same weights."""
import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

import coordconv_snt
from coordconv_snt import AddCoords, CoordConv1D, CoordConv2D, CoordConv3D


def _coords_np(spatial, with_r, align_corners=True):
    if align_corners:
        lin = [np.zeros(1) if n == 1 else np.linspace(-1, 1, n) for n in spatial]
    else:   # pixel centres (2 i + 1) / n - 1
        lin = [(2 * np.arange(n) + 1) / n - 1 for n in spatial]
    grids = np.meshgrid(*lin, indexing="ij")
    chans = [grids[a] for a in reversed(range(len(spatial)))]   # x, y, z
    if with_r:
        chans.append(np.sqrt(sum(c ** 2 for c in chans)))
    return np.stack(chans, -1)


def _concat_coords_np(x, with_r, align_corners=True):
    c = _coords_np(x.shape[1:-1], with_r, align_corners)
    return np.concatenate([x, np.broadcast_to(c, x.shape[:1] + c.shape)], -1).astype(x.dtype)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "VALID")])
def test_conv2d_equals_hand_built_conv(with_r, stride, padding):
    x = _rand((3, 7, 10, 2))
    mod = CoordConv2D(output_channels=5, kernel_shape=3, stride=stride, padding=padding,
                      with_r=with_r, b_init=snt.initializers.RandomNormal(seed=4),
                      w_init=snt.initializers.RandomNormal(seed=3))
    got = mod(x).numpy()
    assert mod.w.shape == (3, 3, 2 + 2 + with_r, 5)
    assert mod.b.shape == (5,)
    want = tf.nn.conv2d(_concat_coords_np(x, with_r), mod.w, strides=stride,
                        padding=padding) + mod.b
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    # and the coordinate channels actually matter: zeroing their weights
    # gives a plain conv that differs.
    plain = tf.nn.conv2d(x, mod.w[:, :, :2], strides=stride, padding=padding) + mod.b
    assert np.abs(got - plain.numpy()).max() > 1e-2


def test_conv2d_against_plain_snt_conv_with_copied_weights():
    x = _rand((2, 6, 4, 3))
    cc = CoordConv2D(4, kernel_shape=(3, 2), rate=2, with_r=True)
    out = cc(x)
    ref = snt.Conv2D(4, kernel_shape=(3, 2), rate=2)
    ref(_concat_coords_np(x, True))       # build
    ref.w.assign(cc.w)
    ref.b.assign(cc.b)
    np.testing.assert_allclose(out.numpy(), ref(_concat_coords_np(x, True)).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_conv2d_without_bias_and_variables():
    mod = CoordConv2D(2, 1, with_bias=False, name="cc")
    mod(tf.zeros([1, 3, 3, 1]))
    assert [v.shape for v in mod.trainable_variables] == [(1, 1, 3, 2)]
    assert mod.name == "cc"
    assert mod.num_coord_channels == 2


def test_constant_input_output_depends_on_position():
    # w reads only y: output equals y along the height.
    w = np.zeros((1, 1, 3, 1), np.float32)
    w[0, 0, 2, 0] = 2.0
    mod = CoordConv2D(1, 1, w_init=tf.constant_initializer(w), with_bias=False)
    out = mod(tf.ones([1, 5, 3, 1])).numpy()
    np.testing.assert_allclose(out[0, :, 1, 0], 2 * np.linspace(-1, 1, 5), rtol=1e-6)


def test_conv1d_and_conv3d_equal_hand_built():
    x1 = _rand((2, 9, 3))
    m1 = CoordConv1D(4, 3, with_r=True)
    np.testing.assert_allclose(
        m1(x1).numpy(),
        (tf.nn.conv1d(_concat_coords_np(x1, True), m1.w, 1, "SAME") + m1.b).numpy(),
        rtol=1e-5, atol=1e-5)
    x3 = _rand((1, 3, 4, 5, 2))
    m3 = CoordConv3D(3, 2, padding="VALID")
    assert m3(x3).shape == (1, 2, 3, 4, 3)
    np.testing.assert_allclose(
        m3(x3).numpy(),
        (tf.nn.conv3d(_concat_coords_np(x3, False), m3.w, [1] * 5, "VALID") + m3.b).numpy(),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module,shape,conv", [
    (CoordConv1D, (2, 9, 2), tf.nn.conv1d),
    (CoordConv2D, (2, 6, 8, 2), tf.nn.conv2d),
    (CoordConv3D, (1, 4, 5, 6, 1), tf.nn.conv3d),
], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_align_corners_and_rate_reach_the_coordinates(module, shape, conv, align_corners):
    x = _rand(shape)
    n = len(shape) - 2
    mod = module(3, 3, rate=2, with_r=True, align_corners=align_corners)
    got = mod(x).numpy()
    inputs = _concat_coords_np(x, True, align_corners)
    strides = 1 if n == 1 else [1] * (n + 2)
    want = conv(inputs, mod.w, strides, "SAME", dilations=2 if n == 1 else [1] + [2] * n + [1])
    np.testing.assert_allclose(got, (want + mod.b).numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_dims_tf_function_and_gradients():
    mod = CoordConv2D(3, 3, with_r=True)
    mod(tf.zeros([1, 4, 4, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2])])
    def f(t):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(mod(t) ** 2)
        return y, tape.gradient(y, mod.trainable_variables)

    for shape in [(2, 5, 7, 2), (1, 3, 2, 2)]:
        x = _rand(shape)
        y, grads = f(x)
        want = tf.nn.conv2d(_concat_coords_np(x, True), mod.w, 1, "SAME") + mod.b
        np.testing.assert_allclose(y.numpy(), np.sum(want.numpy() ** 2), rtol=1e-4)
        assert all(g is not None and g.shape == v.shape
                   for g, v in zip(grads, mod.trainable_variables))


def test_xla_and_float64():
    mod = CoordConv2D(2, 3)
    x = _rand((2, 4, 6, 1))
    eager = mod(x)
    xla = tf.function(mod.__call__, jit_compile=True)(x)
    np.testing.assert_allclose(xla.numpy(), eager.numpy(), rtol=1e-5, atol=1e-5)
    m64 = CoordConv2D(2, 3)
    out = m64(tf.constant(x, tf.float64))
    assert out.dtype == tf.float64 and m64.w.dtype == tf.float64


def test_integer_input_cast_to_float32():
    mod = CoordConv2D(2, 3)
    out = mod(np.ones((1, 4, 4, 1), np.uint8))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(
        out.numpy(),
        (tf.nn.conv2d(_concat_coords_np(np.ones((1, 4, 4, 1), np.float32), False),
                      mod.w, 1, "SAME") + mod.b).numpy(), rtol=1e-5, atol=1e-6)


def test_tf1_graph_session():
    x = _rand((2, 3, 5, 1))
    with tf.Graph().as_default():
        mod = CoordConv2D(2, 3, with_r=True)
        ph = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1])
        out = mod(ph)
        ref = tf.nn.conv2d(_concat_coords_np(x, True), mod.w, 1, "SAME") + mod.b
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            got, want = sess.run([out, ref], {ph: x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(output_channels=0, kernel_shape=3), ValueError, "output_channels"),
    (dict(output_channels=2.5, kernel_shape=3), ValueError, "output_channels"),
    (dict(output_channels=2, kernel_shape=0), ValueError, "kernel_shape"),
    (dict(output_channels=2, kernel_shape=(3, 3, 3)), ValueError, "kernel_shape"),
    (dict(output_channels=2, kernel_shape=3, stride=0), ValueError, "stride"),
    (dict(output_channels=2, kernel_shape=3, rate="2"), ValueError, "rate"),
    (dict(output_channels=2, kernel_shape=3, padding="FULL"), ValueError, "padding"),
    (dict(output_channels=2, kernel_shape=3, data_format="NCDHW"), ValueError, "data_format"),
    (dict(output_channels=2, kernel_shape=3, with_r="no"), TypeError, "with_r"),
])
def test_constructor_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        CoordConv2D(**kwargs)


def test_call_wrong_rank():
    with pytest.raises(ValueError, match="rank 4"):
        CoordConv2D(2, 3)(tf.zeros([2, 5, 1]))


def test_module_exports():
    assert set(coordconv_snt.__all__) == {"AddCoords", "CoordConv1D", "CoordConv2D", "CoordConv3D"}


def test_saved_model_round_trip(tmp_path):
    mod = CoordConv2D(3, 3, with_r=True)
    mod(tf.zeros([1, 4, 4, 2]))
    mod.serve = tf.function(mod.__call__, input_signature=[tf.TensorSpec([None, None, None, 2])])
    tf.saved_model.save(mod, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    x = _rand((2, 5, 7, 2))
    np.testing.assert_allclose(loaded.serve(x).numpy(), mod(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,options", [
    ((2, 3, 5, 1), dict()), ((2, 3, 5, 1), dict(with_r=True, align_corners=False)),
    ((1, 7, 2), dict(with_r=True)), ((1, 2, 3, 4, 2), dict(align_corners=False)),
    ((2, 1, 3, 5), dict(data_format="NCHW", with_r=True))])
def test_add_coords_module_is_the_functional_call_and_numpy(shape, options):
    import coordconv
    x = _rand(shape)
    got = AddCoords(**options)(x).numpy()
    np.testing.assert_array_equal(got, coordconv.add_coords(x, **options).numpy())
    if options.get("data_format") is None:   # channels-last against NumPy's channels
        want = _concat_coords_np(x, options.get("with_r", False), options.get("align_corners", True))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert AddCoords(**options).variables == ()


def test_add_coords_module_fails_at_construction_with_the_functional_message():
    import coordconv
    with pytest.raises(ValueError) as functional:
        coordconv.add_coords(np.zeros((1, 2, 2, 1)), data_format="HWC")
    with pytest.raises(ValueError, match=str(functional.value).replace("(", r"\(").replace(")", r"\)")):
        AddCoords(data_format="HWC")
    assert "; got 'HWC'" in str(functional.value)
    with pytest.raises(TypeError, match="with_r must be True or False"):
        AddCoords(with_r="no")
    with pytest.raises(TypeError, match="align_corners must be True or False"):
        AddCoords(align_corners=None)
