"""dsnt_snt.DSNT: the Sonnet 2 module over dsnt.dsnt, checked against NumPy."""


import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

import dsnt_snt
from dsnt_snt import DSNT
from tests.test_dsnt import np_coords, np_rectify

RNG = None  # a fresh generator per test: conftest.py's per_test_rng

pytestmark = pytest.mark.usefixtures("per_test_rng")


def np_dsnt(x, method="softmax"):
    """x [B, *spatial, K] -> normalised maps and (x, y[, z]) expectations, float64."""
    p = np_rectify(x, method)
    return p, np_coords(p)


def test_seed_snippet_tf2():
    my_tensor = RNG.normal(size=(2, 6, 9, 1)).astype(np.float32)
    norm_heatmaps, coords = DSNT()(my_tensor)
    p, c = np_dsnt(my_tensor)
    assert norm_heatmaps.shape == (2, 6, 9) and coords.shape == (2, 2)
    np.testing.assert_allclose(norm_heatmaps.numpy(), p[..., 0], atol=2e-7)
    np.testing.assert_allclose(coords.numpy(), c[:, 0], atol=3e-7)


def test_relu_multi_point_and_method_property():
    x = RNG.normal(size=(3, 5, 4, 3)).astype(np.float32)
    module = DSNT(method="relu")
    assert module.method == "relu"
    h, c = module(x)
    p, cref = np_dsnt(x, "relu")
    assert h.shape == (3, 5, 4, 3) and c.shape == (3, 3, 2)
    np.testing.assert_allclose(h.numpy(), p, atol=2e-7)
    np.testing.assert_allclose(c.numpy(), cref, atol=3e-7)
    assert module.variables == ()  # stateless, and says so


def test_volumes():
    """[B, D, H, W, K] volumes give [B, K, 3] (x, y, z), also for K = 1."""
    module = DSNT(method="sigmoid")
    for k in (2, 1):
        x = RNG.normal(size=(2, 3, 5, 4, k)).astype(np.float32)
        h, c = module(x)
        p, cref = np_dsnt(x, "sigmoid")
        assert h.shape == (2, 3, 5, 4, k) and c.shape == (2, k, 3)
        np.testing.assert_allclose(h.numpy(), p, atol=2e-7)
        np.testing.assert_allclose(c.numpy(), cref, atol=3e-7)


def test_bad_method_fails_at_construction():
    with pytest.raises(ValueError, match="method.*softmax"):
        DSNT(method="argmax")


def test_in_tf_function_unknown_dims_and_xla():
    module = DSNT()
    x = RNG.normal(size=(2, 7, 5, 2)).astype(np.float32)
    _, cref = np_dsnt(x)
    dyn = tf.function(module.__call__, input_signature=[
        tf.TensorSpec([None, None, None, 2], tf.float32)])
    np.testing.assert_allclose(dyn(x)[1].numpy(), cref, atol=3e-7)
    xla = tf.function(module.__call__, jit_compile=True)
    np.testing.assert_allclose(xla(x)[1].numpy(), cref, atol=3e-7)


def test_trains_inside_a_sonnet_model():
    """A 1x1 conv + DSNT learns to move the point: loss goes down, grads exist."""
    tf.random.set_seed(0)
    images = tf.constant(RNG.normal(size=(4, 8, 8, 2)).astype(np.float32))
    target = tf.constant([[0.5, -0.5]] * 4, tf.float32)
    net = snt.Sequential([snt.Conv2D(1, 1), DSNT()])
    opt = snt.optimizers.SGD(0.5)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            _, coords = net(images)
            loss = tf.reduce_mean(tf.reduce_sum(tf.square(coords - target), -1))
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply(grads, net.trainable_variables)
        return loss, grads

    first, grads = step()
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    for _ in range(30):
        last, _ = step()
    assert float(last) < 0.7 * float(first)


def test_saved_model_round_trip(tmp_path):
    """A Sonnet model ending in DSNT exports, reloads and gives identical outputs."""
    tf.random.set_seed(1)
    net = snt.Sequential([snt.Conv2D(4, 3), tf.nn.relu, snt.Conv2D(2, 1), DSNT()])
    x = RNG.normal(size=(3, 9, 7, 1)).astype(np.float32)
    want_h, want_c = net(x)

    module = tf.Module()
    module.net = net
    module.serve = tf.function(lambda images: net(images), input_signature=[
        tf.TensorSpec([None, None, None, 1], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    got_h, got_c = loaded.serve(x)
    np.testing.assert_array_equal(got_c.numpy(), want_c.numpy())
    np.testing.assert_array_equal(got_h.numpy(), want_h.numpy())
    # and a different spatial size through the same signature
    x2 = RNG.normal(size=(1, 5, 11, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.serve(x2)[1].numpy(), net(x2)[1].numpy(), atol=1e-7)

