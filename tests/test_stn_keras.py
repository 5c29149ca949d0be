"""stn_keras: Keras 3 layers over stn.py, checked against the functional API.

The functional API is checked against PyTorch in test_stn.py; here every
layer must give its numbers (exactly where the same ops run), keep them
through save/load, export and TFLite, and fail on bad arguments with the
same messages, at construction where possible.
"""
import doctest
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import stn
import stn_keras
from stn_keras import GridSample, SpatialTransformer
from tests import keras_helpers

RNG = np.random.default_rng(7)
pytestmark = pytest.mark.usefixtures("per_test_rng")


def images(shape=(3, 12, 10, 2)):
    return RNG.random(shape).astype(np.float32)


def loc_net():
    return keras.Sequential([keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh")])


def perturb(layer, scale=0.1):
    """Moves every weight off its initial value (the head starts at zero)."""
    for v in layer.weights:
        v.assign(v + scale * RNG.standard_normal(v.shape).astype(v.dtype))


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("transform", sorted(stn.TRANSFORMS))
def test_starts_at_the_identity_for_every_family(transform):
    x = images()
    st = SpatialTransformer(loc_net(), transform, return_theta=True)
    out, theta = st(x)
    np.testing.assert_array_equal(out.numpy(), x)                 # exactly the input
    rows = theta.shape[1]
    np.testing.assert_array_equal(theta.numpy(), np.tile(np.eye(3)[:rows], (3, 1, 1)))
    assert st.head.units == stn.transform_family(transform).num_params


def test_seed_001_identity_in_a_functional_model():
    """The seed's usage note, in Keras: zero weights, identity bias, output == input."""
    inputs = keras.Input((40, 40, 3), name="images")
    loc = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(20, activation="tanh")])
    model = keras.Model(inputs, SpatialTransformer(loc)(inputs))
    x = images((2, 40, 40, 3))
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)


def test_given_theta_equals_the_functional_layer():
    x = images((2, 9, 9, 3))
    theta = (np.eye(2, 3) + RNG.normal(0, 0.2, (2, 2, 3))).astype(np.float32)
    st = SpatialTransformer(out_dims=(5, 6), padding_mode="border", interpolation="bicubic",
                            align_corners=True)
    expected = stn.spatial_transformer_network(x, theta, (5, 6), padding_mode="border",
                                               interpolation="bicubic", align_corners=True)
    np.testing.assert_array_equal(st(x, theta).numpy(), expected.numpy())
    assert st.weights == []


def test_given_theta_in_a_functional_model():
    """theta as a second Keras input, projective and flat."""
    x = images((2, 8, 8, 1))
    h = (np.eye(3).ravel()[:8] + RNG.normal(0, 0.05, (2, 8))).astype(np.float32)
    img_in, theta_in = keras.Input((8, 8, 1)), keras.Input((8,))
    st = SpatialTransformer(out_dims=(4, 5), return_theta=True)
    out, theta = st(img_in, theta_in)
    assert (out.shape, theta.shape) == ((None, 4, 5, 1), (None, 8))
    got, got_theta = keras.Model([img_in, theta_in], [out, theta]).predict([x, h], verbose=0)
    np.testing.assert_array_equal(got, stn.spatial_transformer_network(x, h, (4, 5)).numpy())
    np.testing.assert_array_equal(got_theta, h)


@pytest.mark.parametrize("transform", sorted(stn.TRANSFORMS))
def test_predicted_theta_is_the_head_applied_to_the_features(transform):
    """The layer = flatten(localization) @ kernel + bias -> family.theta -> warp (NumPy matmul)."""
    x = images()
    loc = loc_net()
    st = SpatialTransformer(loc, transform, out_dims=(7, 5), padding_mode="reflection",
                            return_theta=True)
    st(x)
    perturb(st.head)
    out, theta = st(x)
    features = loc(x).numpy().reshape(3, -1).astype(np.float64)
    params = features @ st.head.kernel.numpy() + st.head.bias.numpy()
    family = stn.transform_family(transform)
    expected_theta = family.theta(params.astype(np.float32))
    np.testing.assert_allclose(theta.numpy(), expected_theta.numpy(), rtol=1e-6, atol=1e-6)
    expected = stn.spatial_transformer_network(x, expected_theta, (7, 5), padding_mode="reflection")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=2e-5)


