"""Differentiable Spatial to Numerical Transform (DSNT) for TensorFlow.

Implements the layer and the regularisers of Nibali et al. 2018, "Numerical
Coordinate Regression with Convolutional Neural Networks"
(https://arxiv.org/abs/1801.07372), with the semantics of the authors'
PyTorch package ``dsntnn`` but TensorFlow's channels-last layout.

This module imports only TensorFlow, NumPy and the project's small
``spatial_convention.py`` (the coordinate convention shared with ``stn`` and
``coordconv``), so the two files can be copied into any graph: TF2 eager,
``tf.function`` (unknown batch and spatial sizes), TF1 graphs via
``tf.compat.v1`` placeholders and a Session, and XLA (``jit_compile=True``).

Layouts
-------
* heatmaps ``[B, H, W]`` (one point per image) or ``[B, H, W, K]`` (K points,
  one heatmap channel each; ``K == 1`` is squeezed by :func:`dsnt`).
* coordinates ``[B, 2]`` (one point) or ``[B, K, 2]``, listed ``(x, y)``.

Coordinate convention
---------------------
Normalised coordinates run from -1 to 1 across the image, x along the width
axis, y along the height axis. -1 and 1 are the *outer edges* of the border
pixels, so pixel ``i`` of ``n`` has its centre at ``(2 i + 1) / n - 1``
(``dsntnn.normalized_linspace``; PyTorch ``align_corners=False``). For
``n = 4`` the centres are ``[-0.75, -0.25, 0.25, 0.75]``.

Gaussian widths (``fwhm``) are in pixels; ``sigma = fwhm / (2 sqrt(2 ln 2))``.

Dtypes
------
Outputs keep the input dtype (float16, bfloat16, float32, float64); integer
and bool inputs are cast to float32. Half-precision inputs are computed in
float32 internally (sums over many pixels and the 1e-24 epsilon of the
divergences do not survive float16) and cast back.

Numerical behaviour
-------------------
Softmax is max-shifted, so enormous logits give the argmax pixel's centre;
``-inf`` logits are pixels of zero probability. ``relu``/``abs``/``sigmoid``
maps are scaled by their maximum before the sum (no overflow), and a map
that rectifies to all zeros becomes uniform (coordinates ``(0, 0)``, finite
gradients). NaN inputs give NaN coordinates, as do ``+inf`` values except
under ``sigmoid`` (where they are 1). The divergences add dsntnn's 1e-24
inside their logs, so delta heatmaps and far-away targets stay finite.

Loss reduction
--------------
Every loss takes ``reduction="mean"`` (default): the mean over all points of
the batch, i.e. dsntnn's ``average_loss(losses, mask)`` -- with a mask, the
masked sum divided by ``max(sum(mask), 1)``. This is a scalar, so the seed's
``loss = mse + js_reg_loss(norm_heatmaps, targets)`` works unchanged.
``reduction="sum"`` sums, ``reduction="none"`` returns the per-point losses
(``[B]`` for one point per image -- ``[B, H, W]`` or ``[B, H, W, 1]`` maps,
``[B, 2]`` coordinates -- and ``[B, K]`` for K points) multiplied by the mask
if one is given.

Gradients
---------
The expectation and the JS divergence have hand-written (closed-form)
gradients for speed, and with ``method="softmax"`` the softmax and the
expectation share one backward pass; all gradients are checked against
finite differences in the tests, and the second-order gradients of JS and of
the softmax DSNT against autodiff of their definitions. The Gaussian target
is differentiable in its centres.

Speed
-----
The JS divergence's elementwise work (the target, two logarithms, the
terms) runs as one XLA-compiled function, which fuses what as plain ops
would be fourteen kernels over ``[B, H, W, K]``; TensorFlow sums the terms,
and the gradient to the centres (and fwhm) is a second compiled function.
The softmax DSNT's backward pass (maps and coordinates at once) is one
TensorFlow sum and one compiled elementwise pass. Set ``SPATIAL_JIT=0`` before import, or
call ``set_jit(False)``, for plain TensorFlow ops with the same numbers (the
switch is shared with ``stn``).
"""
import math

import numpy as np
import tensorflow as tf

import spatial_convention
from spatial_convention import as_float_tensor, check_option, check_positive, check_rank

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "dsnt",
    "normalize_heatmaps",
    "heatmap_coords",
    "normalized_linspace",
    "pixel_to_normalized_coordinates",
    "normalized_to_pixel_coordinates",
    "fwhm_to_sigma",
    "sigma_to_fwhm",
    "make_gauss",
    "js_reg_loss",
    "kl_reg_loss",
    "variance_reg_loss",
    "euclidean_loss",
    "mse_loss",
    "l1_loss",
    "average_loss",
    "set_jit",
]

#: Rectification methods accepted by :func:`dsnt` / :func:`normalize_heatmaps`.
#: ``"none"`` passes already-normalised heatmaps through untouched.
METHODS = ("softmax", "relu", "abs", "sigmoid", "none")

#: Reductions accepted by every loss.
REDUCTIONS = ("mean", "sum", "none")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# dsntnn's epsilon: added to the Gaussian normaliser and inside every log.
_EPS = 1e-24


def set_jit(enabled):
    """Chooses whether the JS divergence runs XLA-compiled (default) or as plain ops.

    Both give the same numbers to float round-off; plain ops are there for
    platforms without XLA. Takes effect for calls traced after it. One switch
    for the project: the same as ``stn.set_jit``.

    Example:
      >>> dsnt.set_jit(False)   # plain TensorFlow ops from here on
    """
    spatial_convention.set_jit(enabled)


