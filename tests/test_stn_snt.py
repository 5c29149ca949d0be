"""stn_snt.SpatialTransformer: identity at initialisation, delegation, training."""
import os

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

import stn
from stn_snt import SpatialTransformer


def loc_net():
    return snt.Sequential([snt.Conv2D(4, 3, stride=2), tf.nn.relu, snt.Flatten(),
                           snt.Linear(16), tf.nn.relu])


@pytest.mark.parametrize("transform", sorted(stn.TRANSFORMS))
def test_starts_at_identity_for_every_family(transform):
    img = tf.random.stateless_normal([3, 12, 10, 2], seed=[1, 2])
    st = SpatialTransformer(localization=loc_net(), transform=transform)
    out, theta = st(img, return_theta=True)
    np.testing.assert_array_equal(out.numpy(), img.numpy())
    if transform == "tps":   # theta: the source points, the control points' lattice
        lattice = stn.control_point_lattice(4).numpy()
        np.testing.assert_array_equal(theta.numpy(), np.tile(lattice, (3, 1, 1)))
        return
    rows = theta.shape[1]
    np.testing.assert_allclose(theta.numpy(), np.tile(np.eye(3)[:rows], (3, 1, 1)), atol=1e-7)


def test_explicit_theta_delegates_to_functional_layer():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    theta = (np.eye(2, 3) + rng.normal(0, 0.2, (2, 2, 3))).astype(np.float32)
    st = SpatialTransformer(out_dims=(5, 6), padding_mode="border", interpolation="bicubic",
                            align_corners=True)
    expected = stn.spatial_transformer_network(img, theta, (5, 6), padding_mode="border",
                                               interpolation="bicubic", align_corners=True)
    np.testing.assert_array_equal(st(img, theta=theta).numpy(), expected.numpy())
    assert st.trainable_variables == ()


def test_constraints_and_parameter_count():
    st = SpatialTransformer(localization=loc_net(),
                            constraints=stn.AffineWarpConstraints.translation_only())
    img = tf.ones([2, 8, 8, 1])
    _, theta = st(img, return_theta=True)
    assert st.head.output_size == 2
    np.testing.assert_allclose(st.head.b.numpy(), [0.0, 0.0])
    np.testing.assert_allclose(theta.numpy(), np.tile(np.eye(2, 3), (2, 1, 1)))


def test_learns_a_translation():
    """Gradients reach the localisation head: it learns to undo a shift."""
    yy, xx = np.mgrid[0:16, 0:16]
    target = np.exp(-((xx - 7.5) ** 2 + (yy - 7.5) ** 2) / 8.0)[None, :, :, None]
    shifted = np.roll(target, 3, axis=2).astype(np.float32)         # content moved 3 px right
    target = target.astype(np.float32)
    st = SpatialTransformer(localization=lambda x: tf.ones([tf.shape(x)[0], 1]),
                            constraints=stn.AffineWarpConstraints.translation_only())
    opt = snt.optimizers.Adam(0.05)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((st(shifted) - target) ** 2)
        grads = tape.gradient(loss, st.trainable_variables)
        opt.apply(grads, st.trainable_variables)
        return loss

    first = float(step())
    for _ in range(150):
        last = float(step())
    assert last < 1e-3 * first
    # 3 pixels of 16 = 0.375 normalised (align_corners=False); theta maps
    # output to input, so the output reads from 3 px to the right. The
    # optimum is 0.3745 (the roll wraps the Gaussian's far tail around);
    # align_corners=True would give 3 / 7.5 = 0.4, the tolerance's 5x.
    theta = st.predict_theta(shifted).numpy()
    np.testing.assert_allclose(theta[0, :, 2], [0.375, 0.0], atol=0.005)


def test_bad_arguments():
    with pytest.raises(ValueError, match="transform must be one of"):
        SpatialTransformer(transform="bogus")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        SpatialTransformer(padding_mode="constant")
    with pytest.raises(ValueError, match="out_dims must be two or three positive integers"):
        SpatialTransformer(out_dims=(-1, 3))
    with pytest.raises(TypeError, match="localization must be callable"):
        SpatialTransformer(localization=3)
    with pytest.raises(ValueError, match="constraints only apply to transform='affine'"):
        SpatialTransformer(transform="attention",
                           constraints=stn.AffineWarpConstraints.translation_only())
    with pytest.raises(ValueError, match="has no localization network"):
        SpatialTransformer()(tf.zeros([1, 4, 4, 1]))


def test_saved_model_round_trip(tmp_path):
    st = SpatialTransformer(localization=loc_net(), transform="similarity", out_dims=(6, 6))
    img = tf.random.stateless_normal([2, 12, 12, 2], seed=[3, 4])
    st(img)
    for v in st.trainable_variables:
        v.assign(v + 0.01 * tf.random.stateless_normal(v.shape, seed=[5, 6]))
    module = tf.Module()
    module.st = st
    module.f = tf.function(lambda x: st(x),
                           input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    path = os.path.join(tmp_path, "st")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.f(img).numpy(), st(img).numpy(), atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(), dict(align_corners=True, padding_mode="border", interpolation="bicubic"),
    dict(padding_mode="reflection", interpolation="nearest")])
def test_grid_sample_module_is_the_functional_call(options):
    from stn_snt import GridSample
    rng = np.random.default_rng(3)
    img = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, (2, 4, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(GridSample(**options)(img, grid).numpy(),
                                  stn.grid_sample(img, grid, **options).numpy())
    volume = rng.standard_normal((1, 4, 5, 6, 2)).astype(np.float32)
    grid3 = rng.uniform(-1, 1, (1, 2, 3, 4, 3)).astype(np.float32)
    options = {k: v for k, v in options.items() if v != "bicubic"}
    np.testing.assert_array_equal(GridSample(**options)(volume, grid3).numpy(),
                                  stn.grid_sample(volume, grid3, **options).numpy())


def test_grid_sample_module_fails_at_construction_with_the_functional_message():
    from stn_snt import GridSample
    img, grid = np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 2, 2, 2), np.float32)
    for bad in (dict(padding_mode="wrap"), dict(interpolation="area")):
        with pytest.raises(ValueError) as functional:
            stn.grid_sample(img, grid, **bad)
        with pytest.raises(ValueError, match=str(functional.value)):
            GridSample(**bad)
    with pytest.raises(TypeError, match="align_corners must be True or False"):
        GridSample(align_corners=1)
    assert GridSample().variables == ()
