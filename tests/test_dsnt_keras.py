"""dsnt_keras: the DSNT layer and losses over dsnt.py, checked against the functional API.

dsnt.py is checked against dsntnn and NumPy in test_dsnt.py; here the layer
must give its numbers exactly, the losses must keep Keras's
``(y_true, y_pred)`` contract (a swapped pair would fail), and models must
survive saving, export, TFLite, mixed precision and XLA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dsnt
import dsnt_keras
from dsnt_keras import (DSNT, EuclideanLoss, JSRegLoss, KLRegLoss, L1Loss, MSELoss,
                        VarianceRegLoss)
from tests import keras_helpers

RNG = np.random.default_rng(11)
pytestmark = pytest.mark.usefixtures("per_test_rng")

def _has_3d_dsnt():
    try:
        dsnt.dsnt(tf.zeros([1, 2, 2, 2, 1]))
    except Exception:   # rank 5 refused: the core has no volumes yet
        return False
    return True


needs_3d_dsnt = pytest.mark.skipif(not _has_3d_dsnt(), reason="3-D DSNT not merged yet")

COORD_LOSSES = [(EuclideanLoss, dsnt.euclidean_loss), (MSELoss, dsnt.mse_loss),
                (L1Loss, dsnt.l1_loss)]
REG_LOSSES = [(JSRegLoss, dsnt.js_reg_loss), (KLRegLoss, dsnt.kl_reg_loss)]


def logits(shape):
    return (3 * RNG.standard_normal(shape)).astype(np.float32)


def targets(shape):
    return RNG.uniform(-0.9, 0.9, shape).astype(np.float32)


# --------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 5, 7, 1), (3, 6, 4, 3)])
@pytest.mark.parametrize("method", dsnt.METHODS[:4])
def test_layer_equals_the_functional_dsnt(shape, method):
    x = logits(shape)
    layer = DSNT(method)
    got = layer(x)
    want = dsnt.dsnt(x, method=method)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    assert layer.compute_output_shape(shape) == tuple(tuple(w.shape) for w in want)
    assert layer.weights == []


@pytest.mark.parametrize("shape", [(None, 5, 7), (None, 5, 7, 1), (None, 6, 4, 3),
                                   (None, None, None, 2), (4, 6, 4, None)])
def test_compute_output_shape_is_the_symbolic_shape_of_the_functional_dsnt(shape):
    """Keras's shapes (from compute_output_shape) = what tracing dsnt.dsnt gives."""
    traced = tf.function(dsnt.dsnt).get_concrete_function(tf.TensorSpec(shape)).structured_outputs
    symbolic = DSNT()(keras.Input(batch_shape=shape))
    assert tuple(s.shape for s in symbolic) == tuple(tuple(t.shape) for t in traced)


def test_unknown_sizes_in_a_compiled_model():
    inputs = keras.Input((None, None, 3))
    heatmaps, coords = DSNT("relu")(inputs)
    model = keras.Model(inputs, {"heatmaps": heatmaps, "coords": coords})
    for shape in ((2, 5, 7, 3), (4, 9, 3, 3)):
        x = logits(shape)
        got, want = model.predict(x, verbose=0), dsnt.dsnt(x, method="relu")
        np.testing.assert_array_equal(got["heatmaps"], want[0].numpy())
        np.testing.assert_array_equal(got["coords"], want[1].numpy())


def test_volumes_compute_their_output_shape():
    """[B, D, H, W, K] -> the same and (x, y, z) per point, also for K = 1 (DESIGN.md)."""
    assert DSNT().compute_output_shape((None, 4, 5, 6, 3)) == ((None, 4, 5, 6, 3), (None, 3, 3))
    assert DSNT().compute_output_shape((2, 4, 5, 6, 1)) == ((2, 4, 5, 6, 1), (2, 1, 3))


