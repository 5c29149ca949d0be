"""Kernels: stn's hand-written sampling kernels (_stn_kernels) against the direct sampler.

The direct definitions in ``stn.py`` (taps and weights, autodiff) are the
reference; they are checked against PyTorch and SciPy in test_stn.py and
test_stn_volumes.py. Here every mode, in 2-D and 3-D, with and without XLA,
must give the same values and gradients with the kernels on and off.
"""
import itertools

import numpy as np
import pytest
import tensorflow as tf

import _stn_kernels
import spatial_convention
import stn


RNG = np.random.default_rng(0)


@pytest.fixture
def use_kernels():
    """spatial_convention.use_kernels, restored after the test (off: the direct
    definitions with autodiff)."""
    previous = spatial_convention.kernels_enabled()
    yield spatial_convention.use_kernels
    spatial_convention.use_kernels(previous)


def _value_and_grads(fn, *inputs):
    tensors = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn(*tensors)
        loss = tf.reduce_sum(out * tf.cos(3.0 * tf.cast(out, tf.float64)))
    return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, tensors)]


# Channels: N-linear interpolation reads narrow images (2^n x channels at
# most _stn_kernels._WINDOW_MAX_WIDTH) through corner windows and wider ones
# corner by corner; both are checked, in 2-D and 3-D.
KERNEL_CASES = [(n, a, p, i, c) for n in (2, 3) for a, p, i in
                itertools.product([False, True], stn.PADDING_MODES, stn.INTERPOLATIONS)
                if not (n == 3 and i == "bicubic")
                for c in ((3, 6) if i == "bilinear" and n == 2 else (1, 5) if i == "bilinear"
                          else (3 if n == 2 else 2,))]


def test_kernel_cases_cover_both_ways_of_reading_corners():
    for ndim in (2, 3):
        widths = {2 ** ndim * c for n, a, p, i, c in KERNEL_CASES if i == "bilinear" and n == ndim}
        assert min(widths) <= _stn_kernels._WINDOW_MAX_WIDTH < max(widths)


@pytest.mark.parametrize("ndim,align_corners,padding_mode,interpolation,channels", KERNEL_CASES,
                         ids=[f"{n}d-{'ac' if a else 'noac'}-{p}-{i}-c{c}"
                              for n, a, p, i, c in KERNEL_CASES])
def test_kernels_match_the_direct_sampler(use_kernels, jit, ndim, align_corners, padding_mode,
                                          interpolation, channels):
    shape = (2, 5, 6, channels) if ndim == 2 else (2, 3, 4, 5, channels)
    img = RNG.standard_normal(shape)
    grid = RNG.uniform(-1.5, 1.5, (2, 4, 3, 2) if ndim == 2 else (2, 3, 2, 4, 3))
    theta = np.eye(ndim, ndim + 1) + RNG.normal(0, 0.3, (2, ndim, ndim + 1))
    kw = dict(align_corners=align_corners, padding_mode=padding_mode, interpolation=interpolation)
    calls = [lambda x, g: stn.grid_sample(x, g, **kw),
             lambda x, t: stn.spatial_transformer_network(x, t, **kw)]
    for call, second in zip(calls, (grid, theta)):
        results = {}
        for kernels in (True, False):
            use_kernels(kernels)
            results[kernels] = _value_and_grads(call, img, second)
        for fast, plain in zip(results[True], results[False]):
            np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12)
