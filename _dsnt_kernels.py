"""Hand-tuned kernels for ``dsnt.py``: the same maths, computed faster.

``dsnt.py`` writes each definition directly, as plain TensorFlow ops whose
gradients TensorFlow derives. This private module holds optimisations of
three of them, with the same values and gradients to float round-off:

* :func:`dsnt` -- the softmax DSNT with one backward pass for the softmax
  and the expectation together, and the expectation of the other
  rectifications with its gradient written out;
* :func:`js_divergence` -- the Jensen-Shannon regulariser, whose elementwise
  work (the target Gaussian, two logarithms, the terms) runs as one
  XLA-compiled function, with a hand-written gradient that is itself
  differentiable (second order).

``dsnt.py`` calls them while ``spatial_convention.kernels_enabled()``
(``use_kernels(False)`` or ``SPATIAL_KERNELS=0`` run the direct
definitions instead); ``spatial_convention.set_jit(False)`` keeps these
kernels but runs their compiled parts as plain ops. The tests compare every
kernel with the direct definition, values and gradients (second order where
claimed), in 2-D and 3-D. The measurements behind each trick are in
``docs/performance.md``, section "DSNT kernels".

Layout as in ``dsnt.py``: maps ``[B, *spatial, K]`` (spatial ``(H, W)`` or
``(D, H, W)``), coordinates ``[B, K, n]`` listed ``(x, y[, z])``, x along
the last spatial axis. The maths these kernels share with the direct
version (the expectation, the Gaussian's factors, dsntnn's epsilon) is not
repeated here: ``dsnt.py`` passes its own functions in, so this module
imports only TensorFlow and ``spatial_convention`` (no import cycle).
"""
import functools
import operator
from typing import Callable, Tuple

import tensorflow as tf

import spatial_convention

def _spatial_axes(rank):
    return list(range(1, rank - 1))


def _coordinate_axes(rank):
    """The spatial axis of each coordinate (x, y[, z]): x is the last one."""
    return list(reversed(_spatial_axes(rank)))


def _sum_spatial(t):
    """Sum of [B, *spatial, K] over its spatial axes, last axis first.

    One axis at a time, rows before columns: shorter float32 sums. Done by
    TensorFlow after the compiled function, not inside it: XLA's CPU
    reduction made the whole step slower.
    """
    for axis in reversed(_spatial_axes(t.shape.rank)):
        t = tf.reduce_sum(t, axis=axis)
    return t


def _expectation_gradient(d_c, shape, rank, dtype):
    """The expectation's gradient: d/dp = sum_j u_j c_j, shape [B, *spatial, K].

    ``d_c`` [B, K, n] is the upstream gradient of the coordinates, c_j the
    pixel centres along coordinate j's axis: an outer sum of n small
    tensors, where autodiff would broadcast each marginal's gradient to the
    full map and add them.
    """
    u = d_c
    for _ in range(rank - 2):
        u = tf.expand_dims(u, 1)                               # [B, 1.., K, n]
    terms = []
    for j, axis in enumerate(_coordinate_axes(rank)):
        centres = spatial_convention.pixel_centers(shape[axis], align_corners=False, dtype=dtype)
        terms.append(u[..., j] * tf.reshape(centres, [-1] + [1] * (rank - 1 - axis)))
    return functools.reduce(operator.add, terms)


def _expectation_kernel(p, expectation):
    """``expectation(p)`` with the gradient written out (_expectation_gradient)."""
    @tf.custom_gradient
    def forward(p):
        shape, rank = tf.shape(p), p.shape.rank
        return expectation(p), lambda d_c: _expectation_gradient(d_c, shape, rank, p.dtype)
    return forward(p)


def _softmax_dsnt_grad(p, d_p, d_c, s, *, rank):
    """The gradient to the logits of (p, coords), given s = sum(p t) per map.

    With t = d_p + sum_j u_j c_j (everything upstream of a pixel: the maps'
    own gradient and the expectation's), the softmax's Jacobian gives
    p (t - s). One elementwise pass, XLA-compiled. ``rank`` (4 or 5) is a
    compile-time option: the compiled functions relax their input shapes
    between calls, down to an unknown rank.
    """
    return p * (d_p + _expectation_gradient(d_c, tf.shape(p), rank, p.dtype) - s)


def _softmax_dsnt(x, normalize, expectation):
    """(softmax maps, their expectation) of logits x [B, *spatial, K], one backward pass."""
    @tf.custom_gradient
    def forward(x):
        # Forward: TensorFlow's fused softmax (as XLA-compiled ops it computed
        # the exponentials twice, for the sum and for the division).
        p = normalize(x, "softmax")
        coords = expectation(p)

        def grad(d_p, d_c):
            # s = sum(p t) = sum(p d_p) + u . coords: no pass of the expectation
            # of its own, and a TensorFlow reduction (XLA's CPU reduction was
            # slower); then one compiled elementwise pass.
            u_dot_c = tf.reduce_sum(d_c * coords, axis=-1)     # [B, K]
            for _ in range(x.shape.rank - 2):
                u_dot_c = tf.expand_dims(u_dot_c, 1)
            s = tf.reduce_sum(p * d_p, axis=_spatial_axes(x.shape.rank), keepdims=True) + u_dot_c
            return spatial_convention.compiled(_softmax_dsnt_grad, p, d_p, d_c, s,
                                               rank=x.shape.rank)

        return (p, coords), grad

    return forward(x)


