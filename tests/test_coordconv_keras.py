"""coordconv_keras: AddCoords and CoordConv1D/2D/3D over coordconv.py.

coordconv.py is checked against NumPy in test_coordconv.py; here the layers
must give its numbers, build their kernel for the coordinate channels, keep
every Keras convolution argument through their config, and survive saving,
export, TFLite, mixed precision and XLA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import coordconv
import coordconv_keras
from coordconv_keras import AddCoords, CoordConv1D, CoordConv2D, CoordConv3D
from tests import keras_helpers

RNG = np.random.default_rng(5)
pytestmark = pytest.mark.usefixtures("per_test_rng")

CONVS = {1: CoordConv1D, 2: CoordConv2D, 3: CoordConv3D}


def inputs(shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 7, 3), (2, 5, 6, 2), (1, 3, 4, 5, 2)])
@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("align_corners", [True, False])
def test_add_coords_equals_the_functional_add_coords(shape, with_r, align_corners):
    x = inputs(shape)
    layer = AddCoords(with_r, align_corners)
    want = coordconv.add_coords(x, with_r, align_corners=align_corners)
    np.testing.assert_array_equal(layer(x).numpy(), want.numpy())
    assert layer.compute_output_shape(shape) == tuple(want.shape)
    assert layer.compute_output_shape((None,) * (len(shape) - 1) + (shape[-1],)) == \
        (None,) * (len(shape) - 1) + (want.shape[-1],)


def test_add_coords_channels_first():
    x = inputs((2, 3, 4, 5))
    layer = AddCoords(with_r=True, data_format="channels_first")
    want = coordconv.add_coords(x, True, data_format="NCHW")
    np.testing.assert_array_equal(layer(x).numpy(), want.numpy())
    assert layer.compute_output_shape((None, 3, 4, 5)) == (None, 6, 4, 5)


def test_unknown_spatial_sizes():
    inputs = keras.Input((None, None, 2))
    conv = CoordConv2D(3, 3, padding="same", with_r=True)
    model = keras.Model(inputs, {"conv": conv(inputs), "added": AddCoords()(inputs)})
    for shape in ((2, 5, 7, 2), (1, 8, 3, 2)):
        x = RNG.standard_normal(shape).astype(np.float32)
        got = model.predict(x, verbose=0)
        np.testing.assert_array_equal(got["added"], coordconv.add_coords(x).numpy())
        want = coordconv.coord_conv2d(x, conv.kernel, with_r=True) + conv.bias
        np.testing.assert_allclose(got["conv"], want.numpy(), rtol=1e-5, atol=1e-5)


def test_coordinates_by_hand():
    """x along the width, y along the height, -1 to 1 corner to corner (the paper)."""
    out = AddCoords(with_r=True)(np.zeros((1, 2, 3, 1), np.float32)).numpy()[0]
    np.testing.assert_array_equal(out[..., 1], [[-1, 0, 1], [-1, 0, 1]])
    np.testing.assert_array_equal(out[..., 2], [[-1, -1, -1], [1, 1, 1]])
    np.testing.assert_allclose(out[..., 3], np.sqrt(out[..., 1] ** 2 + out[..., 2] ** 2))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_coord_conv_equals_the_functional_coord_conv(ndim):
    shape = (2,) + (6, 5, 4)[:ndim] + (3,)
    x = inputs(shape)
    conv = CONVS[ndim](4, 3, strides=2, padding="same", activation="relu", with_r=True,
                       align_corners=False, bias_initializer="random_normal")
    got = conv(x)
    assert tuple(conv.kernel.shape) == (3,) * ndim + (3 + ndim + 1, 4)
    want = coordconv.coord_conv(x, conv.kernel, strides=2, padding="SAME", with_r=True,
                                align_corners=False) + conv.bias
    np.testing.assert_allclose(got.numpy(), tf.nn.relu(want).numpy(), rtol=1e-6, atol=1e-6)
    assert conv.compute_output_shape(shape) == tuple(got.shape)


def test_coord_conv_1d_causal_and_2d_dilated_channels_first():
    x = inputs((2, 9, 2))
    conv = CoordConv1D(3, 3, padding="causal", use_bias=False)
    got = conv(x).numpy()
    augmented = np.pad(coordconv.add_coords(x).numpy(), [[0, 0], [2, 0], [0, 0]])
    want = tf.nn.conv1d(augmented, conv.kernel, 1, "VALID").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    x = inputs((2, 3, 8, 7))
    conv = CoordConv2D(4, 3, dilation_rate=2, data_format="channels_first", use_bias=False)
    got = conv(x).numpy()
    nhwc = coordconv.coord_conv2d(np.transpose(x, [0, 2, 3, 1]), conv.kernel, padding="VALID",
                                  dilations=2)
    np.testing.assert_allclose(got, np.transpose(nhwc.numpy(), [0, 3, 1, 2]), rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_kernel_and_the_input():
    x = tf.constant(inputs((2, 5, 6, 2)))
    conv = CoordConv2D(3, 3, with_r=True)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = tf.reduce_sum(conv(x) ** 2)
        ref = tf.reduce_sum((coordconv.coord_conv2d(x, conv.kernel, padding="VALID", with_r=True)
                             + conv.bias) ** 2)
    for g, w in zip(tape.gradient(loss, [x, conv.kernel, conv.bias]),
                    tape.gradient(ref, [x, conv.kernel, conv.bias])):
        assert np.abs(w.numpy()).max() > 0
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    # The kernel's coordinate slices get a gradient of their own: the layer sees position.
    assert np.abs(tape.gradient(loss, conv.kernel).numpy()[:, :, 2:]).max() > 0


def test_every_convolution_argument_survives_the_config():
    conv = CoordConv2D(filters=6, kernel_size=(3, 5), strides=(1, 2), padding="same",
                       data_format="channels_last", dilation_rate=1, groups=1,
                       activation="tanh", use_bias=False, kernel_initializer="he_normal",
                       bias_initializer="ones", kernel_regularizer=keras.regularizers.L2(0.01),
                       bias_regularizer="l1", activity_regularizer="l2",
                       kernel_constraint=keras.constraints.MaxNorm(2.0), bias_constraint="non_neg",
                       with_r=True, align_corners=False, name="cc")
    config = conv.get_config()
    clone = CoordConv2D.from_config(config)
    assert clone.get_config() == config
    assert (clone.with_r, clone.align_corners, clone.kernel_size, clone.strides) == \
        (True, False, (3, 5), (1, 2))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(conv))
    assert type(restored) is CoordConv2D and restored.get_config() == config
    layer = AddCoords(with_r=True, align_corners=False, data_format="channels_first")
    clone = AddCoords.from_config(layer.get_config())
    assert (clone.with_r, clone.align_corners, clone.data_format) == \
        (True, False, "channels_first")


def coordconv_model():
    images = keras.Input((9, 8, 2), name="images")
    signal = keras.Input((10, 3), name="signal")
    x = CoordConv2D(4, 3, padding="same", activation="relu", with_r=True)(images)
    x = AddCoords(align_corners=False)(x)
    x = CoordConv2D(3, 3, strides=2)(x)
    volume = keras.layers.Reshape((4, 3, 3, 1))(x)
    v = CoordConv3D(2, 2, padding="same", with_r=True)(volume)
    s = CoordConv1D(2, 3, padding="causal")(signal)
    model = keras.Model({"images": images, "signal": signal},
                        {"image": x, "volume": v, "signal": s})
    for w in model.weights:
        w.assign(w + 0.1 * RNG.standard_normal(w.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def model_and_inputs():
    return coordconv_model(), {"images": inputs((3, 9, 8, 2)), "signal": inputs((3, 10, 3))}


def test_save_and_reload_predict_identically(model_and_inputs, tmp_path):
    model, x = model_and_inputs
    want = keras_helpers.predict(model, x)
    got = keras_helpers.reload_predict(model, x, str(tmp_path / "cc.keras"))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_export_and_tflite_give_keras_numbers(model_and_inputs, tmp_path):
    model, x = model_and_inputs
    want = keras_helpers.predict(model, x)
    exported = keras_helpers.export_predict(model, x, str(tmp_path / "exported"))
    lite = keras_helpers.tflite_predict(model, x)
    for k in want:   # sums of ~100 products of order-1 numbers in float32
        np.testing.assert_allclose(exported[k], want[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(lite[k], want[k], rtol=1e-5, atol=1e-5)


def test_fit_with_jit_compile_takes_the_eager_gradient_step(model_and_inputs):
    base, x = model_and_inputs
    targets = {k: v + 0.1 for k, v in base(x).items()}
    with tf.GradientTape() as tape:
        outputs = base(x)
        loss = tf.add_n([tf.reduce_mean((outputs[k] - targets[k]) ** 2) for k in outputs])
    grads = tape.gradient(loss, base.trainable_variables)
    want = [v.numpy() - 0.1 * g.numpy() for v, g in zip(base.trainable_variables, grads)]
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    model.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    model.fit(x, targets, batch_size=3, epochs=1, shuffle=False, verbose=0)
    for v, w in zip(model.trainable_variables, want):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6)


def test_mixed_float16_outputs_half_and_trains():
    x = inputs((4, 9, 8, 2))
    images = keras.Input((9, 8, 2))
    conv = CoordConv2D(3, 3, with_r=True, dtype="mixed_float16")
    added = AddCoords(dtype="mixed_float16")(images)
    model = keras.Model(images, {"conv": conv(images), "added": added})
    assert model.outputs[0].dtype == "float16" and conv.kernel.dtype == "float32"
    got = model.predict(x, verbose=0)
    assert got["conv"].dtype == np.float16 and got["added"].dtype == np.float16
    want = coordconv.coord_conv2d(x, conv.kernel, padding="VALID", with_r=True) + conv.bias
    np.testing.assert_allclose(got["conv"].astype(np.float32), want.numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(got["added"], coordconv.add_coords(x.astype(np.float16)).numpy())
    model.compile(keras.optimizers.Adam(1e-2), loss={"conv": "mse"})
    kernel = conv.kernel.numpy()
    history = model.fit(x, {"conv": np.zeros_like(got["conv"])}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and not np.array_equal(conv.kernel.numpy(), kernel)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_bad_arguments_fail_at_construction_with_the_functional_messages():
    x = inputs((1, 4, 4, 1))
    keras_helpers.same_error(lambda: coordconv.add_coords(x, with_r="yes"), lambda: AddCoords(with_r="yes"),
               TypeError)
    keras_helpers.same_error(lambda: coordconv.add_coords(x, align_corners=None),
               lambda: CoordConv2D(4, 3, align_corners=None), TypeError)
    with pytest.raises(ValueError, match="data_format must be one of 'channels_last', "
                                         "'channels_first'; got 'NHWC'"):
        AddCoords(data_format="NHWC")
    with pytest.raises(ValueError, match="filters"):      # Keras's own checks
        CoordConv2D(0, 3)


def test_bad_inputs_fail_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"inputs must have rank 4 \(\[B, H, W, C\]"):
        CoordConv2D(4, 3)(keras.Input((8, 8, 8, 1)))
    with pytest.raises(ValueError, match="inputs must have a known number of channels"):
        CoordConv2D(4, 3)(keras.Input((8, 8, None)))
    with pytest.raises(ValueError, match=r"inputs must have rank 3 or 4 or 5"):
        AddCoords()(keras.Input((8,)))
    conv = CoordConv2D(4, 3)
    conv(np.zeros((1, 5, 5, 2), np.float32))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 2"):
        conv(np.zeros((1, 5, 5, 3), np.float32))   # Keras's input_spec: the input's channels