# ---------------------------------------------------------------------------
# argument handling
# ---------------------------------------------------------------------------

def _float_tensor(x, name, dtype=None):
    """Real-valued tensor (ints/bools -> float32), or cast to ``dtype`` if given."""
    x = as_float_tensor(x, name=name)
    return x if dtype is None or x.dtype == dtype else tf.cast(x, dtype)


# Half types are computed in float32; others in their own dtype.
_compute_dtype = spatial_convention.compute_dtype


def _to_bhwk(heatmaps, name="heatmaps"):
    """Returns ([B, H, W, K] tensor, squeeze) where squeeze means one point."""
    rank = check_rank(heatmaps, name=name, ranks=(3, 4), layout="[B, H, W] or [B, H, W, K]")
    if rank == 3:
        return tf.expand_dims(heatmaps, -1), True  # not [..., None]: its gradient is a copy
    return heatmaps, heatmaps.shape[-1] == 1


def _dims_check(tensor, expected, name, what):
    """Static shape check of `tensor` against `expected` (ints or None)."""
    got = tensor.shape.as_list()
    for g, e in zip(got, expected):
        if g is not None and e is not None and g != e:
            raise ValueError(f"{name} must have shape {what}; got {tensor.shape}")


# ---------------------------------------------------------------------------
# the one coordinate convention
# ---------------------------------------------------------------------------

# The formulas live in spatial_convention.py, shared with stn and coordconv:
# pixel p of n <-> normalised (2 p + 1) / n - 1 (align_corners=False), and one
# normalised unit spans n / 2 pixels.


def normalized_linspace(length, dtype=tf.float32):
    """Normalised centres of the ``length`` pixels along one axis.

    Element ``i`` is ``(2 i + 1) / length - 1``: the values run from
    ``-1 + 1/length`` to ``1 - 1/length``; -1 and 1 are the outer edges of
    the border pixels (``dsntnn.normalized_linspace``).

    Args:
      length: python int or scalar int tensor (may be dynamic), > 0.
      dtype: floating dtype of the result (default float32).

    Returns:
      ``[length]`` tensor of ``dtype``.

    Example:
      >>> dsnt.normalized_linspace(4).numpy()
      array([-0.75, -0.25,  0.25,  0.75], dtype=float32)
    """
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"dtype must be a floating dtype, got {dtype.name}")
    if isinstance(length, (int, np.integer)) and not isinstance(length, bool) and length <= 0:
        raise ValueError(f"length must be a positive number of pixels, got {length}")
    return spatial_convention.pixel_centers(length, align_corners=False, dtype=dtype)


def _size_xy(size, dtype, name="size"):
    """`size` ordered (..., H, W) -> tensor ordered (W, H, ...) of dtype."""
    if isinstance(size, (list, tuple)):
        if len(size) == 0:
            raise ValueError(f"{name} must list the pixel counts (..., height, width); "
                             f"got {size!r}")
        for s in size:
            if isinstance(s, (int, np.integer)) and s <= 0:
                raise ValueError(f"{name} entries must be positive, got {size!r}")
        size = tf.stack([tf.cast(s, dtype) for s in size])
    else:
        size = tf.cast(tf.convert_to_tensor(size, name=name), dtype)
        if size.shape.rank != 1:
            raise ValueError(f"{name} must be a 1-D list (..., height, width); "
                             f"got shape {size.shape}")
    return tf.reverse(size, [0])


def _conversion_args(coords, size):
    coords = _float_tensor(coords, "coords")
    if coords.shape.rank == 0:
        raise ValueError("coords must have a last axis of (x, y, ...) values; got a scalar")
    cdtype = _compute_dtype(coords.dtype)
    size_xy = _size_xy(size, cdtype)
    d, n = coords.shape[-1], size_xy.shape[0]
    if d is not None and n is not None and d != n:
        raise ValueError(f"size has {n} entries but coords has {d} values per point "
                         f"(last axis of shape {coords.shape})")
    return coords, tf.cast(coords, cdtype), size_xy


def pixel_to_normalized_coordinates(coords, size):
    """Converts pixel coordinates to normalised [-1, 1] coordinates.

    Pixel ``p`` (0 = centre of the first pixel) of an axis with ``n`` pixels
    maps to ``(2 p + 1) / n - 1``.

    Args:
      coords: ``[..., D]`` coordinates ordered ``(x, y, ...)``, in pixels.
      size: pixel counts ordered ``(..., height, width)`` (python ints or a
        1-D tensor, may be dynamic, e.g. ``tf.shape(images)[1:3]``).

    Returns:
      Tensor like ``coords`` (same dtype; ints become float32).

    Example:
      >>> dsnt.pixel_to_normalized_coordinates([[0.0, 3.0]], size=(4, 8)).numpy()
      array([[-0.875,  0.75 ]], dtype=float32)
    """
    coords, c, size_xy = _conversion_args(coords, size)
    return tf.cast(spatial_convention.pixel_to_normalized(c, size_xy), coords.dtype)


def normalized_to_pixel_coordinates(coords, size):
    """Converts normalised [-1, 1] coordinates to pixel coordinates.

    The inverse of :func:`pixel_to_normalized_coordinates`:
    ``p = ((c + 1) n - 1) / 2``.

    Args:
      coords: ``[..., D]`` coordinates ordered ``(x, y, ...)``, normalised.
      size: pixel counts ordered ``(..., height, width)``.

    Returns:
      Tensor like ``coords``, in pixels.

    Example:
      >>> dsnt.normalized_to_pixel_coordinates([[-0.875, 0.75]], size=(4, 8)).numpy()
      array([[0., 3.]], dtype=float32)
    """
    coords, c, size_xy = _conversion_args(coords, size)
    return tf.cast(spatial_convention.normalized_to_pixel(c, size_xy), coords.dtype)