@needs_3d_dsnt
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 1), (2, 3, 4, 5, 3)], ids=["K1", "K3"])
def test_volumes_equal_the_functional_dsnt(shape):
    x = logits(shape)
    layer = DSNT()
    got, want = layer(x), dsnt.dsnt(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    assert layer.compute_output_shape(shape) == (shape, (2, shape[-1], 3))
    assert tuple(tuple(w.shape) for w in want) == (shape, (2, shape[-1], 3))


@needs_3d_dsnt
def test_volume_coordinates_by_hand():
    """A delta at voxel (d, i, j) of D x H x W: ((2j + 1)/W - 1, (2i + 1)/H - 1, (2d + 1)/D - 1)."""
    x = np.full((1, 2, 4, 5, 1), -1e4, np.float32)
    x[0, 1, 2, 3, 0] = 0.0
    _, coords = DSNT()(x)
    np.testing.assert_allclose(coords.numpy(), [[[0.4, 0.25, 0.5]]], rtol=0, atol=1e-6)


@needs_3d_dsnt
@pytest.mark.parametrize("shape", [(None, 3, 4, 5, 1), (None, None, None, None, 2),
                                   (4, 3, 4, 5, None)])
def test_volumes_compute_the_symbolic_shape_of_the_functional_dsnt(shape):
    traced = tf.function(dsnt.dsnt).get_concrete_function(tf.TensorSpec(shape)).structured_outputs
    symbolic = DSNT()(keras.Input(batch_shape=shape))
    assert tuple(s.shape for s in symbolic) == tuple(tuple(t.shape) for t in traced)


def test_gradient_equals_that_of_the_functional_dsnt():
    x = tf.constant(logits((2, 6, 5, 3)))
    w_maps, w_coords = (tf.constant(RNG.standard_normal(s).astype(np.float32))
                        for s in [(2, 6, 5, 3), (2, 3, 2)])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        maps, coords = DSNT()(x)
        loss = tf.reduce_sum(maps * w_maps) + tf.reduce_sum(coords * w_coords)
        maps, coords = dsnt.dsnt(x)
        ref = tf.reduce_sum(maps * w_maps) + tf.reduce_sum(coords * w_coords)
    got, want = tape.gradient(loss, x).numpy(), tape.gradient(ref, x).numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------
# the losses: Keras's contract, dsnt's numbers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("loss_class, function", COORD_LOSSES)
def test_coordinate_losses_are_dsnt_losses_of_y_pred_against_y_true(loss_class, function):
    pred, true = targets((4, 3, 2)), targets((4, 3, 2))
    np.testing.assert_allclose(float(loss_class()(true, pred)), float(function(pred, true)),
                               rtol=1e-6)
    per_point = loss_class(reduction="none")(true, pred)
    np.testing.assert_array_equal(per_point.numpy(),
                                  function(pred, true, reduction="none").numpy())
    assert per_point.shape == (4, 3)


@pytest.mark.parametrize("loss_class, function", REG_LOSSES)
def test_divergence_losses_take_target_coords_as_y_true_and_heatmaps_as_y_pred(
        loss_class, function):
    heatmaps, _ = dsnt.dsnt(logits((4, 9, 8, 2)))
    centres = targets((4, 2, 2))
    got = loss_class(fwhm=2.5)(centres, heatmaps)
    np.testing.assert_allclose(float(got), float(function(heatmaps, centres, fwhm=2.5)), rtol=1e-6)
    per_point = loss_class(fwhm=2.5, reduction="none")(centres, heatmaps)
    np.testing.assert_array_equal(
        per_point.numpy(), function(heatmaps, centres, fwhm=2.5, reduction="none").numpy())


@pytest.mark.parametrize("loss_class, function", COORD_LOSSES)
def test_coordinate_losses_take_3d_points(loss_class, function):
    pred, true = targets((4, 3, 3)), targets((4, 3, 3))
    per_point = loss_class(reduction="none")(true, pred)
    np.testing.assert_array_equal(per_point.numpy(),
                                  function(pred, true, reduction="none").numpy())
    assert per_point.shape == (4, 3)
    # By hand: the point (1, 2, 2) against the origin.
    want = {EuclideanLoss: 3.0, MSELoss: 3.0, L1Loss: 5.0 / 3.0}[loss_class]
    np.testing.assert_allclose(float(loss_class()([[[0.0, 0.0, 0.0]]], [[[1.0, 2.0, 2.0]]])),
                               want, rtol=1e-6)


@needs_3d_dsnt
@pytest.mark.parametrize("loss_class, function", REG_LOSSES + [(VarianceRegLoss, None)])
def test_regularisers_take_volumes(loss_class, function):
    heatmaps, _ = dsnt.dsnt(logits((3, 4, 5, 6, 2)))
    centres = targets((3, 2, 3))
    if function is None:
        want = dsnt.variance_reg_loss(heatmaps, fwhm=2.0, reduction="none")
    else:
        want = function(heatmaps, centres, fwhm=2.0, reduction="none")
    got = loss_class(fwhm=2.0, reduction="none")(centres, heatmaps)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert got.shape == (3, 2)


def test_variance_loss_ignores_y_true():
    heatmaps, _ = dsnt.dsnt(logits((4, 9, 8)))
    want = float(dsnt.variance_reg_loss(heatmaps, fwhm=2.0))
    for y_true in (targets((4, 2)), np.zeros((4, 2), np.float32)):
        np.testing.assert_allclose(float(VarianceRegLoss(2.0)(y_true, heatmaps)), want, rtol=1e-6)


def test_point_sample_weights_give_the_masked_mean():
    """sample_weight [B, K] with Keras's mean_with_sample_weight = dsnt's mask argument."""
    pred, true = targets((4, 3, 2)), targets((4, 3, 2))
    mask = RNG.random((4, 3)) < 0.6
    loss = EuclideanLoss(reduction="mean_with_sample_weight")
    np.testing.assert_allclose(float(loss(true, pred, sample_weight=mask.astype(np.float32))),
                               float(dsnt.euclidean_loss(pred, true, mask=mask)), rtol=1e-6)
    heatmaps, _ = dsnt.dsnt(logits((4, 6, 6, 3)))
    loss = JSRegLoss(fwhm=2, reduction="mean_with_sample_weight")
    np.testing.assert_allclose(float(loss(true, heatmaps, sample_weight=mask.astype(np.float32))),
                               float(dsnt.js_reg_loss(heatmaps, true, 2, mask=mask)), rtol=1e-6)


def test_configs_round_trip():
    layer = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(DSNT("sigmoid", name="d")))
    assert type(layer) is DSNT and (layer.method, layer.name) == ("sigmoid", "d")
    for loss in (EuclideanLoss(name="e"), MSELoss(reduction="sum"), L1Loss(),
                 JSRegLoss(fwhm=3), KLRegLoss(fwhm=0.5, name="kl"),
                 VarianceRegLoss(fwhm=2, reduction="none")):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
        assert (restored.name, restored.reduction) == (loss.name, loss.reduction)
        assert getattr(restored, "fwhm", None) == getattr(loss, "fwhm", None)
    assert KLRegLoss(fwhm=0.5).fwhm == 0.5


