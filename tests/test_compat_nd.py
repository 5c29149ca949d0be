"""The compatibility matrix for volumes, dense fields and thin-plate splines.

The same machinery as tests/test_compat.py: every case runs eagerly, inside
tf.function with every dimension unknown, in a tf.compat.v1 graph with
placeholders of unknown shape and a Session, and under jit_compile=True,
and must give the eager numbers and gradients. The eager results are
checked against PyTorch, SciPy and NumPy in tests/test_stn_volumes.py,
tests/test_dense_fields.py and tests/test_tps.py.
"""
import numpy as np
import pytest
import tensorflow as tf

import stn
from tests import test_compat

RNG = np.random.default_rng(1)


def f32(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


VOL = f32(2, 4, 5, 6, 2)
THETA12 = (np.eye(3, 4).reshape(1, 12) + 0.2 * f32(2, 12)).astype(np.float32)
THETA15 = np.concatenate([THETA12, 0.05 * f32(2, 3)], axis=1)
GRID3 = f32(2, 3, 2, 4, 3, low=-1.3, high=1.3)
IMG = f32(2, 7, 9, 3)
FIELD2 = f32(2, 7, 9, 2, low=-1.5, high=1.5)
FIELD3 = f32(2, 4, 5, 6, 3, low=-1.0, high=1.0)
LATTICE = stn.control_point_lattice(3).numpy()
SOURCE = (LATTICE[None] + 0.1 * f32(2, 9, 2)).astype(np.float32)

CASES = {
    "stn.grid_sample[5-D]": (lambda v, g: stn.grid_sample(v, g), (VOL, GRID3), (0, 1)),
    "stn.grid_sample[5-D,nearest,reflection]": (
        lambda v, g: stn.grid_sample(v, g, interpolation="nearest", padding_mode="reflection",
                                     align_corners=True), (VOL, GRID3), (0,)),
    "stn.spatial_transformer_network[3-D]": (
        lambda v, t: stn.spatial_transformer_network(v, t, (3, 4, 5), padding_mode="border"),
        (VOL, THETA12), (0, 1)),
    "stn.spatial_transformer_network[3-D,projective]": (
        lambda v, t: stn.spatial_transformer_network(v, t), (VOL, THETA15), (0, 1)),
    "stn.affine_grid[3-D]": (lambda t: stn.affine_grid(t, (2, 3, 4)), (THETA12,), (0,)),
    "stn.warp[2-D]": (lambda x, d: stn.warp(x, d), (IMG, FIELD2), (0, 1)),
    "stn.warp[3-D,normalized,zeros]": (
        lambda v, d: stn.warp(v, d, units="normalized", padding_mode="zeros"),
        (VOL, 0.3 * FIELD3), (0, 1)),
    "stn.integrate_velocity": (lambda v: stn.integrate_velocity(v, steps=4), (FIELD2,), (0,)),
    "stn.compose_displacements": (stn.compose_displacements, (FIELD2, 0.5 * FIELD2), (0, 1)),
    "stn.jacobian_determinant[2-D]": (stn.jacobian_determinant, (FIELD2,), (0,)),
    "stn.jacobian_determinant[3-D]": (stn.jacobian_determinant, (FIELD3,), (0,)),
    "stn.resize_displacement": (lambda d: stn.resize_displacement(d, (5, 4)), (FIELD2,), (0,)),
    "stn.tps_grid": (lambda c, s: stn.tps_grid(c, s, (4, 5)), (LATTICE, SOURCE), (0, 1)),
    "stn.transform_family[tps].warp": (
        lambda x, s: stn.transform_family("tps", control_points=3).warp(x, s, (6, 5)),
        (IMG, SOURCE), (0, 1)),
    "stn.similarity_theta[3-D]": (stn.similarity_theta, (f32(2, 7),), (0,)),
    "stn.rotation_theta[3-D]": (stn.rotation_theta, (f32(2, 3),), (0,)),
    "stn.euler_rotation_theta": (stn.euler_rotation_theta, (f32(2, 3),), (0,)),
    "stn.affine_diffeomorphic_theta[3-D]": (stn.affine_diffeomorphic_theta, (0.3 * f32(2, 12),),
                                            (0,)),
    "stn.attention_theta[3-D]": (stn.attention_theta, (f32(2, 4),), (0,)),
    "stn.invert_affine[3-D]": (stn.invert_affine, (THETA12.reshape(2, 3, 4),), (0,)),
    "stn.compose_affine[3-D]": (stn.compose_affine,
                                (THETA12.reshape(2, 3, 4), THETA15.reshape(2, 15)), (0, 1)),
}

# Trailing dimensions that stay static: the parameter count tells 2-D from
# 3-D, and invert/compose need to know a matrix is affine (as in test_compat).
KEEP_STATIC = {"stn.similarity_theta[3-D]": 1, "stn.rotation_theta[3-D]": 1,
               "stn.euler_rotation_theta": 1, "stn.affine_diffeomorphic_theta[3-D]": 1,
               "stn.attention_theta[3-D]": 1, "stn.invert_affine[3-D]": 2,
               "stn.compose_affine[3-D]": 1}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tf_function_with_every_dim_unknown(name):
    fn, inputs, wrt = CASES[name]
    test_compat.check(test_compat.in_tf_function(fn, inputs, wrt, KEEP_STATIC.get(name, 0)),
                      test_compat.eager(fn, inputs, wrt))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tf1_graph_with_every_dim_unknown(name):
    fn, inputs, wrt = CASES[name]
    test_compat.check(test_compat.in_tf1_graph(fn, inputs, wrt, KEEP_STATIC.get(name, 0)),
                      test_compat.eager(fn, inputs, wrt))


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_compile(name):
    fn, inputs, wrt = CASES[name]
    test_compat.check(test_compat.under_jit(fn, inputs, wrt), test_compat.eager(fn, inputs, wrt))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
def test_dtypes_are_kept(dtype, plain_ops):
    # Plain ops: the dtype rules are the same with XLA (test_jit_compile), and
    # compiling every function for three dtypes took ~40 s per dtype.
    c = lambda x: tf.cast(x, dtype)
    assert stn.grid_sample(c(VOL), c(GRID3)).dtype == dtype
    assert stn.spatial_transformer_network(c(VOL), c(THETA12)).dtype == dtype
    assert stn.affine_grid(c(THETA12), (2, 3, 4)).dtype == dtype
    assert stn.warp(c(IMG), c(FIELD2)).dtype == dtype
    assert stn.integrate_velocity(c(FIELD3), steps=2).dtype == dtype
    assert stn.compose_displacements(c(FIELD2), c(FIELD2)).dtype == dtype
    assert stn.jacobian_determinant(c(FIELD3)).dtype == dtype
    assert stn.resize_displacement(c(FIELD2), (3, 3)).dtype == dtype
    assert stn.tps_grid(LATTICE, c(SOURCE), (3, 4)).dtype == dtype
    assert stn.transform_family("tps", control_points=3).warp(c(IMG), c(SOURCE)).dtype == dtype
    for fn, p in ((stn.similarity_theta, f32(2, 7)), (stn.euler_rotation_theta, f32(2, 3)),
                  (stn.affine_diffeomorphic_theta, f32(2, 12))):
        assert fn(c(p)).dtype == dtype


def test_integer_volumes_become_float32():
    vol = tf.constant(RNG.integers(0, 255, (1, 3, 4, 5, 1)), tf.int32)
    out = stn.spatial_transformer_network(vol, stn.identity_theta(1, ndim=3))
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), vol.numpy().astype(np.float32))