def fwhm_to_sigma(fwhm):
    """Gaussian standard deviation from its full width at half maximum.

    ``sigma = fwhm / (2 sqrt(2 ln 2))`` (~ ``fwhm / 2.3548``); both in pixels.

    Example:
      >>> round(dsnt.fwhm_to_sigma(2.3548200450309493), 6)
      1.0
    """
    return fwhm / _FWHM_PER_SIGMA


def sigma_to_fwhm(sigma):
    """Full width at half maximum from a standard deviation (pixels).

    Inverse of :func:`fwhm_to_sigma`. Useful to port dsntnn code, whose
    losses take ``sigma_t``: ``js_reg_loss(h, c, fwhm=sigma_to_fwhm(sigma_t))``.
    """
    return sigma * _FWHM_PER_SIGMA


# ---------------------------------------------------------------------------
# DSNT
# ---------------------------------------------------------------------------

def _normalize_bhwk(x, method):
    """Rectifies and normalises each [H, W] map of `x` [B, H, W, K]."""
    axes = [1, 2]
    if method == "none":
        return x
    if method == "softmax":
        # tf.nn.softmax is max-shifted (safe for huge logits) and fused.
        shape = tf.shape(x)
        if x.shape[3] == 1:  # common case: softmax along the last axis
            flat = tf.reshape(x, [shape[0], shape[1] * shape[2]])
            return tf.reshape(tf.nn.softmax(flat), shape)
        flat = tf.reshape(x, [shape[0], shape[1] * shape[2], shape[3]])
        return tf.reshape(tf.nn.softmax(flat, axis=1), shape)
    if method == "relu":
        r = tf.nn.relu(x)
    elif method == "abs":
        r = tf.abs(x)
    else:  # sigmoid
        r = tf.sigmoid(x)
    # Divide by the (gradient-free, cancelling) maximum first so that the sum
    # cannot overflow; an all-zero map becomes uniform (coordinates 0, 0).
    # NaN reaches the sum (reduce_max may skip it), so NaN maps stay NaN.
    m = tf.stop_gradient(tf.reduce_max(r, axis=axes, keepdims=True))
    r = r / tf.where(m > 0, m, tf.ones_like(m))
    s = tf.reduce_sum(r, axis=axes, keepdims=True)
    nonzero = tf.not_equal(s, 0)
    shape = tf.shape(x)
    uniform = 1.0 / tf.cast(shape[1] * shape[2], x.dtype)
    return tf.where(nonzero, r / tf.where(nonzero, s, tf.ones_like(s)), uniform)


def _map_centres(p):
    """Normalised pixel centres of maps `p` [B, H, W, K]: xs [W], ys [H]."""
    shape = tf.shape(p)
    return normalized_linspace(shape[2], p.dtype), normalized_linspace(shape[1], p.dtype)


def _expectation(p):
    """E[(x, y)] of normalised maps `p` [B, H, W, K] -> [B, K, 2], and the centres.

    The x and y marginals dotted with the pixel centres xs [W], ys [H].
    """
    xs, ys = _map_centres(p)
    x = tf.reduce_sum(tf.reduce_sum(p, axis=1) * xs[:, tf.newaxis], axis=1)  # [B, K]
    y = tf.reduce_sum(tf.reduce_sum(p, axis=2) * ys[:, tf.newaxis], axis=1)
    return tf.stack([x, y], axis=-1), xs, ys


def _expectation_upstream(d_c, xs, ys):
    """The expectation's gradient: d/dp_ij = u_x x_j + u_y y_i, [B, H, W, K]."""
    ux = d_c[:, tf.newaxis, tf.newaxis, :, 0]  # [B, 1, 1, K]
    uy = d_c[:, tf.newaxis, tf.newaxis, :, 1]
    return ux * xs[:, tf.newaxis] + uy * ys[:, tf.newaxis, tf.newaxis]


@tf.custom_gradient
def _expectation_bhwk(p):
    """E[(x, y)] of normalised maps `p` [B, H, W, K] -> [B, K, 2].

    Backward: an outer sum of two small tensors (_expectation_upstream).
    """
    coords, xs, ys = _expectation(p)
    return coords, lambda d_c: _expectation_upstream(d_c, xs, ys)


def _softmax_dsnt_grad(p, d_p, d_c, s):
    """The gradient to the logits of (p, coords), given s = sum(p t) per map.

    With t = d_p + u_x x_j + u_y y_i (everything upstream of pixel ij: the
    maps' own gradient and the expectation's), the softmax's Jacobian gives
    p (t - s). One elementwise pass, XLA-compiled; s is summed by TensorFlow
    beforehand (see _softmax_dsnt).
    """
    xs, ys = _map_centres(p)
    return p * (d_p + _expectation_upstream(d_c, xs, ys) - s)