# --------------------------------------------------------------------------
# a two-output model trained with model.compile / model.fit
# --------------------------------------------------------------------------

def blob_data(n, size=12, points=2):
    """Images with a bright Gaussian spot per channel at the target (x, y)."""
    centres = RNG.uniform(-0.7, 0.7, (n, points, 2)).astype(np.float32)
    maps = dsnt.make_gauss(centres, (size, size), fwhm=3.0).numpy()
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32), centres


def keypoint_model(size=12, points=2):
    images = keras.Input((size, size, points), name="images")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images)
    heatmaps, coords = DSNT()(keras.layers.Conv2D(points, 3, padding="same")(x))
    return keras.Model(images, {"coords": coords, "heatmaps": heatmaps})


def test_compile_with_the_two_losses_evaluates_them_in_keras_order():
    """evaluate()'s per-output losses are dsnt's losses of (predictions, targets)."""
    x, centres = blob_data(8)
    model = keypoint_model()
    model.compile("adam", loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)})
    logs = model.evaluate(x, {"coords": centres, "heatmaps": centres}, batch_size=8,
                          return_dict=True, verbose=0)
    pred = model(x)
    want_coords = float(dsnt.euclidean_loss(pred["coords"], centres))
    want_maps = float(dsnt.js_reg_loss(pred["heatmaps"], centres, fwhm=3))
    np.testing.assert_allclose(logs["coords_loss"], want_coords, rtol=1e-5)
    np.testing.assert_allclose(logs["heatmaps_loss"], want_maps, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], want_coords + want_maps, rtol=1e-5)


def test_fit_with_jit_compile_learns_the_keypoints():
    x, centres = blob_data(64)
    model = keypoint_model()
    model.compile(keras.optimizers.Adam(1e-2),
                  loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)},
                  jit_compile=True)
    y = {"coords": centres, "heatmaps": centres}
    before = model.evaluate(x, y, return_dict=True, verbose=0)
    model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    after = model.evaluate(x, y, return_dict=True, verbose=0)
    assert after["coords_loss"] < 0.5 * before["coords_loss"]
    assert after["heatmaps_loss"] < before["heatmaps_loss"]