def test_constraints_fix_entries_and_count_parameters():
    st = SpatialTransformer(loc_net(), constraints=[[1.0, 0.0, None], [0.0, 1.0, None]],
                            return_theta=True)
    _, theta = st(images())
    assert st.head.units == 2
    np.testing.assert_array_equal(st.head.bias.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(theta.numpy(), np.tile(np.eye(2, 3), (3, 1, 1)))
    assert isinstance(st.constraints, stn.AffineWarpConstraints)


def test_grid_sample_equals_the_functional_sampler():
    x = images((2, 6, 7, 3))
    grid = RNG.uniform(-1.3, 1.3, (2, 4, 5, 2)).astype(np.float32)
    for options in (dict(), dict(align_corners=True, padding_mode="reflection",
                                 interpolation="nearest")):
        expected = stn.grid_sample(x, grid, **options).numpy()
        np.testing.assert_array_equal(GridSample(**options)(x, grid).numpy(), expected)
    img_in, grid_in = keras.Input((6, 7, 3)), keras.Input((4, 5, 2))
    assert GridSample()(img_in, grid_in).shape == (None, 4, 5, 3)


def test_compute_output_shape_matches_the_outputs():
    x = images()
    for st, args in ((SpatialTransformer(loc_net(), "projective", (5, 4), return_theta=True), (x,)),
                     (SpatialTransformer(loc_net(), "attention", return_theta=True), (x,)),
                     (SpatialTransformer(return_theta=True), (x, np.tile(np.eye(2, 3), (3, 1, 1)))),
                     (SpatialTransformer(out_dims=(3, 3)), (x, np.tile(np.eye(2, 3).ravel(), (3, 1)))),
                     (GridSample(), (x, np.zeros((3, 2, 5, 2), np.float32)))):
        outputs = st(*args)
        got = st.compute_output_shape(*[a.shape for a in args])
        want = tuple(o.shape for o in outputs) if isinstance(outputs, tuple) else outputs.shape
        assert got == want


def test_unknown_spatial_sizes():
    """One model, images of two sizes: a pooled localization gives features of a static size."""
    inputs = keras.Input((None, None, 2))
    loc = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])
    st = SpatialTransformer(loc, "attention", return_theta=True)
    warped, theta = st(inputs)
    assert warped.shape == (None, None, None, 2) and theta.shape == (None, 2, 3)
    model = keras.Model(inputs, warped)
    perturb(st.head)
    for shape in ((2, 9, 7, 2), (3, 12, 16, 2)):
        x = images(shape)
        want = stn.spatial_transformer_network(x, st(x)[1])
        np.testing.assert_array_equal(model.predict(x, verbose=0), want.numpy())


def test_volumes_compute_their_output_shape():
    st = SpatialTransformer(out_dims=(4, 5, 6))
    assert st.compute_output_shape((None, 8, 8, 8, 2), (None, 3, 4)) == (None, 4, 5, 6, 2)
    assert GridSample().compute_output_shape((2, 8, 8, 8, 1), (2, 3, 4, 5, 3)) == (2, 3, 4, 5, 1)


# --------------------------------------------------------------------------
# gradients and training
# --------------------------------------------------------------------------