@tf.custom_gradient
def _softmax_dsnt(x):
    """(softmax maps [B, H, W, K], their expectation [B, K, 2]) of logits x.

    Forward: TensorFlow's fused softmax (as XLA-compiled ops the
    exponentials were computed twice, once for the sum and once for the
    division; the step took 1.3x as long) and the expectation.

    Backward, both at once: s = sum(p t) = sum(p d_p) + u . coords needs no
    pass of the expectation's own, and is a TensorFlow reduction (XLA's CPU
    reduction took twice as long); then one compiled elementwise pass. At
    256 x 64 x 64 x 1 (two micro-benchmark runs) this took 0.59-0.66x the
    time of the expectation's gradient, an addition and TensorFlow's
    softmax gradient, and 0.6-0.76x that of the same maths all compiled or
    all plain ops.
    """
    p = _normalize_bhwk(x, "softmax")
    coords, _, _ = _expectation(p)

    def grad(d_p, d_c):
        s = (tf.reduce_sum(p * d_p, axis=[1, 2], keepdims=True)
             + tf.reduce_sum(d_c * coords, axis=-1)[:, tf.newaxis, tf.newaxis, :])
        return spatial_convention.compiled(_softmax_dsnt_grad, p, d_p, d_c, s)

    return (p, coords), grad


def _prepare_heatmaps(inputs, name):
    x = _float_tensor(inputs, name)
    x4, squeeze = _to_bhwk(x, name)
    for axis, label in ((1, "height"), (2, "width")):
        if x4.shape[axis] == 0:
            raise ValueError(f"{name} must have a non-empty {label}; got shape {x.shape}")
    return x, x4, squeeze


def normalize_heatmaps(inputs, method="softmax"):
    """Rectifies heatmaps and normalises each to sum to one over (H, W).

    Args:
      inputs: ``[B, H, W]`` or ``[B, H, W, K]`` raw network outputs.
      method: ``"softmax"`` (default), ``"relu"``, ``"abs"``, ``"sigmoid"``
        (each followed by division by the sum), or ``"none"`` (inputs are
        already normalised; returned as is). An all-zero map after
        ``relu``/``abs``/``sigmoid`` becomes uniform.

    Returns:
      Tensor with the shape and dtype of ``inputs`` (ints -> float32).

    Example:
      >>> h = dsnt.normalize_heatmaps(tf.zeros([2, 4, 4, 3]), method="relu")
      >>> float(h[0, 0, 0, 0])
      0.0625
    """
    check_option(method, name="method", allowed=METHODS)
    x, x4, _ = _prepare_heatmaps(inputs, "inputs")
    cdtype = _compute_dtype(x.dtype)
    p = _normalize_bhwk(tf.cast(x4, cdtype), method)
    return tf.reshape(tf.cast(p, x.dtype), tf.shape(x))


def heatmap_coords(heatmaps):
    """Expected (x, y) of already-normalised heatmaps (the DSNT itself).

    Args:
      heatmaps: ``[B, H, W]`` or ``[B, H, W, K]``, each map summing to one.

    Returns:
      ``[B, 2]`` for ``[B, H, W]`` or ``[B, H, W, 1]`` input, else ``[B, K, 2]``;
      ``(x, y)`` in normalised coordinates, dtype of ``heatmaps``.

    Example:
      >>> delta = tf.reshape(tf.one_hot(6, 8), [1, 2, 4])  # row 1, column 2
      >>> dsnt.heatmap_coords(delta).numpy()
      array([[0.25, 0.5 ]], dtype=float32)
    """
    return dsnt(heatmaps, method="none")[1]


def dsnt(inputs, method="softmax"):
    """Differentiable spatial to numerical transform.

    Rectifies and normalises each heatmap (see :func:`normalize_heatmaps`)
    and returns its expected coordinate ``sum_ij p_ij (x_j, y_i)``, where
    ``x_j``/``y_i`` are the normalised pixel centres
    ``(2 j + 1) / W - 1`` and ``(2 i + 1) / H - 1``.

    Args:
      inputs: ``[B, H, W]`` or ``[B, H, W, 1]`` for one point per image,
        ``[B, H, W, K]`` for K points. Batch, height and width may be unknown
        (``None``); the rank must be known. If the channel axis is unknown it
        is kept (multi-point layout).
      method: ``"softmax"`` (default), ``"relu"``, ``"abs"``, ``"sigmoid"`` or
        ``"none"`` (already normalised).

    Returns:
      ``(norm_heatmaps, coords)``: ``[B, H, W]`` and ``[B, 2]`` for one point,
      ``[B, H, W, K]`` and ``[B, K, 2]`` for K points. Coordinates are
      ``(x, y)`` in [-1, 1]; both outputs keep the input dtype.

    Raises:
      ValueError: unknown ``method``, rank not 3 or 4, empty height/width.
      TypeError: non-numeric ``inputs``.

    Example:
      >>> logits = tf.random.normal([8, 32, 32, 1])
      >>> norm_heatmaps, coords = dsnt.dsnt(logits)          # [8, 32, 32], [8, 2]
      >>> _, coords_k = dsnt.dsnt(tf.zeros([8, 32, 32, 5]))  # [8, 5, 2], all 0
    """
    check_option(method, name="method", allowed=METHODS)
    x, x4, squeeze = _prepare_heatmaps(inputs, "inputs")
    cdtype = _compute_dtype(x.dtype)
    if method == "softmax":
        p, coords = _softmax_dsnt(tf.cast(x4, cdtype))
    else:
        p = _normalize_bhwk(tf.cast(x4, cdtype), method)
        coords = _expectation_bhwk(p)
    p, coords = tf.cast(p, x.dtype), tf.cast(coords, x.dtype)
    if squeeze:  # squeeze, not slicing: its gradient is a free reshape
        return tf.squeeze(p, axis=3), tf.squeeze(coords, axis=1)
    return p, coords


# ---------------------------------------------------------------------------
# Gaussians and divergence regularisers
# ---------------------------------------------------------------------------