def test_mixed_float16_outputs_half_and_trains():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x, centres = blob_data(16)
        model = keypoint_model()
        assert all(o.dtype == "float16" for o in model.outputs)
        pred = model.predict(x, verbose=0)
        logits16 = keras.Model(model.inputs, model.layers[-1].input).predict(x, verbose=0)
        want = dsnt.dsnt(logits16.astype(np.float32))
        np.testing.assert_allclose(pred["coords"].astype(np.float32), want[1].numpy(),
                                   atol=2e-3)                 # float16 round-off of [-1, 1]
        model.compile(keras.optimizers.Adam(1e-2),
                      loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)})
        history = model.fit(x, {"coords": centres, "heatmaps": centres}, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
    finally:
        keras.config.set_dtype_policy(previous)
    out = DSNT(dtype="mixed_bfloat16")(logits((2, 4, 4, 2)))
    assert out[0].dtype == tf.bfloat16 and out[1].dtype == tf.bfloat16


@pytest.fixture(scope="module")
def trained():
    x, centres = blob_data(16)
    model = keypoint_model()
    model.compile(keras.optimizers.Adam(1e-2),
                  loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)})
    model.fit(x, {"coords": centres, "heatmaps": centres}, epochs=1, verbose=0)
    return model, {"images": x[:4]}


def test_save_and_reload_keep_the_numbers_and_the_compiled_losses(trained, tmp_path):
    model, inputs = trained
    want = keras_helpers.predict(model, inputs)
    path = str(tmp_path / "dsnt.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    got = keras_helpers.predict(restored, inputs)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert isinstance(restored.loss["coords"], EuclideanLoss)
    assert restored.loss["heatmaps"].fwhm == 3.0


def test_export_and_tflite_give_keras_numbers(trained, tmp_path):
    model, inputs = trained
    want = keras_helpers.predict(model, inputs)
    exported = keras_helpers.export_predict(model, inputs, str(tmp_path / "exported"))
    lite = keras_helpers.tflite_predict(model, inputs)
    for k in want:   # coordinates in [-1, 1], probabilities in [0, 1]
        np.testing.assert_allclose(exported[k], want[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lite[k], want[k], rtol=1e-5, atol=1e-6)


@needs_3d_dsnt
def test_a_volume_keypoint_model_trains_and_reloads(tmp_path):
    volumes = keras.Input((4, 5, 6, 1), name="volumes")
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(volumes)
    heatmaps, coords = DSNT()(keras.layers.Conv3D(2, 1)(x))
    model = keras.Model(volumes, {"coords": coords, "heatmaps": heatmaps})
    assert (coords.shape, heatmaps.shape) == ((None, 2, 3), (None, 4, 5, 6, 2))
    x, centres = RNG.random((8, 4, 5, 6, 1)).astype(np.float32), targets((8, 2, 3))
    model.compile(keras.optimizers.Adam(1e-2),
                  loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=2)})
    history = model.fit(x, {"coords": centres, "heatmaps": centres}, batch_size=4, epochs=1,
                        verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    want = keras_helpers.predict(model, {"volumes": x})
    got = keras_helpers.reload_predict(model, {"volumes": x}, str(tmp_path / "dsnt3d.keras"))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_bad_arguments_fail_at_construction_with_the_functional_messages():
    x, c = logits((2, 5, 5)), targets((2, 2))
    keras_helpers.same_error(lambda: dsnt.dsnt(x, method="argmax"), lambda: DSNT("argmax"))
    for fwhm in (0.0, -1, float("nan")):
        keras_helpers.same_error(lambda: dsnt.js_reg_loss(x, c, fwhm=fwhm), lambda: JSRegLoss(fwhm=fwhm))
    keras_helpers.same_error(lambda: dsnt.kl_reg_loss(x, c, fwhm=True), lambda: KLRegLoss(fwhm=True), TypeError)
    with pytest.raises(ValueError, match="reduction"):
        EuclideanLoss(reduction="average")


def test_bad_shapes_fail_when_the_model_is_built_or_the_loss_runs():
    with pytest.raises(ValueError, match=r"inputs must have rank 3 or 4 or 5 \(\[B, H, W\]"):
        DSNT()(keras.Input((8,)))
    keras_helpers.same_error(lambda: dsnt.euclidean_loss(targets((2, 3, 2)), targets((2, 2, 2))),
               lambda: EuclideanLoss()(targets((2, 2, 2)), targets((2, 3, 2))))

