"""stn_keras: Keras 3 layers over stn.py, checked against the functional API.

The functional API is checked against PyTorch, SciPy and NumPy in
test_stn.py, test_stn_volumes.py, test_tps.py and test_dense_fields.py; here
every layer (SpatialTransformer with every family, 2-D and 3-D, GridSample,
Warp, IntegrateVelocity) must give its numbers (exactly where the same ops
run), keep them through save/load, export and TFLite, and fail on bad
arguments with the same messages, at construction where possible.
"""
import json
import os
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import spatial_convention
import stn
import stn_keras
from stn_keras import GridSample, IntegrateVelocity, SpatialTransformer, Warp
from tests import keras_helpers

RNG = np.random.default_rng(7)
pytestmark = pytest.mark.usefixtures("per_test_rng")

VOLUME = (2, 4, 5, 6, 2)    # [B, D, H, W, C]: every size distinct, so a swapped axis shows
FAMILIES_3D = sorted(name for name, forms in stn.TRANSFORMS.items() if 3 in forms)


def images(shape=(3, 12, 10, 2)):
    return RNG.random(shape).astype(np.float32)


def loc_net():
    return keras.Sequential([keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh")])


def loc_net_3d():
    return keras.Sequential([keras.layers.Conv3D(4, 3, strides=2, padding="same",
                                                 activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh")])


def identity(transform, batch, ndim=2):
    """The transform the head starts at: [I | 0] (its top rows for projective), or for
    tps the source points of the identity, the default 4 x 4 lattice."""
    if transform == "tps":
        eye = stn.control_point_lattice(4).numpy()
    else:
        eye = np.eye(ndim + 1, dtype=np.float32)[:ndim + (transform == "projective")]
    return np.tile(eye, (batch, 1, 1))


def warp_by(transform, x, theta, out_dims, **options):
    """The functional layer for a family's theta: tps through its sampling grid."""
    if transform == "tps":
        grid = stn.tps_grid(stn.control_point_lattice(4), theta, out_dims)
        return stn.grid_sample(x, grid, **options)
    return stn.spatial_transformer_network(x, theta, out_dims, **options)


def reseed(name):
    """A module-scoped fixture's own draws, whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(name.encode()))


def perturb(layer, scale=0.1):
    """Moves every weight off its initial value (the head starts at zero)."""
    for v in layer.weights:
        v.assign(v + scale * RNG.standard_normal(v.shape).astype(v.dtype))


# plain_ops (conftest.py) serves the eager checks of what a layer hands to stn; the
# 2-D checks and the models (predict, export, fit with jit_compile) run the compiled kernels.


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
    np.testing.assert_array_equal(theta.numpy(), identity(transform, 3))
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
    expected = warp_by(transform, x, expected_theta, (7, 5), padding_mode="reflection")
    # tps: a displacement added to exact pixel centres vs tps_grid's
    # normalised grid, two float32 roundings of the same points.
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


# --------------------------------------------------------------------------
# thin-plate splines: theta is the source points of the control points
# --------------------------------------------------------------------------

TPS_POINTS = np.array([[-0.6, -0.5], [0.7, -0.6], [0.0, 0.7], [0.1, 0.0]], np.float32)


@pytest.mark.parametrize("control_points, stored", [
    (3, 3), ((2, 3), [2, 3]), (TPS_POINTS, TPS_POINTS.astype(np.float64).tolist())],
    ids=["k", "rows-cols", "points"])
def test_tps_control_points_in_every_form(control_points, stored, plain_ops):
    """Identity, head -> source points -> the thin-plate grid, and a JSON config."""
    x = images()
    st = SpatialTransformer(loc_net(), "tps", control_points=control_points, return_theta=True)
    out, theta = st(x)
    points = (stn.control_point_lattice(*np.atleast_1d(control_points)).numpy()
              if np.ndim(control_points) < 2 else control_points)
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(theta.numpy(), np.tile(points, (3, 1, 1)))
    assert st.head.units == points.size
    perturb(st.head, 0.05)
    out, theta = st(x)
    grid = stn.tps_grid(points, theta, (12, 10))
    np.testing.assert_allclose(out.numpy(), stn.grid_sample(x, grid).numpy(), atol=2e-5)
    config = st.get_config()
    assert config["control_points"] == stored
    clone = SpatialTransformer.from_config(json.loads(json.dumps(config)))
    clone(x)
    clone.set_weights(st.get_weights())
    np.testing.assert_array_equal(clone(x)[0].numpy(), out.numpy())


def test_tps_with_given_source_points(plain_ops):
    x = images()
    source = stn.control_point_lattice(2, 3).numpy() + RNG.normal(0, 0.1, (3, 6, 2))
    source = source.astype(np.float32)
    st = SpatialTransformer(transform="tps", out_dims=(5, 6), control_points=(2, 3),
                            padding_mode="border", return_theta=True)
    out, theta = st(x, source)
    grid = stn.tps_grid(stn.control_point_lattice(2, 3), source, (5, 6))
    want = stn.grid_sample(x, grid, padding_mode="border")
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=2e-5)
    np.testing.assert_array_equal(theta.numpy(), source)
    assert st.compute_output_shape(x.shape, source.shape) == (out.shape, theta.shape)
    img_in, points_in = keras.Input((12, 10, 2)), keras.Input((6, 2))
    symbolic = st(img_in, points_in)
    assert tuple(t.shape for t in symbolic) == ((None, 5, 6, 2), (None, 6, 2))


# --------------------------------------------------------------------------
# volumes [B, D, H, W, C]
# --------------------------------------------------------------------------

@pytest.mark.parametrize("transform", FAMILIES_3D)
def test_volumes_start_at_the_identity_and_warp_by_the_head(transform, plain_ops):
    x = images(VOLUME)
    st = SpatialTransformer(loc_net_3d(), transform, padding_mode="border", return_theta=True)
    out, theta = st(x)
    np.testing.assert_array_equal(out.numpy(), x)                 # exactly the input
    np.testing.assert_array_equal(theta.numpy(), identity(transform, 2, ndim=3))
    assert st.head.units == stn.transform_family(transform, 3).num_params
    perturb(st.head, 0.05)
    out, theta = st(x)
    features = st.localization(x).numpy().reshape(2, -1).astype(np.float64)
    params = features @ st.head.kernel.numpy() + st.head.bias.numpy()
    expected_theta = stn.transform_family(transform, 3).theta(params.astype(np.float32))
    np.testing.assert_allclose(theta.numpy(), expected_theta.numpy(), rtol=1e-6, atol=1e-6)
    expected = stn.spatial_transformer_network(x, expected_theta, padding_mode="border")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=2e-5)


def test_volumes_with_a_given_theta_equal_the_functional_layer():
    x = images(VOLUME)
    theta = (np.eye(3, 4) + RNG.normal(0, 0.2, (2, 3, 4))).astype(np.float32)
    st = SpatialTransformer(out_dims=(3, 4, 5), padding_mode="reflection", align_corners=True)
    want = stn.spatial_transformer_network(x, theta, (3, 4, 5), padding_mode="reflection",
                                           align_corners=True)
    np.testing.assert_array_equal(st(x, theta).numpy(), want.numpy())
    np.testing.assert_array_equal(st(x, theta.reshape(2, 12)).numpy(), want.numpy())
    # Projective [B, 4, 4] as a second Keras input; the identity is exact.
    vol_in, theta_in = keras.Input(VOLUME[1:]), keras.Input((4, 4))
    model = keras.Model([vol_in, theta_in], SpatialTransformer()(vol_in, theta_in))
    h = np.eye(4) + RNG.normal(0, 0.05, (2, 4, 4))
    h = (h / h[:, 3:, 3:]).astype(np.float32)
    np.testing.assert_array_equal(model.predict([x, h], verbose=0),
                                  stn.spatial_transformer_network(x, h).numpy())
    np.testing.assert_array_equal(model.predict([x, identity("projective", 2, 3)], verbose=0), x)


def test_volume_constraints(plain_ops):
    st = SpatialTransformer(loc_net_3d(), constraints=stn.AffineWarpConstraints.translation_only(3),
                            return_theta=True)
    x = images(VOLUME)
    out, theta = st(x)
    assert st.head.units == 3
    np.testing.assert_array_equal(theta.numpy(), identity("affine", 2, 3))
    np.testing.assert_array_equal(out.numpy(), x)


def test_grid_sample_on_volumes(plain_ops):
    x = images(VOLUME)
    grid = RNG.uniform(-1.3, 1.3, (2, 3, 4, 5, 3)).astype(np.float32)
    for options in (dict(), dict(align_corners=True, padding_mode="reflection",
                                 interpolation="nearest")):
        expected = stn.grid_sample(x, grid, **options).numpy()
        np.testing.assert_array_equal(GridSample(**options)(x, grid).numpy(), expected)
    # The identity grid, built by hand: pixel centres (2 i + 1) / n - 1 listed
    # (x, y, z); power-of-two sizes, so the centres and the sampler are exact.
    v = images((2, 2, 4, 8, 1))
    z, y, x_ = np.meshgrid(*[(2 * np.arange(n) + 1) / n - 1 for n in (2, 4, 8)], indexing="ij")
    identity_grid = np.tile(np.stack([x_, y, z], -1)[None], (2, 1, 1, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(GridSample()(v, identity_grid).numpy(), v)


def test_grid_sample_gradients_on_volumes(plain_ops):
    """Gradients to the volume and the grid: those of the functional sampler."""
    x = tf.constant(images(VOLUME))
    grid = tf.constant(RNG.uniform(-1.3, 1.3, (2, 3, 4, 5, 3)).astype(np.float32))
    weight = tf.constant(RNG.standard_normal((2, 3, 4, 5, 2)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, grid])
        loss = tf.reduce_sum(GridSample()(x, grid) * weight)
        ref = tf.reduce_sum(stn.grid_sample(x, grid) * weight)
    for got, want in zip(tape.gradient(loss, [x, grid]), tape.gradient(ref, [x, grid])):
        assert np.abs(want.numpy()).max() > 0
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_volumes_compute_their_output_shape(plain_ops):
    st = SpatialTransformer(out_dims=(4, 5, 6))
    assert st.compute_output_shape((None, 8, 8, 8, 2), (None, 3, 4)) == (None, 4, 5, 6, 2)
    assert GridSample().compute_output_shape((2, 8, 8, 8, 1), (2, 3, 4, 5, 3)) == (2, 3, 4, 5, 1)
    x = images(VOLUME)
    for st, args in ((SpatialTransformer(loc_net_3d(), "projective", (3, 4, 5), return_theta=True),
                      (x,)),
                     (SpatialTransformer(loc_net_3d(), "similarity", return_theta=True), (x,)),
                     (SpatialTransformer(return_theta=True), (x, identity("affine", 2, 3))),
                     (GridSample(), (x, np.zeros((2, 1, 3, 2, 3), np.float32))),
                     (Warp(), (x, np.zeros((2, 3, 2, 4, 3), np.float32))),
                     (IntegrateVelocity(2), (np.zeros((2, 3, 2, 4, 3), np.float32),))):
        outputs = st(*args)
        got = st.compute_output_shape(*[a.shape for a in args])
        want = tuple(o.shape for o in outputs) if isinstance(outputs, tuple) else outputs.shape
        assert got == want
        symbolic = st(*[keras.Input(a.shape[1:]) for a in args])
        symbolic = symbolic if isinstance(symbolic, tuple) else (symbolic,)
        want = want if isinstance(want, tuple) else (want,)
        assert tuple(s.shape for s in symbolic) == tuple((None, *w[1:]) for w in want)


# --------------------------------------------------------------------------
# dense fields: Warp and IntegrateVelocity
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 6, 7, 3), VOLUME], ids=["2d", "3d"])
def test_warp_equals_the_functional_warp(shape, plain_ops):
    x = images(shape)
    n = len(shape) - 2
    field = RNG.normal(0, 1.5, shape[:-1] + (n,)).astype(np.float32)
    # Normalised units on a field of another size (the output is on its grid).
    coarse = RNG.normal(0, 0.3, (shape[0],) + tuple(s - 1 for s in shape[1:-1]) + (n,))
    options = dict(units="normalized", align_corners=True, padding_mode="zeros",
                   interpolation="nearest")
    for d, options in ((field, {}), (coarse.astype(np.float32), options)):
        layer = Warp(**options)
        got = layer(x, d)
        np.testing.assert_array_equal(got.numpy(), stn.warp(x, d, **options).numpy())
        assert layer.compute_output_shape(x.shape, d.shape) == got.shape
    np.testing.assert_array_equal(Warp()(x, np.zeros_like(field)).numpy(), x)   # exact


@pytest.mark.parametrize("shape", [(2, 6, 7), VOLUME[:-1]], ids=["2d", "3d"])
def test_integrate_velocity_equals_the_functional_integration(shape, plain_ops):
    n = len(shape) - 1
    velocity = RNG.normal(0, 1.0, shape + (n,)).astype(np.float32)
    for options in (dict(), dict(steps=3, units="normalized", align_corners=True)):
        layer = IntegrateVelocity(**options)
        got = layer(velocity)
        want = stn.integrate_velocity(velocity, **options)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert layer.compute_output_shape(velocity.shape) == got.shape
    # A constant flow is a translation by itself (by hand).
    flow = np.full(shape + (n,), 0.75, np.float32)
    np.testing.assert_allclose(IntegrateVelocity()(flow).numpy(), flow, rtol=0, atol=1e-6)


def test_dense_fields_with_unknown_spatial_sizes(plain_ops):
    """One model, fields of two sizes (full-resolution volumes are rarely all one size)."""
    image, velocity = keras.Input((None, None, 1)), keras.Input((None, None, 2))
    displacement = IntegrateVelocity(3)(velocity)
    moved = Warp()(image, displacement)
    assert moved.shape == (None, None, None, 1) and displacement.shape == (None, None, None, 2)
    model = keras.Model([image, velocity], moved)
    for shape in ((2, 5, 7), (1, 9, 4)):
        x, v = images(shape + (1,)), RNG.normal(0, 1.0, shape + (2,)).astype(np.float32)
        want = stn.warp(x, stn.integrate_velocity(v, 3)).numpy()
        # A graph against eager ops: float32 round-off of values in [0, 1].
        np.testing.assert_allclose(model.predict([x, v], verbose=0), want, rtol=0, atol=1e-6)


def test_dense_field_gradients_equal_those_of_the_functional_api(plain_ops):
    x = tf.constant(images((2, 6, 7, 2)))
    v = tf.constant(RNG.normal(0, 1.0, (2, 6, 7, 2)).astype(np.float32))
    weight = tf.constant(RNG.standard_normal((2, 6, 7, 2)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, v])
        loss = tf.reduce_sum(Warp()(x, IntegrateVelocity(steps=4)(v)) * weight)
        ref = tf.reduce_sum(stn.warp(x, stn.integrate_velocity(v, 4)) * weight)
    for got, want in zip(tape.gradient(loss, [x, v]), tape.gradient(ref, [x, v])):
        assert np.abs(want.numpy()).max() > 0
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# --------------------------------------------------------------------------
# gradients and training
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
def test_gradients_equal_those_of_the_functional_layer(ndim, plain_ops):
    shape, loc = ((3, 12, 10, 2), loc_net()) if ndim == 2 else (VOLUME, loc_net_3d())
    x = tf.constant(images(shape))
    st = SpatialTransformer(loc, "similarity", return_theta=True)
    st(x)
    perturb(st)
    weight = tf.constant(RNG.standard_normal(shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out, _ = st(x)
        loss = tf.reduce_sum(out * weight)
        features = tf.reshape(st.localization(x), [shape[0], -1])
        params = tf.matmul(features, st.head.kernel) + st.head.bias
        theta = stn.similarity_theta(params, ndim)
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
    """A predicted and a given transform and a sampling grid (named inputs, dict outputs)."""
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


def tps_and_volumes_model():
    """A thin-plate spline (its source points as an output), and for volumes a predicted
    transform, a 5-D sampling grid and a dense velocity field."""
    img_in = keras.Input((12, 10, 2), name="images")
    vol_in = keras.Input(VOLUME[1:], name="volume")
    warped, points = SpatialTransformer(loc_net(), "tps", (8, 8), control_points=(2, 3),
                                        padding_mode="border", return_theta=True)(img_in)
    vol_warped = SpatialTransformer(loc_net_3d(), "affine", (3, 4, 5),
                                    padding_mode="border")(vol_in)
    vol_grid = keras.layers.Reshape((2, 3, 2, 3))(keras.layers.Dense(36, activation="tanh")(
        keras.layers.Flatten()(vol_warped)))
    vol_sampled = GridSample()(vol_in, vol_grid)
    velocity = keras.layers.Conv3D(3, 3, padding="same")(vol_in)
    vol_moved = Warp()(vol_in, IntegrateVelocity(steps=2)(velocity))
    model = keras.Model({"images": img_in, "volume": vol_in},
                        {"warped": warped, "points": points, "volume_warped": vol_warped,
                         "volume_sampled": vol_sampled, "volume_moved": vol_moved})
    perturb(model, 0.05)
    return model


def tps_and_volumes_inputs(batch=3):
    return {"images": images((batch, 12, 10, 2)), "volume": images((batch,) + VOLUME[1:])}


def blobs(centres, size=16, sigma=2.5):
    """Gaussian spots at pixel centres (x, y): [B, size, size, 1]."""
    yy, xx = np.mgrid[:size, :size]
    spots = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)) for cx, cy in centres]
    return np.stack(spots)[..., None].astype(np.float32)


def registration_model(size=16, steps=5, velocity_std=0.01):
    """VoxelMorph in miniature: two convolutions predict a velocity field, integrated to a
    displacement that warps the moving image onto the fixed one."""
    fixed = keras.Input((size, size, 1), name="fixed")
    moving = keras.Input((size, size, 1), name="moving")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(
        keras.layers.Concatenate()([fixed, moving]))
    velocity = keras.layers.Conv2D(2, 3, padding="same", name="velocity",
                                   kernel_initializer=keras.initializers.RandomNormal(0, velocity_std))(x)
    displacement = IntegrateVelocity(steps)(velocity)
    warped = Warp()(moving, displacement)
    return keras.Model({"fixed": fixed, "moving": moving},
                       {"displacement": displacement, "warped": warped})


def registration_inputs(batch=16):
    """Fixed: spots anywhere near the centre; moving: each spot moved by (1.5, -1) px."""
    centres = RNG.uniform(5.5, 9.5, (batch, 2))
    return {"fixed": blobs(centres), "moving": blobs(centres + [1.5, -1.0])}


@pytest.fixture(scope="module")
def registration():
    """The registration model trained a few steps on MSE(warped, fixed)."""
    reseed("registration")
    model, inputs = registration_model(), registration_inputs()
    # Not jit_compile: fit under XLA is checked on a model with 3-D Warp and
    # IntegrateVelocity (test_fit_with_jit_compile_takes_the_eager_gradient_step).
    model.compile(keras.optimizers.Adam(0.1), loss={"warped": "mse"})
    history = model.fit(inputs, {"warped": inputs["fixed"]}, batch_size=8, epochs=6, verbose=0)
    return model, inputs, history.history["loss"]


MODELS = {"stn": (stn_model, stn_inputs),
          "tps+volumes": (tps_and_volumes_model, tps_and_volumes_inputs)}


@pytest.fixture(scope="module", params=["stn", "tps+volumes", "registration"])
def deployed(request):
    if request.param == "registration":
        model, inputs, _ = request.getfixturevalue("registration")
        return model, inputs
    reseed(request.param)
    make_model, make_inputs = MODELS[request.param]
    return make_model(), make_inputs()


def test_registration_trains_and_is_the_functional_warp(registration):
    model, inputs, losses = registration
    assert losses[-1] < 0.5 * losses[0]
    velocity = keras.Model(model.inputs, model.get_layer("velocity").output)(inputs).numpy()
    want = stn.warp(inputs["moving"], stn.integrate_velocity(velocity, 5)).numpy()
    np.testing.assert_array_equal(model.predict(inputs, verbose=0)["warped"], want)


def test_save_and_reload_predict_identically(deployed, tmp_path):
    """Plain keras.models.load_model: the layers are registered at import."""
    model, inputs = deployed
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.reload_predict(model, inputs, str(tmp_path / "stn.keras"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_export_serves_the_same_numbers(deployed, tmp_path):
    model, inputs = deployed
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.export_predict(model, inputs, str(tmp_path / "exported"))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("deployed", ["stn", "registration"], indirect=True)
def test_tflite_equals_keras(deployed):
    model, inputs = deployed
    want = keras_helpers.predict(model, inputs)
    got = keras_helpers.tflite_predict(model, inputs)
    assert set(got) == set(want)
    for k in want:   # images in [0, 1]: float32 round-off of the coordinates and the sums
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6)


def test_tflite_tps():
    """The tps family applies a constant map to the source points (no linear solve at
    run time), so it converts with builtin ops."""
    img_in, points_in = keras.Input((6, 5, 1), name="images"), keras.Input((4, 2), name="points")
    model = keras.Model([img_in, points_in], SpatialTransformer(
        transform="tps", control_points=2)(img_in, points_in))
    points = RNG.normal(0, 0.1, (2, 4, 2)) + stn.control_point_lattice(2).numpy()
    inputs = {"images": images((2, 6, 5, 1)), "points": points.astype(np.float32)}
    (got,) = keras_helpers.tflite_predict(model, inputs).values()
    np.testing.assert_allclose(got, model.predict(inputs, verbose=0), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_with_jit_compile_takes_the_eager_gradient_step(name):
    """One XLA-compiled SGD step of fit = the step from an eager GradientTape (plain ops)."""
    make_model, make_inputs = MODELS[name]
    base, inputs = make_model(), make_inputs(8)
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(False)   # no XLA at all in the reference
    try:
        targets = {k: v + 0.1 for k, v in base(inputs).items()}
        with tf.GradientTape() as tape:
            outputs = base(inputs)
            loss = tf.add_n([tf.reduce_mean((outputs[k] - targets[k]) ** 2) for k in outputs])
        grads = tape.gradient(loss, base.trainable_variables)
    finally:
        spatial_convention.set_jit(previous)
    want = [v.numpy() - 0.1 * g.numpy() for v, g in zip(base.trainable_variables, grads)]
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    model.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    model.fit(inputs, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v, w, before in zip(model.trainable_variables, want, base.trainable_variables):
        assert not np.array_equal(v.numpy(), before.numpy())
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6)
    if name == "stn":   # predict runs under XLA too (once: it is one more compilation)
        got, eager = keras_helpers.predict(model, inputs), model(inputs)
        for k in got:
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
    d = RNG.normal(0, 1.0, (2, 12, 10, 2))
    for layer in (Warp(dtype="mixed_bfloat16"), IntegrateVelocity(dtype="mixed_bfloat16")):
        assert layer(*((x, d) if isinstance(layer, Warp) else (d,))).dtype == tf.bfloat16
    x64 = x.astype(np.float64)
    out = Warp(dtype="float64")(x64, d)
    assert out.dtype == tf.float64
    np.testing.assert_array_equal(out.numpy(), stn.warp(x64, d).numpy())
    out = IntegrateVelocity(dtype="float64")(d)
    assert out.dtype == tf.float64
    np.testing.assert_array_equal(out.numpy(), stn.integrate_velocity(d).numpy())


def test_dense_fields_under_mixed_float16_follow_the_policy_and_train(mixed_float16):
    # Seeded, and a velocity large enough (~0.1 px) for float16's steps to be
    # small next to it, whatever order the tests run in.
    reseed("mixed_float16 dense fields")
    keras.utils.set_random_seed(16)
    model, inputs = registration_model(steps=3, velocity_std=0.05), registration_inputs(8)
    assert [o.dtype for o in model.outputs] == ["float16", "float16"]
    got = model.predict(inputs, verbose=0)
    velocity = keras.Model(model.inputs, model.get_layer("velocity").output).predict(
        inputs, verbose=0)
    assert got["warped"].dtype == velocity.dtype == np.float16
    # The float32 reference from the same float16 velocity: scaling and
    # squaring in float16 stays within a few float16 steps of the field's size.
    displacement = stn.integrate_velocity(velocity.astype(np.float32), 3).numpy()
    scale = np.abs(displacement).max()
    assert scale > 0.01
    np.testing.assert_allclose(got["displacement"], displacement, rtol=0, atol=2 ** -8 * scale)
    warped = stn.warp(inputs["moving"], got["displacement"].astype(np.float32)).numpy()
    # Values in [0, 1], sampled and summed in float16: a few float16 steps (2^-11).
    np.testing.assert_allclose(got["warped"], warped, rtol=0, atol=2 ** -9)
    model.compile(keras.optimizers.Adam(1e-2), loss={"warped": "mse"})
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    kernel = model.get_layer("velocity").kernel.numpy()
    history = model.fit(inputs, {"warped": inputs["fixed"]}, batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(model.get_layer("velocity").kernel.numpy(), kernel)


def test_dense_field_configs_round_trip():
    for layer in (Warp("normalized", True, "reflection", "nearest", name="w"),
                  IntegrateVelocity(3, "normalized", True, name="v")):
        config = layer.get_config()
        clone = type(layer).from_config(json.loads(json.dumps(config)))
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer) and restored.get_config() == config
    assert (clone.steps, clone.units, clone.align_corners) == (3, "normalized", True)
    assert (restored.name, Warp().padding_mode, Warp().units) == ("v", "border", "pixels")


# --------------------------------------------------------------------------
# errors: the functional API's messages, at construction where possible
# --------------------------------------------------------------------------

def test_bad_options_fail_at_construction_with_the_functional_messages():
    x, theta = images(), np.tile(np.eye(2, 3, dtype=np.float32), (3, 1, 1))
    keras_helpers.same_error(lambda: stn.spatial_transformer_network(x, theta, padding_mode="wrap"),
               lambda: SpatialTransformer(padding_mode="wrap"))
    keras_helpers.same_error(lambda: stn.grid_sample(x, theta[:, None], interpolation="area"),
               lambda: GridSample(interpolation="area"))
    keras_helpers.same_error(lambda: stn.spatial_transformer_network(x, theta, align_corners=1),
               lambda: SpatialTransformer(align_corners=1), TypeError)
    # The layer also takes volumes' (depth, height, width), so it says so.
    with pytest.raises(ValueError, match=r"out_dims must be two or three positive integers "
                                         r"\(height, width\) or \(depth, height, width\); got \(0, 4\)"):
        SpatialTransformer(out_dims=(0, 4))
    keras_helpers.same_error(lambda: stn.transform_family("tsp"),
               lambda: SpatialTransformer(loc_net(), "tsp"))
    keras_helpers.same_error(lambda: stn.transform_family("attention",
                                            constraints=stn.AffineWarpConstraints.scale_only()),
               lambda: SpatialTransformer(loc_net(), "attention",
                                          constraints=stn.AffineWarpConstraints.scale_only()))
    with pytest.raises(ValueError, match="constraints must be 2x3"):
        SpatialTransformer(constraints=[[1, 0], [0, 1]])
    with pytest.raises(TypeError, match="localization must be a Keras layer or model"):
        SpatialTransformer(lambda x: x)
    with pytest.raises(TypeError, match="return_theta must be True or False"):
        SpatialTransformer(return_theta="yes")
    # Thin-plate splines: 2-D only, control points for "tps" only, at least 3.
    keras_helpers.same_error(lambda: stn.transform_family("affine", control_points=4),
               lambda: SpatialTransformer(loc_net(), "affine", control_points=4))
    keras_helpers.same_error(lambda: stn.transform_family("tps", 3),
               lambda: SpatialTransformer(loc_net(), "tps", (4, 4, 4)))
    for points in (np.zeros((2, 2)), (1, 2), np.zeros((4, 3))):
        keras_helpers.same_error(lambda: stn.transform_family("tps", control_points=points),
                   lambda: SpatialTransformer(loc_net(), "tps", control_points=points))


def test_dense_field_layers_fail_at_construction_with_the_functional_messages():
    x, d = images((1, 4, 4, 1)), np.zeros((1, 4, 4, 2), np.float32)
    keras_helpers.same_error(lambda: stn.warp(x, d, units="px"), lambda: Warp(units="px"))
    keras_helpers.same_error(lambda: stn.warp(x, d, padding_mode="wrap"), lambda: Warp(padding_mode="wrap"))
    keras_helpers.same_error(lambda: stn.warp(x, d, interpolation="area"), lambda: Warp(interpolation="area"))
    keras_helpers.same_error(lambda: stn.warp(x, d, align_corners=1), lambda: Warp(align_corners=1), TypeError)
    for steps in (-1, 2.0, True):
        keras_helpers.same_error(lambda: stn.integrate_velocity(d, steps), lambda: IntegrateVelocity(steps))
    keras_helpers.same_error(lambda: stn.integrate_velocity(d, units="px"), lambda: IntegrateVelocity(units="px"))
    keras_helpers.same_error(lambda: stn.integrate_velocity(d, align_corners="no"),
               lambda: IntegrateVelocity(align_corners="no"), TypeError)


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
    with pytest.raises(ValueError, match=r"grid must have shape \[B, H, W, 2\] \(x, y\)"):
        GridSample()(keras.Input((8, 8, 1)), keras.Input((4, 4, 3)))
    with pytest.raises(ValueError, match=r"transform='tps' is 2-D only; got ndim=3"):
        SpatialTransformer(loc_net_3d(), "tps")(keras.Input(VOLUME[1:]))
    with pytest.raises(ValueError, match=r"image must have rank 4 or 5"):
        Warp()(keras.Input((8, 8)), keras.Input((8, 8, 2)))
    with pytest.raises(ValueError, match=r"displacement must have rank 5 \(\[B, D, H, W, 3\]"):
        Warp()(keras.Input((4, 8, 8, 1)), keras.Input((8, 8, 2)))
    with pytest.raises(ValueError, match=r"displacement must have shape \[B, H, W, 2\] \(x, y\)"):
        Warp()(keras.Input((8, 8, 1)), keras.Input((8, 8, 3)))
    with pytest.raises(ValueError, match=r"velocity must have rank 4 or 5"):
        IntegrateVelocity()(keras.Input((8, 2)))
    with pytest.raises(ValueError, match=r"velocity must have shape \[B, D, H, W, 3\]"):
        IntegrateVelocity()(keras.Input((4, 8, 8, 2)))


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