def _prepare_centres(centres, batch_like, squeeze, k, cdtype, name="centres"):
    """Validates centres against heatmaps; returns [B, K, 2] of cdtype."""
    c = _float_tensor(centres, name)
    if squeeze:
        if c.shape.rank == 2:
            _dims_check(c, [batch_like, 2], name, f"[batch, 2] = [{batch_like}, 2]")
            c = c[:, tf.newaxis, :]
        elif c.shape.rank == 3 and k == 1:
            _dims_check(c, [batch_like, 1, 2], name, f"[batch, 1, 2] = [{batch_like}, 1, 2]")
        else:
            raise ValueError(f"{name} must have shape [batch, 2] for single-point "
                             f"heatmaps; got {c.shape}")
    else:
        if c.shape.rank != 3:
            raise ValueError(f"{name} must have shape [batch, K, 2] = "
                             f"[{batch_like}, {k}, 2] for heatmaps with K channels; got {c.shape}")
        _dims_check(c, [batch_like, k, 2], name, f"[batch, K, 2] = [{batch_like}, {k}, 2]")
    return tf.cast(c, cdtype)


def _assert_batch_points(c, x4, name):
    """Dynamic check (TF1 graphs / unknown dims) that c's [B, K] match."""
    if c.shape[0] is not None and x4.shape[0] is not None and \
            c.shape[1] is not None and x4.shape[3] is not None:
        return c
    hs = tf.shape(x4)
    check = tf.debugging.assert_equal(
        tf.shape(c)[:2], tf.stack([hs[0], hs[3]]),
        message=f"{name} must have one (x, y) per heatmap: [batch, K, 2]")
    with tf.control_dependencies([check]):
        return tf.identity(c)


def _gauss_exponents(c, height, width, sigma):
    """Log 1-D Gaussian factors for centres c [B, K, 2]: (ex [B, W, K], ey [B, H, K]).

    -(d^2) / (2 sigma^2) with the distance d to the centre in pixels.
    """
    exponents = []
    for n, coord in ((width, c[:, tf.newaxis, :, 0]), (height, c[:, tf.newaxis, :, 1])):
        grid = normalized_linspace(n, c.dtype)[:, tf.newaxis]  # [n, 1]
        d = (grid - coord) * spatial_convention.half_extent(n, False, c.dtype)
        exponents.append(-tf.square(d) / (2.0 * sigma * sigma))
    return exponents


def _gauss_1d(c, height, width, sigma):
    """1-D Gaussian factors and their exponents for centres c [B, K, 2].

    Returns (ex, ey, gx, gy, norm): exponents ex [B, W, K], ey [B, H, K];
    peak-1 factors gx = exp(ex), gy = exp(ey), whose outer product is the
    2-D Gaussian; and norm [B, 1, K] = its grid sum + 1e-24 (dsntnn's
    normaliser; the grid sum of an outer product is the product of the 1-D
    sums).
    """
    ex, ey = _gauss_exponents(c, height, width, sigma)
    gx, gy = tf.exp(ex), tf.exp(ey)
    total = tf.reduce_sum(gx, axis=1, keepdims=True) * tf.reduce_sum(gy, axis=1, keepdims=True)
    return ex, ey, gx, gy, total + _EPS


def _gauss_factors(c, height, width, sigma, normalize=True):
    """Separable Gaussians for centres c [B, K, 2] (normalised units).

    Returns (gy [B, H, 1, K], gx [B, 1, W, K]); their product is dsntnn's
    ``make_gauss``: normalised by the grid sum + 1e-24 if `normalize`, else
    peak 1.
    """
    _, _, gx, gy, norm = _gauss_1d(c, height, width, sigma)
    if normalize:
        gx = gx / norm
    return gy[:, :, tf.newaxis, :], gx[:, tf.newaxis, :, :]


def _gauss_log_factors(c, height, width, sigma):
    """The normalised target's separable factors and their logs, for [B, H, W, K].

    Returns (gy [B, H, 1, K], gx [B, 1, W, K], log_gy, log_gx): q = gy * gx
    is dsntnn's ``make_gauss`` (grid sum + 1e-24 normaliser, folded into
    gx), and log q = log_gy + log_gx comes from the exponents (no
    [B, H, W, K] logarithm, and exact where q is too small for float32).
    """
    ex, ey, gx, gy, norm = _gauss_1d(c, height, width, sigma)
    return (gy[:, :, tf.newaxis, :], (gx / norm)[:, tf.newaxis],
            ey[:, :, tf.newaxis, :], (ex - tf.math.log(norm))[:, tf.newaxis])


def _target_log_factors(p, c, sigma):
    """_gauss_log_factors for the target of maps p [B, H, W, K]."""
    shape = tf.shape(p)
    return _gauss_log_factors(c, shape[1], shape[2], sigma)