# Not converted by autograph (no Python control flow on tensors here or in the
# maths passed in): shorter tracing inside tf.function.
@tf.autograph.experimental.do_not_convert
def dsnt(x: tf.Tensor, method: str, *, normalize: Callable[[tf.Tensor, str], tf.Tensor],
         expectation: Callable[[tf.Tensor], tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """(normalize(x, method), expectation of it), with the kernels' gradients.

    Args:
      x: maps ``[B, *spatial, K]`` in the compute dtype.
      method: as ``dsnt.METHODS``.
      normalize: ``dsnt``'s rectification ``(x, method) -> p``.
      expectation: ``dsnt``'s expectation ``p -> [B, K, n]``.
    """
    if method == "softmax":
        return _softmax_dsnt(x, normalize, expectation)
    p = normalize(x, method)
    return p, _expectation_kernel(p, expectation)


def _spatial_sizes(p, rank):
    shape = tf.shape(p)
    return [shape[axis] for axis in _spatial_axes(rank)]


def _log_mixture(p, q, eps):
    """log(m + eps) of the mixture m = (p + q) / 2."""
    return tf.math.log(0.5 * (p + q) + eps)


def _js_terms(p, c, sigma, *, gauss_log_factors, eps, rank):
    """Per-pixel JS terms and the heatmap's log ratio log p - log m, [B, *spatial, K].

    0.5 KL(p||m) + 0.5 KL(q||m), m = (p + q) / 2, is 0.5 * the sum over
    pixels of p (log p - log m) + q (log q - log m), with eps inside the
    logs of p and m; log q is the sum of the logs of q's separable factors
    (no full-size logarithm). XLA-compiled: fusing q and the elementwise
    steps into a few loops (what as plain ops would be some fourteen
    kernels over the maps; q is never stored) is the kernel's gain, and
    drawing the target's factors here saves some twenty small TensorFlow
    ops per call. The sum is left to the caller (_sum_spatial).
    """
    factors, log_factors = gauss_log_factors(c, _spatial_sizes(p, rank), sigma)
    q = functools.reduce(operator.mul, factors)
    log_m = _log_mixture(p, q, eps)
    p_lr = tf.math.log(p + eps) - log_m
    terms = p * p_lr + q * (functools.reduce(operator.add, log_factors) - log_m)
    return terms, p_lr


def _js_target_grads(p, c, sigma, u, *, gauss_log_factors, eps, rank):
    """Gradients of the JS sums (upstream u [B, 1.., K]) to the centres c and sigma.

    d/dq = u (log q - log m), recomputed from p rather than kept from the
    forward pass (less memory), reduced onto each separable factor of q
    (the product of the others, summed over the other axes), then taken
    back to c and sigma through the factors by autodiff of a few
    [B, n, K] tensors.
    """
    with tf.GradientTape() as tape:
        tape.watch([c, sigma])
        factors, log_factors = gauss_log_factors(c, _spatial_sizes(p, rank), sigma)
    q = functools.reduce(operator.mul, factors)
    d_q = u * (functools.reduce(operator.add, log_factors) - _log_mixture(p, q, eps))
    d_factors = []
    for j, axis in enumerate(_coordinate_axes(rank)):
        others = functools.reduce(operator.mul, [f for i, f in enumerate(factors) if i != j])
        d_factors.append(tf.reduce_sum(d_q * others, keepdims=True,
                                       axis=[a for a in _spatial_axes(rank) if a != axis]))
    return tape.gradient(factors, [c, sigma], output_gradients=d_factors)


@tf.autograph.experimental.do_not_convert
def js_divergence(p: tf.Tensor, c: tf.Tensor, sigma: tf.Tensor, *,
                  gauss_log_factors: Callable[..., Tuple[list, list]],
                  eps: float) -> tf.Tensor:
    """Per-map Jensen-Shannon divergence of maps p [B, *spatial, K] -> [B, K].

    The target is the normalised Gaussian at centres c [B, K, n] with width
    sigma (pixels), drawn inside the compiled function from
    ``gauss_log_factors(c, sizes, sigma) -> (factors, log_factors)``
    (``dsnt``'s separable factors, coordinate order (x, y[, z])). The sum
    over pixels is a TensorFlow reduction (_sum_spatial). Hand-written
    gradient:
    d/dp = 0.5 (log(p + eps) - log(m + eps)); the Gaussian's total
    derivative 0.5 (log q - log m) is routed through q's factors (the "+1"
    terms of the x log x derivatives cancel). It differs from autodiff of
    the definition only where p < ~eps, whose "+1" terms autodiff weighs
    by p / (p + eps); through a softmax those pixels carry no gradient.
    Differentiable again (second order).
    """
    options = dict(gauss_log_factors=gauss_log_factors, eps=eps, rank=p.shape.rank)

    @tf.custom_gradient
    def js(p, c, sigma):
        terms, p_lr = spatial_convention.compiled(_js_terms, p, c, sigma, **options)
        value = 0.5 * _sum_spatial(terms)

        def grad(upstream):
            u = 0.5 * upstream
            for _ in range(p.shape.rank - 2):
                u = tf.expand_dims(u, 1)                       # [B, 1.., K]
            d_c, d_sigma = spatial_convention.compiled(_js_target_grads, p, c, sigma, u, **options)
            return u * p_lr, d_c, d_sigma

        return value, grad

    return js(p, c, sigma)