def test_gradients_equal_those_of_the_functional_layer():
    x = tf.constant(images())
    st = SpatialTransformer(loc_net(), "similarity", return_theta=True)
    st(x)
    perturb(st)
    weight = tf.constant(RNG.standard_normal((3, 12, 10, 2)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out, _ = st(x)
        loss = tf.reduce_sum(out * weight)
        features = tf.reshape(st.localization(x), [3, -1])
        theta = stn.similarity_theta(tf.matmul(features, st.head.kernel) + st.head.bias)
        ref = tf.reduce_sum(stn.spatial_transformer_network(x, theta) * weight)
    variables = [x] + st.trainable_variables
    got, want = tape.gradient(loss, variables), tape.gradient(ref, variables)
    assert len(st.trainable_variables) == 6               # localization (4) + head (2)
    for g, w in zip(got, want):
        assert np.abs(w.numpy()).max() > 0
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


class Ones(keras.layers.Layer):
    """A localization without build() or compute_output_shape(): one constant feature."""

    def call(self, x):
        return tf.ones([tf.shape(x)[0], 1], x.dtype)


def test_fit_learns_a_translation():
    """model.fit reaches the head: it learns to undo a 3-pixel shift."""
    yy, xx = np.mgrid[0:16, 0:16]
    target = np.exp(-((xx - 7.5) ** 2 + (yy - 7.5) ** 2) / 8.0)[None, :, :, None]
    target = target.astype(np.float32)
    shifted = np.roll(target, 3, axis=2)
    st = SpatialTransformer(Ones(), constraints=stn.AffineWarpConstraints.translation_only(),
                            return_theta=True)
    inputs = keras.Input((16, 16, 1))
    out, theta = st(inputs)
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    first = model.evaluate(shifted, target, verbose=0)
    model.fit(shifted.repeat(150, 0), target.repeat(150, 0), batch_size=1, verbose=0)
    assert model.evaluate(shifted, target, verbose=0) < 0.05 * first
    learned = keras.Model(inputs, theta).predict(shifted, verbose=0)
    # 3 pixels of 16 = 0.375 normalised; theta reads from 3 px to the right.
    np.testing.assert_allclose(learned[0, :, 2], [0.375, 0.0], atol=0.03)


# --------------------------------------------------------------------------
# Keras citizenship: config, saving, policies, XLA, export, TFLite
# --------------------------------------------------------------------------

def test_config_round_trip():
    st = SpatialTransformer(loc_net(), "affine", (5, 6), align_corners=True,
                            padding_mode="border", interpolation="nearest",
                            constraints=stn.AffineWarpConstraints.no_shear(), return_theta=True,
                            name="st")
    config = st.get_config()
    clone = SpatialTransformer.from_config(config)
    assert clone.get_config() == config
    for name in ("transform", "out_dims", "align_corners", "padding_mode", "interpolation",
                 "return_theta", "name"):
        assert getattr(clone, name) == getattr(st, name), name
    assert clone.constraints.constraints == st.constraints.constraints
    assert isinstance(clone.localization, keras.Sequential)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(st))
    assert type(restored) is SpatialTransformer and restored.out_dims == (5, 6)
    grid = GridSample(align_corners=True, padding_mode="border", interpolation="bicubic")
    clone = GridSample.from_config(grid.get_config())
    assert (clone.align_corners, clone.padding_mode, clone.interpolation) == \
        (True, "border", "bicubic")


def stn_model():
    """A functional model with a predicted and a given transform (named inputs, dict outputs)."""
    img_in = keras.Input((12, 10, 2), name="images")
    theta_in = keras.Input((2, 3), name="theta")
    warped, theta = SpatialTransformer(loc_net(), "similarity", (8, 8),
                                       padding_mode="border", return_theta=True)(img_in)
    given = SpatialTransformer(interpolation="bicubic")(img_in, theta_in)
    grid = keras.layers.Reshape((3, 4, 2))(keras.layers.Dense(24, activation="tanh")(
        keras.layers.Flatten()(warped)))
    sampled = GridSample(align_corners=True)(img_in, grid)
    model = keras.Model({"images": img_in, "theta": theta_in},
                        {"warped": warped, "theta": theta, "given": given, "sampled": sampled})
    perturb(model)
    return model


def stn_inputs(batch=3):
    theta = (np.eye(2, 3) + RNG.normal(0, 0.1, (batch, 2, 3))).astype(np.float32)
    return {"images": images((batch, 12, 10, 2)), "theta": theta}


@pytest.fixture(scope="module")
def model_and_inputs():
    return stn_model(), stn_inputs()


def test_save_and_reload_predict_identically(model_and_inputs, tmp_path):
    model, inputs = model_and_inputs
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.reload_predict(model, inputs, str(tmp_path / "stn.keras"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_export_serves_the_same_numbers(model_and_inputs, tmp_path):
    model, inputs = model_and_inputs
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.export_predict(model, inputs, str(tmp_path / "exported"))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_tflite_equals_keras(model_and_inputs):
    model, inputs = model_and_inputs
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.tflite_predict(model, inputs)
    assert set(got) == set(want)
    for k in want:   # images in [0, 1]: float32 round-off of the coordinates and the sums
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6)


def test_fit_with_jit_compile_takes_the_eager_gradient_step(model_and_inputs):
    """One XLA-compiled SGD step of fit = the step from an eager GradientTape."""
    base, _ = model_and_inputs
    inputs = stn_inputs(8)
    targets = {k: v + 0.1 for k, v in base(inputs).items()}
    with tf.GradientTape() as tape:
        outputs = base(inputs)
        loss = tf.add_n([tf.reduce_mean((outputs[k] - targets[k]) ** 2) for k in outputs])
    grads = tape.gradient(loss, base.trainable_variables)
    want = [v.numpy() - 0.1 * g.numpy() for v, g in zip(base.trainable_variables, grads)]
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    model.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    model.fit(inputs, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v, w, before in zip(model.trainable_variables, want, base.trainable_variables):
        assert not np.array_equal(v.numpy(), before.numpy())
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6)
    got, eager = keras_helpers.predict(model, inputs), model(inputs)
    for k in got:   # predict runs under XLA too
        np.testing.assert_allclose(got[k], eager[k].numpy(), rtol=1e-5, atol=1e-6)


def test_mixed_float16_outputs_half_keeps_the_head_in_float32_and_trains(mixed_float16):
    x = images((4, 12, 10, 2))
    inputs = keras.Input((12, 10, 2))
    st = SpatialTransformer(loc_net(), "affine", return_theta=True)
    warped, theta = st(inputs)
    assert warped.dtype == "float16" and theta.dtype == "float16"
    assert st.head.kernel.dtype == "float32" and st.head.compute_dtype == "float32"
    model = keras.Model(inputs, {"warped": warped, "theta": theta})
    got = model.predict(x, verbose=0)
    assert got["warped"].dtype == np.float16
    np.testing.assert_array_equal(got["warped"], x.astype(np.float16))   # identity, exactly
    model.compile(keras.optimizers.Adam(1e-2), loss={"warped": "mse"})
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    bias = st.head.bias.numpy()
    history = model.fit(x, {"warped": x[:, ::-1]}, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(st.head.bias.numpy(), bias)
    # Features in float16, head in float32: theta's error is the final cast only.
    features = st.localization(x).numpy().reshape(4, -1).astype(np.float64)
    params = features @ st.head.kernel.numpy() + st.head.bias.numpy()
    np.testing.assert_allclose(st(x)[1].numpy(), params.reshape(4, 2, 3), rtol=2e-3, atol=1e-4)


def test_mixed_bfloat16_and_float64_policies():
    x = images((2, 12, 10, 2))
    out = SpatialTransformer(loc_net(), dtype="mixed_bfloat16")(x)
    assert out.dtype == tf.bfloat16
    st = SpatialTransformer(keras.layers.Dense(3, dtype="float64"), "attention", dtype="float64")
    out = st(x.astype(np.float64))
    assert out.dtype == tf.float64 and st.head.kernel.dtype == "float64"
    np.testing.assert_array_equal(out.numpy(), x)


# --------------------------------------------------------------------------
# errors: the functional API's messages, at construction where possible
# --------------------------------------------------------------------------

def same_error(functional, layer, kind=ValueError):
    with pytest.raises(kind) as want:
        functional()
    with pytest.raises(kind) as got:
        layer()
    assert str(got.value) == str(want.value)


def test_bad_options_fail_at_construction_with_the_functional_messages():
    x, theta = images(), np.tile(np.eye(2, 3, dtype=np.float32), (3, 1, 1))
    same_error(lambda: stn.spatial_transformer_network(x, theta, padding_mode="wrap"),
               lambda: SpatialTransformer(padding_mode="wrap"))
    same_error(lambda: stn.grid_sample(x, theta[:, None], interpolation="area"),
               lambda: GridSample(interpolation="area"))
    same_error(lambda: stn.spatial_transformer_network(x, theta, align_corners=1),
               lambda: SpatialTransformer(align_corners=1), TypeError)
    # The layer also takes volumes' (depth, height, width), so it says so.
    with pytest.raises(ValueError, match=r"out_dims must be two or three positive integers "
                                         r"\(height, width\) or \(depth, height, width\); got \(0, 4\)"):
        SpatialTransformer(out_dims=(0, 4))
    same_error(lambda: stn.transform_family("tsp"),
               lambda: SpatialTransformer(loc_net(), "tsp"))
    same_error(lambda: stn.transform_family("attention",
                                            constraints=stn.AffineWarpConstraints.scale_only()),
               lambda: SpatialTransformer(loc_net(), "attention",
                                          constraints=stn.AffineWarpConstraints.scale_only()))
    with pytest.raises(ValueError, match="constraints must be 2x3"):
        SpatialTransformer(constraints=[[1, 0], [0, 1]])
    with pytest.raises(TypeError, match="localization must be a Keras layer or model"):
        SpatialTransformer(lambda x: x)
    with pytest.raises(TypeError, match="return_theta must be True or False"):
        SpatialTransformer(return_theta="yes")


def test_bad_inputs_fail_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"images must have rank 4 or 5 \(\[B, H, W, C\]"):
        SpatialTransformer(loc_net())(keras.Input((8, 8)))
    with pytest.raises(ValueError, match="out_dims must have 2 sizes"):
        SpatialTransformer(out_dims=(4, 4, 4))(keras.Input((8, 8, 1)), keras.Input((6,)))
    with pytest.raises(ValueError, match="without a localization network needs theta"):
        SpatialTransformer()(keras.Input((8, 8, 1)))
    with pytest.raises(ValueError, match="localization must produce features of a static size"):
        SpatialTransformer(keras.layers.Conv2D(2, 3))(keras.Input((None, None, 1)))
    with pytest.raises(ValueError, match="images must have rank 4 or 5"):
        GridSample()(keras.Input((8, 8)), keras.Input((8, 8, 2)))


def test_a_model_with_all_three_layers_trains_and_reloads_in_a_fresh_process(tmp_path):
    """The issue's definition of done: STN + CoordConv + DSNT, fit, save, plain load_model."""
    from coordconv_keras import CoordConv2D
    from dsnt_keras import DSNT, EuclideanLoss, JSRegLoss

    images = keras.Input((16, 16, 1), name="images")
    loc = keras.Sequential([CoordConv2D(4, 3, strides=2, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(8, activation="relu")])
    x = SpatialTransformer(loc, "affine")(images)
    x = CoordConv2D(8, 3, padding="same", activation="relu", with_r=True)(x)
    heatmaps, coords = DSNT()(keras.layers.Conv2D(2, 1)(x))
    model = keras.Model(images, {"coords": coords, "heatmaps": heatmaps})
    x = RNG.random((16, 16, 16, 1)).astype(np.float32)
    centres = RNG.uniform(-0.8, 0.8, (16, 2, 2)).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2),
                  loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)})
    history = model.fit(x, {"coords": centres, "heatmaps": centres}, batch_size=8, epochs=2,
                        verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert not np.allclose(model.get_layer(index=1).head.kernel.numpy(), 0)   # the STN trained
    path = str(tmp_path / "all.keras")
    model.save(path)
    want = keras_helpers.predict(model, {"images": x})
    got = keras_helpers.fresh_process_reload_predict(
        path, {"images": x}, ["stn_keras", "dsnt_keras", "coordconv_keras"])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_other_keras_backends_are_refused_on_import():
    """Keras with a non-TensorFlow backend (torch is installed as a reference): a clear ImportError."""
    script = ("import importlib\n"
              "for name in ('stn_keras', 'dsnt_keras', 'coordconv_keras'):\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except ImportError as e:\n"
              "        print(e)\n")
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=keras_helpers.ROOT)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, cwd=keras_helpers.ROOT)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stdout + done.stderr[-2000:]
    for name, line in zip(("stn_keras", "dsnt_keras", "coordconv_keras"), lines):
        assert line.startswith(f"{name} needs Keras's TensorFlow backend")
        assert "KERAS_BACKEND='torch'" in line


def test_doctests():
    result = doctest.testmod(stn_keras, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0