def make_gauss(centres, size, fwhm=1.0, normalize=True):
    """Draws Gaussian heatmaps centred on ``centres`` (vectorised, no loops).

    Equals dsntnn's ``make_gauss(centres, size, sigma)`` with
    ``sigma = fwhm / (2 sqrt(2 ln 2))`` pixels, in channels-last layout.
    Differentiable with respect to ``centres``.

    Args:
      centres: ``[B, 2]`` or ``[B, K, 2]`` ``(x, y)`` in normalised units.
      size: ``(height, width)`` in pixels (ints or a dynamic 1-D tensor).
      fwhm: full width at half maximum in pixels (> 0), python number or
        scalar tensor.
      normalize: if True (default) each map sums to one (divided by its sum
        + 1e-24, as dsntnn); if False the peak value is one.

    Returns:
      ``[B, H, W]`` for ``[B, 2]`` centres, ``[B, H, W, K]`` for
      ``[B, K, 2]``; dtype of ``centres`` (ints -> float32).

    Example:
      >>> g = dsnt.make_gauss([[0.0, 0.0]], size=(5, 5), fwhm=2.0)   # [1, 5, 5]
      >>> int(tf.argmax(tf.reshape(g, [-1])))  # peak on the centre pixel
      12
    """
    c = _float_tensor(centres, "centres")
    rank = check_rank(c, name="centres", ranks=(2, 3))
    if c.shape[-1] is not None and c.shape[-1] != 2:
        raise ValueError(f"centres must end in an (x, y) axis of size 2; got shape {c.shape}")
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise ValueError(f"size must be (height, width); got {size!r}")
        for s in size:
            if isinstance(s, (int, np.integer)) and s <= 0:
                raise ValueError(f"size entries must be positive, got {size!r}")
        height, width = size
    else:
        size_t = tf.convert_to_tensor(size, name="size")
        if size_t.shape.rank != 1 or size_t.shape[0] not in (None, 2):
            raise ValueError(f"size must be (height, width); got shape {size_t.shape}")
        height, width = size_t[0], size_t[1]
    cdtype = _compute_dtype(c.dtype)
    sigma = fwhm_to_sigma(check_positive(fwhm, name="fwhm", dtype=cdtype))
    c3 = tf.cast(c if rank == 3 else c[:, tf.newaxis, :], cdtype)
    gy, gx = _gauss_factors(c3, height, width, sigma, normalize)
    g = tf.cast(gy * gx, c.dtype)
    return g if rank == 3 else tf.squeeze(g, axis=3)


def average_loss(losses, mask=None):
    """Mean of per-point losses, optionally over the points where mask != 0.

    dsntnn's ``average_loss``: ``sum(losses * mask) / max(sum(mask), 1)``
    (``losses.size`` without a mask, at least 1, so an empty batch gives 0).
    Points whose mask is 0 contribute exactly 0 even if their loss is NaN.

    Args:
      losses: ``[B]`` or ``[B, K]`` per-point losses.
      mask: optional, same shape, bool or numeric (fractional weights allowed).

    Returns:
      Scalar of the dtype of ``losses``.

    Example:
      >>> dsnt.average_loss([[1.0, 3.0]], mask=[[True, False]]).numpy()
      1.0
    """
    losses = _float_tensor(losses, "losses")
    return _reduce(losses, mask, "mean")


def _apply_mask(losses, mask):
    m = _float_tensor(mask, "mask", None)
    if m.shape.rank is not None and losses.shape.rank is not None:
        if m.shape.rank != losses.shape.rank or not m.shape.is_compatible_with(losses.shape):
            raise ValueError(f"mask must have the shape of the per-point losses "
                             f"{losses.shape} ([batch] or [batch, K]); got {m.shape}")
    m = tf.cast(m, losses.dtype)
    masked = tf.where(tf.not_equal(m, 0), losses, tf.zeros_like(losses)) * m
    return masked, m


def _reduce(losses, mask, reduction):
    """Applies `mask` and `reduction` to per-point losses (compute dtype)."""
    if mask is not None:
        losses, m = _apply_mask(losses, mask)
        denom = tf.reduce_sum(m)
    else:
        denom = tf.cast(tf.size(losses), losses.dtype)
    if reduction == "none":
        return losses
    total = tf.reduce_sum(losses)
    if reduction == "sum":
        return total
    return total / tf.maximum(denom, tf.ones_like(denom))


def _divergence_args(heatmaps, centres, fwhm, mask, reduction):
    """Validated (heatmaps, p [B, H, W, K], centres [B, K, 2], sigma, squeeze)."""
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    x, x4, squeeze = _prepare_heatmaps(heatmaps, "heatmaps")
    cdtype = _compute_dtype(x.dtype)
    c = _prepare_centres(centres, x4.shape[0], squeeze, x4.shape[3], cdtype)
    c = _assert_batch_points(c, x4, "centres")
    sigma = fwhm_to_sigma(check_positive(fwhm, name="fwhm", dtype=cdtype))
    return x, tf.cast(x4, cdtype), c, sigma, squeeze


def _finish(per_point, x, squeeze, mask, reduction):
    """[B, K] per-point losses -> reduced output of dtype x.dtype."""
    if squeeze:
        per_point = per_point[:, 0]
    return tf.cast(_reduce(per_point, mask, reduction), x.dtype)


def _log_mixture(p, q):
    """log(m + 1e-24) of the mixture m = (p + q) / 2, dsntnn's epsilon inside."""
    return tf.math.log(0.5 * (p + q) + _EPS)


def _js_terms(p, c, sigma):
    """Per-pixel JS terms and the heatmap's log ratio log p - log m, [B, H, W, K].

    0.5 KL(p||m) + 0.5 KL(q||m), m = (p + q) / 2, q = gy * gx the target
    drawn from the centres c [B, K, 2], is 0.5 * the sum over pixels of
    p (log p - log m) + q (log q - log m), with dsntnn's 1e-24 inside the
    logs of p and m (q's log is exact, from its factors). XLA-compiled: the
    target's factors, q and the elementwise steps fuse into a few loops; q
    is never stored, and the sum is left to the caller (see _js_sum).
    """
    gy, gx, log_gy, log_gx = _target_log_factors(p, c, sigma)
    q = gy * gx
    log_m = _log_mixture(p, q)
    p_lr = tf.math.log(p + _EPS) - log_m
    terms = p * p_lr + q * ((log_gy + log_gx) - log_m)
    return terms, p_lr


def _js_target_grads(p, c, sigma, u):
    """Gradients of the JS sums (upstream u [B, 1, 1, K]) to the centres c and sigma.

    d/dq = u (log q - log m), recomputed from p rather than kept from the
    forward pass, reduced onto the factors of q = gy * gx, then taken back
    to c and sigma through the factors (autodiff of a few [B, H|W, K]
    tensors).
    """
    with tf.GradientTape() as tape:
        tape.watch([c, sigma])
        gy, gx, log_gy, log_gx = _target_log_factors(p, c, sigma)
    d_q = u * ((log_gy + log_gx) - _log_mixture(p, gy * gx))
    d_gy = tf.reduce_sum(d_q * gx, axis=2, keepdims=True)
    d_gx = tf.reduce_sum(d_q * gy, axis=1, keepdims=True)
    return tape.gradient([gy, gx], [c, sigma], output_gradients=[d_gy, d_gx])


@tf.custom_gradient
def _js_sum(p, c, sigma):
    """Per-map Jensen-Shannon divergence of [B, H, W, K] maps -> [B, K].

    The target is drawn from the centres c [B, K, 2] and sigma (pixels)
    inside the compiled function (see _gauss_log_factors); the elementwise
    work of both passes runs XLA-compiled (see
    ``spatial_convention.compiled``). The Gaussian's factors as some twenty
    small TensorFlow ops had cost 0.3 ms of a 3 ms step at B=256, K=1; with
    them compiled the step took 0.83-1.0x as long in three side-by-side
    runs. The forward sum is a TensorFlow reduction, rows first, then
    columns (shorter float32 sums): inside XLA it went to XLA's own CPU
    reduction kernel, and the whole step at B=256, K=1 took 1.14x as long.
    Hand-written gradient: d/dp = 0.5 (log p - log m), and the Gaussian's
    total derivative 0.5 (log q - log m) is routed through q's factors (the
    "+1" terms of the x log x derivatives cancel). Differentiable again
    (second order).
    """
    terms, p_lr = spatial_convention.compiled(_js_terms, p, c, sigma)
    value = 0.5 * tf.reduce_sum(tf.reduce_sum(terms, axis=2), axis=1)

    def grad(upstream):
        u = 0.5 * upstream[:, tf.newaxis, tf.newaxis, :]
        d_c, d_sigma = spatial_convention.compiled(_js_target_grads, p, c, sigma, u)
        return u * p_lr, d_c, d_sigma

    return value, grad


def js_reg_loss(heatmaps, centres, fwhm=1.0, mask=None, reduction="mean"):
    """Jensen-Shannon divergence between heatmaps and target Gaussians.

    The DSNT regulariser: ``JS(p || N(centre, sigma^2))`` per point (natural
    log, so at most ln 2), dsntnn's ``js_reg_losses(heatmaps, centres, sigma)``
    with ``sigma = fwhm / (2 sqrt(2 ln 2))`` pixels, followed by the reduction
    (``average_loss`` by default). The target is dsntnn's normalised
    ``make_gauss``; the logs of the heatmap and of the mixture carry dsntnn's
    1e-24, the Gaussian's log is taken from its exponent (a difference of at
    most 1e-24 per pixel). Gradients flow to ``heatmaps``, ``centres`` and a
    tensor ``fwhm``.

    Args:
      heatmaps: normalised heatmaps, ``[B, H, W]`` (or ``[B, H, W, 1]``) with
        ``centres`` ``[B, 2]``, or ``[B, H, W, K]`` with ``centres``
        ``[B, K, 2]`` -- e.g. the first output of :func:`dsnt`.
      centres: target ``(x, y)`` in normalised units.
      fwhm: Gaussian full width at half maximum in pixels (> 0).
      mask: optional ``[B]`` / ``[B, K]``; points with mask 0 are ignored.
      reduction: ``"mean"`` (default, scalar), ``"sum"`` or ``"none"``
        (per point, ``[B]`` or ``[B, K]``).

    Returns:
      Loss in the dtype of ``heatmaps``.

    Example:
      >>> norm_heatmaps, coords = dsnt.dsnt(logits)        # [B, H, W], [B, 2]
      >>> loss = (dsnt.mse_loss(coords, targets)
      ...         + dsnt.js_reg_loss(norm_heatmaps, targets, fwhm=3))
    """
    x, p, c, sigma, squeeze = _divergence_args(heatmaps, centres, fwhm, mask, reduction)
    return _finish(_js_sum(p, c, sigma), x, squeeze, mask, reduction)


def kl_reg_loss(heatmaps, centres, fwhm=1.0, mask=None, reduction="mean"):
    """Kullback-Leibler divergence ``KL(heatmap || target Gaussian)``.

    dsntnn's ``kl_reg_losses``: ``sum p (log(p + 1e-24) - log(q + 1e-24))``,
    with ``log(q + 1e-24)`` evaluated stably from the Gaussian's exponent (so
    float32 stays accurate where q is near 1e-24). Unbounded: large where the
    heatmap has mass far from the target. Arguments, shapes and reduction as
    :func:`js_reg_loss`.

    Example:
      >>> loss = dsnt.kl_reg_loss(norm_heatmaps, targets, fwhm=2.0)
    """
    x, p, c, sigma, squeeze = _divergence_args(heatmaps, centres, fwhm, mask, reduction)
    # log(q + eps) from log q = ex + ey - log(S + eps) by a stable logaddexp:
    # forming q first loses its precision where it is tiny (~eps), where
    # the log still sees it.
    _, _, log_gy, log_gx = _target_log_factors(p, c, sigma)
    log_q = log_gy + log_gx
    log_eps = math.log(_EPS)
    log_q_eps = tf.maximum(log_q, log_eps) + tf.math.log1p(tf.exp(-tf.abs(log_q - log_eps)))
    terms = p * (tf.math.log(p + _EPS) - log_q_eps)
    return _finish(tf.reduce_sum(terms, axis=[1, 2]), x, squeeze, mask, reduction)


def variance_reg_loss(heatmaps, fwhm=1.0, mask=None, reduction="mean"):
    """Squared error between the heatmap variance and a target variance.

    dsntnn's ``variance_reg_losses``: for each point,
    ``sum over axes (Var_axis[p] * (n_axis / 2)^2 - sigma^2)^2`` where the
    variance is measured in pixels^2 and ``sigma = fwhm / (2 sqrt(2 ln 2))``.

    Args:
      heatmaps: normalised ``[B, H, W]`` or ``[B, H, W, K]``.
      fwhm: target full width at half maximum in pixels (> 0).
      mask, reduction: as :func:`js_reg_loss`.

    Returns:
      Loss in the dtype of ``heatmaps``.

    Example:
      >>> loss = dsnt.variance_reg_loss(norm_heatmaps, fwhm=2.0)
    """
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    x, x4, squeeze = _prepare_heatmaps(heatmaps, "heatmaps")
    cdtype = _compute_dtype(x.dtype)
    sigma = fwhm_to_sigma(check_positive(fwhm, name="fwhm", dtype=cdtype))
    p = tf.cast(x4, cdtype)
    shape = tf.shape(p)
    total = 0.0
    for axis, n in ((1, shape[2]), (2, shape[1])):  # x: sum over H; y: over W
        marg = tf.reduce_sum(p, axis=axis)                       # [B, n, K]
        vals = normalized_linspace(n, cdtype)[:, tf.newaxis]    # [n, 1]
        mu = tf.reduce_sum(marg * vals, axis=1, keepdims=True)  # [B, 1, K]
        var = tf.reduce_sum(marg * tf.square(vals - mu), axis=1)  # [B, K]
        ppu = spatial_convention.half_extent(n, False, cdtype)
        total = total + tf.square(var * ppu * ppu - sigma * sigma)  # pixels^2
    return _finish(total, x, squeeze, mask, reduction)


# ---------------------------------------------------------------------------
# coordinate losses
# ---------------------------------------------------------------------------

def _coord_args(coords, targets, reduction):
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    c = _float_tensor(coords, "coords")
    t = _float_tensor(targets, "targets")
    if c.shape.rank is not None and c.shape.rank < 1:
        raise ValueError(f"coords must be [..., D], e.g. [B, 2] or [B, K, 2]; got {c.shape}")
    if not c.shape.is_compatible_with(t.shape):
        raise ValueError(f"targets must have the shape of coords {c.shape}; got {t.shape}")
    cdtype = _compute_dtype(c.dtype)
    return c, tf.cast(c, cdtype) - tf.cast(t, cdtype)


def euclidean_loss(coords, targets, mask=None, reduction="mean"):
    """Euclidean distance between predicted and target points.

    Per point ``||coords - targets||_2`` over the last axis (dsntnn's
    ``euclidean_losses``), then reduced. The gradient at zero distance is 0
    (not NaN).

    Args:
      coords: ``[B, 2]`` or ``[B, K, 2]`` (any ``[..., D]``).
      targets: same shape as ``coords``.
      mask: optional ``coords.shape[:-1]``; points with mask 0 are ignored.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``
        (``coords.shape[:-1]``).

    Returns:
      Loss in the dtype of ``coords``.

    Example:
      >>> dsnt.euclidean_loss([[0.0, 0.0]], [[0.3, 0.4]]).numpy()
      0.5
    """
    c, d = _coord_args(coords, targets, reduction)
    sq = tf.reduce_sum(tf.square(d), axis=-1)
    pos = sq > 0
    dist = tf.where(pos, tf.sqrt(tf.where(pos, sq, tf.ones_like(sq))), tf.zeros_like(sq))
    return tf.cast(_reduce(dist, mask, reduction), c.dtype)


def mse_loss(coords, targets, mask=None, reduction="mean"):
    """Mean squared error per point (mean over the x, y axis), then reduced.

    dsntnn's ``mse_losses``. With the default ``reduction="mean"`` and no mask
    it equals ``tf.compat.v1.losses.mean_squared_error(targets, coords)``.
    Arguments as :func:`euclidean_loss`.

    Example:
      >>> dsnt.mse_loss([[0.0, 0.0]], [[0.3, 0.4]]).numpy()
      0.125
    """
    c, d = _coord_args(coords, targets, reduction)
    return tf.cast(_reduce(tf.reduce_mean(tf.square(d), axis=-1), mask, reduction), c.dtype)


def l1_loss(coords, targets, mask=None, reduction="mean"):
    """Mean absolute error per point (mean over the x, y axis), then reduced.

    dsntnn's ``l1_losses``. Arguments as :func:`euclidean_loss`.

    Example:
      >>> dsnt.l1_loss([[0.0, 0.0]], [[0.3, 0.4]]).numpy()
      0.35
    """
    c, d = _coord_args(coords, targets, reduction)
    return tf.cast(_reduce(tf.reduce_mean(tf.abs(d), axis=-1), mask, reduction), c.dtype)
