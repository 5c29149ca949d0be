"""Differentiable Spatial to Numerical Transform (DSNT) for TensorFlow, in 2-D and 3-D.

Implements the layer and the regularisers of Nibali et al. 2018, "Numerical
Coordinate Regression with Convolutional Neural Networks"
(https://arxiv.org/abs/1801.07372), with the semantics of the authors'
PyTorch package ``dsntnn`` but TensorFlow's channels-last layout.

This module imports only TensorFlow, NumPy, the project's small
``spatial_convention.py`` (the coordinate convention shared with ``stn`` and
``coordconv``) and its private ``_dsnt_kernels.py`` (faster versions of
three functions, see below), so the three files can be copied into any
graph: TF2 eager, ``tf.function`` (unknown batch and spatial sizes), TF1
graphs via ``tf.compat.v1`` placeholders and a Session, and XLA
(``jit_compile=True``).

Example:
  >>> import dsnt
  >>> logits = tf.zeros([8, 32, 32, 1])               # one point per image
  >>> norm_heatmaps, coords = dsnt.dsnt(logits)
  >>> norm_heatmaps.shape, coords.shape
  (TensorShape([8, 32, 32]), TensorShape([8, 2]))
  >>> volumes = tf.zeros([2, 8, 16, 16, 3])           # [B, D, H, W, K]
  >>> dsnt.dsnt(volumes)[1].shape                     # (x, y, z) per point
  TensorShape([2, 3, 3])

Layouts
-------
* 2-D heatmaps ``[B, H, W]`` (one point per image) or ``[B, H, W, K]`` (K
  points, one channel each; ``K == 1`` is squeezed by :func:`dsnt` to
  ``[B, H, W]`` and ``[B, 2]``); coordinates ``[B, 2]`` or ``[B, K, 2]``, listed ``(x, y)``.
* 3-D heatmaps ``[B, D, H, W, K]``, coordinates ``[B, K, 3]`` listed
  ``(x, y, z)``, z along the depth. Never squeezed, also for ``K == 1``: a
  volume without its K axis, ``[B, D, H, W]``, would read as 2-D maps with
  W points, so the rank alone says which a tensor is.

Coordinate convention
---------------------
Normalised coordinates run from -1 to 1 across the image, x along the width
axis, y along the height axis, z along the depth axis. -1 and 1 are the
*outer edges* of the border pixels, so pixel ``i`` of ``n`` has its centre
at ``(2 i + 1) / n - 1`` (``dsntnn.normalized_linspace``; PyTorch
``align_corners=False``; see ``spatial_convention``). For ``n = 4`` the
centres are ``[-0.75, -0.25, 0.25, 0.75]``.

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
that rectifies to all zeros becomes uniform (coordinates 0, finite
gradients). NaN inputs give NaN coordinates, as do ``+inf`` values except
under ``sigmoid`` (where they are 1). The divergences add dsntnn's 1e-24
inside their logs, so delta heatmaps and far-away targets stay finite.

Loss reduction
--------------
Every loss takes ``reduction="mean"`` (default): the mean over all points of
the batch, i.e. dsntnn's ``average_loss(losses, mask)`` -- with a mask, the
masked sum divided by ``max(sum(mask), 1)``. This is a scalar, so
``loss = mse + js_reg_loss(norm_heatmaps, targets)`` is a training loss as is.
``reduction="sum"`` sums, ``reduction="none"`` returns the per-point losses
(``[B]`` for one point per 2-D image -- ``[B, H, W]`` or ``[B, H, W, 1]``
maps, ``[B, 2]`` coordinates -- and ``[B, K]`` for K points and for
volumes) multiplied by the mask if one is given.

Direct maths and kernels
------------------------
Every function below is written as its definition, in plain TensorFlow ops
whose gradients TensorFlow derives. Three of them have faster versions in
``_dsnt_kernels.py``, used by default: the softmax DSNT (one backward pass
for the softmax and the expectation), the expectation (its gradient written
out) and the JS divergence (its elementwise work XLA-compiled, a
hand-written gradient that is differentiable again). The tests compare them
with these definitions, values and gradients. ``spatial_convention.use_kernels(False)``
(or ``SPATIAL_KERNELS=0`` before import) runs the definitions instead;
:func:`set_jit` ``(False)`` (or ``SPATIAL_JIT=0``) keeps the kernels but
runs their compiled parts as plain ops (the switch is shared with ``stn``).
"""
import functools
import math
import operator
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

import _dsnt_kernels
import spatial_convention
from spatial_convention import (SizeLike, TensorLike, as_float_tensor, check_option,
                                check_positive, check_rank, check_size)

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
_LAYOUT = "[B, H, W], [B, H, W, K] or [B, D, H, W, K]"

#: A rectification method (see :data:`METHODS`).
Method = Literal["softmax", "relu", "abs", "sigmoid", "none"]
#: A loss reduction (see :data:`REDUCTIONS`).
Reduction = Literal["mean", "sum", "none"]
#: A spatial size ``([depth,] height, width)``: pixel counts, or a 1-D int tensor.
Size = Union[Sequence[SizeLike], tf.Tensor]
#: A width or a standard deviation in pixels: a number or a scalar tensor (its gradient kept).
Width = Union[float, tf.Tensor]


def set_jit(enabled: bool) -> None:
    """Chooses whether the kernels' inner functions run XLA-compiled (default) or as plain ops.

    Both give the same numbers to float round-off; plain ops are there for
    platforms without XLA. Takes effect for calls traced after it. One switch
    for the project: the same as ``stn.set_jit``.

    Example:
      >>> set_jit(False)   # plain TensorFlow ops from here on
      >>> set_jit(True)
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


def _prepare_heatmaps(inputs, name):
    """(inputs as a float tensor, maps [B, *spatial, K], squeeze).

    ``squeeze`` says the caller gets one 2-D point per image back
    (``[B, H, W]`` or ``[B, H, W, 1]``); volumes always keep their K axis.
    """
    x = _float_tensor(inputs, name)
    rank = check_rank(x, name=name, ranks=(3, 4, 5), layout=_LAYOUT)
    if rank == 3:
        maps, squeeze = tf.expand_dims(x, -1), True  # not [..., None]: its gradient is a copy
    else:
        maps, squeeze = x, rank == 4 and x.shape[-1] == 1
    labels = ("depth", "height", "width")[5 - maps.shape.rank:]
    for axis, label in zip(_spatial_axes(maps), labels):
        if maps.shape[axis] == 0:
            raise ValueError(f"{name} must have a non-empty {label}; got shape {x.shape}")
    return x, maps, squeeze


def _dims_check(tensor, expected, name, what):
    """Static shape check of `tensor` against `expected` (ints or None)."""
    for got, want in zip(tensor.shape.as_list(), expected):
        if got is not None and want is not None and got != want:
            raise ValueError(f"{name} must have shape {what}; got {tensor.shape}")


# ---------------------------------------------------------------------------
# the one coordinate convention
# ---------------------------------------------------------------------------

# The formulas live in spatial_convention.py, shared with stn and coordconv:
# pixel p of n <-> normalised (2 p + 1) / n - 1 (align_corners=False), and one
# normalised unit spans n / 2 pixels.


def normalized_linspace(length: SizeLike, dtype: tf.DType = tf.float32) -> tf.Tensor:
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
      >>> normalized_linspace(4).numpy()
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


def pixel_to_normalized_coordinates(coords: TensorLike, size: Size) -> tf.Tensor:
    """Converts pixel coordinates to normalised [-1, 1] coordinates.

    Pixel ``p`` (0 = centre of the first pixel) of an axis with ``n`` pixels
    maps to ``(2 p + 1) / n - 1``. Any number of dimensions: 2-D points with
    ``size=(height, width)``, 3-D points ``(x, y, z)`` with
    ``size=(depth, height, width)``.

    Args:
      coords: ``[..., n]`` coordinates ordered ``(x, y[, z])``, in pixels.
      size: pixel counts ordered ``([depth,] height, width)`` (python ints or
        a 1-D tensor, may be dynamic, e.g. ``tf.shape(images)[1:3]``).

    Returns:
      Tensor like ``coords`` (same dtype; ints become float32).

    Example:
      >>> pixel_to_normalized_coordinates([[0.0, 3.0]], size=(4, 8)).numpy()
      array([[-0.875,  0.75 ]], dtype=float32)
      >>> pixel_to_normalized_coordinates([[0.0, 3.0, 1.0]], size=(2, 4, 8)).numpy()
      array([[-0.875,  0.75 ,  0.5  ]], dtype=float32)
    """
    coords, c, size_xy = _conversion_args(coords, size)
    return tf.cast(spatial_convention.pixel_to_normalized(c, size_xy), coords.dtype)


def normalized_to_pixel_coordinates(coords: TensorLike, size: Size) -> tf.Tensor:
    """Converts normalised [-1, 1] coordinates to pixel coordinates.

    The inverse of :func:`pixel_to_normalized_coordinates`:
    ``p = ((c + 1) n - 1) / 2``.

    Args:
      coords: ``[..., n]`` coordinates ordered ``(x, y[, z])``, normalised.
      size: pixel counts ordered ``([depth,] height, width)``.

    Returns:
      Tensor like ``coords``, in pixels.

    Example:
      >>> normalized_to_pixel_coordinates([[-0.875, 0.75]], size=(4, 8)).numpy()
      array([[0., 3.]], dtype=float32)
    """
    coords, c, size_xy = _conversion_args(coords, size)
    return tf.cast(spatial_convention.normalized_to_pixel(c, size_xy), coords.dtype)


def fwhm_to_sigma(fwhm: Width) -> Width:
    """Gaussian standard deviation from its full width at half maximum.

    ``sigma = fwhm / (2 sqrt(2 ln 2))`` (~ ``fwhm / 2.3548``); both in pixels.

    Example:
      >>> round(fwhm_to_sigma(2.3548200450309493), 6)
      1.0
    """
    return fwhm / _FWHM_PER_SIGMA


def _sigma(fwhm, dtype):
    """sigma in pixels of a fwhm checked positive; a tensor fwhm keeps its gradient."""
    return fwhm_to_sigma(check_positive(fwhm, name="fwhm", dtype=dtype))


def sigma_to_fwhm(sigma: Width) -> Width:
    """Full width at half maximum from a standard deviation (pixels).

    Inverse of :func:`fwhm_to_sigma`. Useful to port dsntnn code, whose
    losses take ``sigma_t``: ``js_reg_loss(h, c, fwhm=sigma_to_fwhm(sigma_t))``.

    Example:
      >>> round(sigma_to_fwhm(1.0), 4)
      2.3548
    """
    return sigma * _FWHM_PER_SIGMA


# ---------------------------------------------------------------------------
# DSNT: normalise each heatmap, take its expected coordinate
# ---------------------------------------------------------------------------

def _spatial_axes(t):
    """The spatial axes of maps [B, *spatial, K]: [1, 2] or [1, 2, 3]."""
    return list(range(1, t.shape.rank - 1))


def _spatial_sizes(t):
    """The pixel counts ([D,] H, W) of maps [B, *spatial, K], as scalar tensors."""
    shape = tf.shape(t)
    return [shape[axis] for axis in _spatial_axes(t)]


def _softmax(x):
    """exp(x) / sum(exp(x)) over the pixels of each map of x [B, *spatial, K]."""
    shape = tf.shape(x)
    pixels = tf.reduce_prod(shape[1:-1])
    flat = tf.reshape(x, tf.stack([shape[0], pixels, shape[-1]]))
    return tf.reshape(tf.nn.softmax(flat, axis=1), shape)  # max-shifted by TensorFlow


def _normalize(x, method):
    """Rectifies each map of x [B, *spatial, K] and divides it by its sum."""
    if method == "none":
        return x
    if method == "softmax":
        return _softmax(x)
    r = {"relu": tf.nn.relu, "abs": tf.abs, "sigmoid": tf.sigmoid}[method](x)
    axes = _spatial_axes(x)
    # Divide by the (gradient-free, cancelling) maximum first so that the sum
    # cannot overflow; an all-zero map becomes uniform (coordinates 0).
    # NaN reaches the sum (reduce_max may skip it), so NaN maps stay NaN.
    m = tf.stop_gradient(tf.reduce_max(r, axis=axes, keepdims=True))
    r = r / tf.where(m > 0, m, tf.ones_like(m))
    s = tf.reduce_sum(r, axis=axes, keepdims=True)
    nonzero = tf.not_equal(s, 0)
    uniform = 1.0 / tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]), x.dtype)
    return tf.where(nonzero, r / tf.where(nonzero, s, tf.ones_like(s)), uniform)


def _marginals(p):
    """Per coordinate (x, y[, z]) of maps p [B, *spatial, K]: (marginal, centres, size).

    The marginal ``[B, n, K]`` sums p over the other spatial axes; centres
    ``[n]`` are the normalised pixel centres along the coordinate's axis (x
    along the last spatial axis, the width).
    """
    axes, sizes = _spatial_axes(p), _spatial_sizes(p)
    return [(tf.reduce_sum(p, axis=[a for a in axes if a != axis]),
             normalized_linspace(size, p.dtype), size)
            for axis, size in reversed(list(zip(axes, sizes)))]


def _expectation(p):
    """E_p[(x, y[, z])] of normalised maps p [B, *spatial, K] -> [B, K, n].

    Each coordinate's marginal dotted with its pixel centres (dsntnn's
    ``linear_expectation``).
    """
    return tf.stack([tf.reduce_sum(marginal * centres[:, tf.newaxis], axis=1)
                     for marginal, centres, _ in _marginals(p)], axis=-1)


def _dsnt(x, method):
    """(p, E_p[coordinates]) of maps x [B, *spatial, K]: the kernels' version if enabled."""
    if spatial_convention.kernels_enabled():
        return _dsnt_kernels.dsnt(x, method, normalize=_normalize, expectation=_expectation)
    p = _normalize(x, method)
    return p, _expectation(p)


def normalize_heatmaps(inputs: TensorLike, method: Method = "softmax") -> tf.Tensor:
    """Rectifies heatmaps and normalises each to sum to one over its pixels.

    Args:
      inputs: ``[B, H, W]``, ``[B, H, W, K]`` or ``[B, D, H, W, K]`` raw
        network outputs.
      method: ``"softmax"`` (default), ``"relu"``, ``"abs"``, ``"sigmoid"``
        (each followed by division by the sum), or ``"none"`` (inputs are
        already normalised; returned as is). An all-zero map after
        ``relu``/``abs``/``sigmoid`` becomes uniform.

    Returns:
      Tensor with the shape and dtype of ``inputs`` (ints -> float32).

    Example:
      >>> h = normalize_heatmaps(tf.zeros([2, 4, 4, 3]), method="relu")
      >>> float(h[0, 0, 0, 0])
      0.0625
    """
    check_option(method, name="method", allowed=METHODS)
    x, maps, _ = _prepare_heatmaps(inputs, "inputs")
    p = _normalize(tf.cast(maps, _compute_dtype(x.dtype)), method)
    return tf.reshape(tf.cast(p, x.dtype), tf.shape(x))


def heatmap_coords(heatmaps: TensorLike) -> tf.Tensor:
    """Expected coordinates of already-normalised heatmaps (the DSNT itself).

    Args:
      heatmaps: ``[B, H, W]``, ``[B, H, W, K]`` or ``[B, D, H, W, K]``, each
        map summing to one.

    Returns:
      ``[B, 2]`` for ``[B, H, W]`` or ``[B, H, W, 1]`` input, ``[B, K, 2]``
      for ``[B, H, W, K]``, ``[B, K, 3]`` for volumes; ``(x, y[, z])`` in
      normalised coordinates, dtype of ``heatmaps``.

    Example:
      >>> delta = tf.reshape(tf.one_hot(6, 8), [1, 2, 4])  # row 1, column 2
      >>> heatmap_coords(delta).numpy()
      array([[0.25, 0.5 ]], dtype=float32)
    """
    return dsnt(heatmaps, method="none")[1]


def dsnt(inputs: TensorLike, method: Method = "softmax") -> Tuple[tf.Tensor, tf.Tensor]:
    """Differentiable spatial to numerical transform.

    Rectifies and normalises each heatmap (see :func:`normalize_heatmaps`)
    and returns its expected coordinate: in 2-D ``sum_ij p_ij (x_j, y_i)``,
    where ``x_j``/``y_i`` are the normalised pixel centres
    ``(2 j + 1) / W - 1`` and ``(2 i + 1) / H - 1``; in 3-D
    ``sum_kij p_kij (x_j, y_i, z_k)`` with ``z_k = (2 k + 1) / D - 1``.

    Args:
      inputs: ``[B, H, W]`` or ``[B, H, W, 1]`` for one point per image,
        ``[B, H, W, K]`` for K points, ``[B, D, H, W, K]`` for K points per
        volume. Batch and spatial sizes may be unknown (``None``); the rank
        must be known. If the channel axis of a rank-4 input is unknown it
        is kept (multi-point layout).
      method: ``"softmax"`` (default), ``"relu"``, ``"abs"``, ``"sigmoid"`` or
        ``"none"`` (already normalised).

    Returns:
      ``(norm_heatmaps, coords)``: ``[B, H, W]`` and ``[B, 2]`` for one 2-D
      point, ``[B, H, W, K]`` and ``[B, K, 2]`` for K points,
      ``[B, D, H, W, K]`` and ``[B, K, 3]`` for volumes (also for K = 1).
      Coordinates are ``(x, y[, z])`` in [-1, 1]; both outputs keep the
      input dtype.

    Raises:
      ValueError: unknown ``method``, rank not 3, 4 or 5, an empty spatial axis.
      TypeError: non-numeric ``inputs``.

    Example:
      >>> logits = tf.constant([[[0.0, 0.0], [0.0, 9.0]]])   # [1, 2, 2], peak at row 1, col 1
      >>> norm_heatmaps, coords = dsnt(logits)
      >>> coords.numpy().round(3)                            # (x, y) near (0.5, 0.5)
      array([[0.5, 0.5]], dtype=float32)
      >>> dsnt(tf.zeros([8, 4, 32, 32, 1]))[1].shape    # a volume, K = 1
      TensorShape([8, 1, 3])
    """
    check_option(method, name="method", allowed=METHODS)
    x, maps, squeeze = _prepare_heatmaps(inputs, "inputs")
    p, coords = _dsnt(tf.cast(maps, _compute_dtype(x.dtype)), method)
    p, coords = tf.cast(p, x.dtype), tf.cast(coords, x.dtype)
    if squeeze:  # squeeze, not slicing: its gradient is a free reshape
        return tf.squeeze(p, axis=3), tf.squeeze(coords, axis=1)
    return p, coords


# ---------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------

def _along(t, axis, rank):
    """t [B, n, K] placed on `axis` of a rank-`rank` map [B, 1.., n, ..1, K]."""
    for _ in range(1, axis):
        t = tf.expand_dims(t, 1)
    for _ in range(axis + 1, rank - 1):
        t = tf.expand_dims(t, -2)
    return t


def _gauss_exponents(c, sizes, sigma):
    """-(d^2) / (2 sigma^2) per coordinate (x, y[, z]) of centres c [B, K, n]: [B, size, K] each.

    ``d`` is the distance in pixels from each pixel centre along the
    coordinate's axis to the centre; ``sizes`` are ``([D,] H, W)``.
    """
    exponents = []
    for j, size in enumerate(reversed(sizes)):  # x along the last axis (the width)
        grid = normalized_linspace(size, c.dtype)[:, tf.newaxis]  # [size, 1]
        d = (grid - c[:, tf.newaxis, :, j]) * spatial_convention.half_extent(size, False, c.dtype)
        exponents.append(-tf.square(d) / (2.0 * sigma * sigma))
    return exponents


def _gauss_log_factors(c, sizes, sigma, normalize=True):
    """The Gaussians at centres c [B, K, n] as separable factors, and their logs.

    Returns ``(factors, log_factors)``: lists in coordinate order
    ``(x, y[, z])``, factor j lying on its axis of ``[B, *sizes, K]`` (x on
    the last), so that their product is dsntnn's ``make_gauss`` and the sum
    of the logs its logarithm (exact even where the product underflows).
    Normalised, the x factor carries the normaliser ``1 / (sum + 1e-24)``
    (dsntnn's; the grid sum of a separable product is the product of the
    1-D sums); otherwise the peak is 1.
    """
    logs = _gauss_exponents(c, sizes, sigma)
    factors = [tf.exp(e) for e in logs]
    if normalize:
        total = functools.reduce(operator.mul, [tf.reduce_sum(g, axis=1, keepdims=True)
                                                for g in factors]) + _EPS  # [B, 1, K]
        factors[0] = factors[0] / total
        logs[0] = logs[0] - tf.math.log(total)
    rank = len(sizes) + 2
    axes = range(rank - 2, 0, -1)
    return ([_along(g, axis, rank) for g, axis in zip(factors, axes)],
            [_along(e, axis, rank) for e, axis in zip(logs, axes)])


def _gauss(c, sizes, sigma, normalize=True):
    """dsntnn's make_gauss for centres c [B, K, n]: the product of the factors, [B, *sizes, K]."""
    return functools.reduce(operator.mul, _gauss_log_factors(c, sizes, sigma, normalize)[0])


def make_gauss(centres: TensorLike, size: Size, fwhm: Width = 1.0,
               normalize: bool = True) -> tf.Tensor:
    """Draws Gaussian heatmaps centred on ``centres`` (vectorised, no loops), in 2-D or 3-D.

    Equals dsntnn's ``make_gauss(centres, size, sigma)`` with
    ``sigma = fwhm / (2 sqrt(2 ln 2))`` pixels, in channels-last layout:
    ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance in pixels from each
    pixel centre to the centre. Differentiable with respect to ``centres``
    (and a tensor ``fwhm``).

    Args:
      centres: ``[..., n]`` centres ``(x, y)`` (``n = 2``) or ``(x, y, z)``
        (``n = 3``, the length of ``size``), in normalised units, with any
        number of leading axes: ``[n]`` one map, ``[N, n]`` N maps (as
        dsntnn), ``[..., B, K, n]`` K points per map stack (channels last).
      size: ``(height, width)`` or ``(depth, height, width)`` in pixels
        (ints, scalar tensors or a 1-D tensor of known length).
      fwhm: full width at half maximum in pixels (> 0), python number or
        scalar tensor.
      normalize: if True (default) each map sums to one (divided by its sum
        + 1e-24, as dsntnn); if False the peak value is one.

    Returns:
      ``[*size]`` for ``[n]`` centres, ``[N, *size]`` for ``[N, n]``
      (e.g. ``[B, H, W]`` for ``[B, 2]``, ``[K, D, H, W]`` for ``[K, 3]``,
      dsntnn's layouts), and ``[..., B, *size, K]`` for ``[..., B, K, n]``
      (e.g. ``[B, H, W, K]`` for ``[B, K, 2]``, ``[B, D, H, W, K]`` for
      ``[B, K, 3]``); dtype of ``centres`` (ints -> float32).

    Example:
      >>> g = make_gauss([[0.0, 0.0]], size=(5, 5), fwhm=2.0)   # [1, 5, 5]
      >>> int(tf.argmax(tf.reshape(g, [-1])))  # peak on the centre pixel
      12
      >>> v = make_gauss([[[0.0, 0.0, 0.25]]], size=(4, 3, 3), fwhm=2.0, normalize=False)
      >>> v.shape, float(v[0, 2, 1, 1, 0])     # peak 1 at depth (2 * 2 + 1) / 4 - 1 = 0.25
      (TensorShape([1, 4, 3, 3, 1]), 1.0)
      >>> make_gauss([[0.0, 0.0, 0.25], [0.5, 0.0, 0.0]], size=(4, 3, 3)).shape   # [K, 3]
      TensorShape([2, 4, 3, 3])
    """
    c = _float_tensor(centres, "centres")
    sizes = check_size(size, name="size", ndim=(2, 3))
    assert sizes is not None   # None only where check_size is given None
    ndim = len(sizes)
    layout = f"[..., {ndim}] ({'x, y' if ndim == 2 else 'x, y, z'})"
    if c.shape.rank is None:
        raise ValueError(f"centres must have a statically known rank ({layout}); "
                         "got a tensor of unknown rank")
    if c.shape.rank == 0 or c.shape[-1] not in (None, ndim):
        raise ValueError(f"centres must be {layout} for a size of {ndim} axes; got shape "
                         f"{c.shape} for size {size!r}")
    cdtype = _compute_dtype(c.dtype)
    sigma = _sigma(fwhm, cdtype)
    # As [B, K, n]: [n] is one map of one point, [N, n] N maps of one point
    # each, [..., B, K, n] the leading axes folded into B.
    rank, lead = c.shape.rank, tf.shape(c)[:-1]
    if rank <= 2:
        c3 = tf.reshape(c, tf.stack([-1, 1, ndim]))
    else:
        c3 = tf.reshape(c, tf.stack([-1, lead[-1], ndim]))
    g = tf.cast(_gauss(tf.cast(c3, cdtype), sizes, sigma, normalize), c.dtype)
    spatial = tf.shape(g)[1:-1]
    if rank <= 2:
        shape = tf.concat([lead, spatial], 0)
    else:
        shape = tf.concat([lead[:-1], spatial, lead[-1:]], 0)
    return tf.reshape(g, shape)


# ---------------------------------------------------------------------------
# the regularisers: divergences to a Gaussian target, variance
# ---------------------------------------------------------------------------

def _prepare_centres(centres, maps, squeeze, cdtype, name="centres"):
    """Validates centres against maps [B, *spatial, K]; returns [B, K, n] of cdtype."""
    c = _float_tensor(centres, name)
    batch, k, n = maps.shape[0], maps.shape[-1], maps.shape.rank - 2
    if squeeze:
        if c.shape.rank == 2:
            _dims_check(c, [batch, 2], name, f"[batch, 2] = [{batch}, 2]")
            c = c[:, tf.newaxis, :]
        elif c.shape.rank == 3 and k == 1:
            _dims_check(c, [batch, 1, 2], name, f"[batch, 1, 2] = [{batch}, 1, 2]")
        else:
            raise ValueError(f"{name} must have shape [batch, 2] for single-point "
                             f"heatmaps; got {c.shape}")
    else:
        what = f"[batch, K, {n}] = [{batch}, {k}, {n}]"
        maps_layout = "heatmaps with K channels" if n == 2 else "volumes [B, D, H, W, K]"
        if c.shape.rank != 3:
            raise ValueError(f"{name} must have shape {what} for {maps_layout}; got {c.shape}")
        _dims_check(c, [batch, k, n], name, f"{what} for {maps_layout}")
    return tf.cast(c, cdtype)


def _assert_batch_points(c, maps, name):
    """Dynamic check (TF1 graphs / unknown dims) that c's [B, K] match the maps'."""
    if None not in (c.shape[0], maps.shape[0], c.shape[1], maps.shape[-1]):
        return c
    shape = tf.shape(maps)
    check = tf.debugging.assert_equal(
        tf.shape(c)[:2], tf.stack([shape[0], shape[-1]]),
        message=f"{name} must have one point per heatmap: [batch, K, {maps.shape.rank - 2}]")
    with tf.control_dependencies([check]):
        return tf.identity(c)


def _kl(p, log_q):
    """KL(p || q) of each map [B, K]: sum p (log(p + 1e-24) - log_q), log_q = log(q + 1e-24)."""
    return tf.reduce_sum(p * (tf.math.log(p + _EPS) - log_q), axis=_spatial_axes(p))


def _js(p, c, sigma):
    """JS(p || q) of each map [B, K], q the normalised Gaussians at c [B, K, n].

    dsntnn's ``_js``: 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2.
    """
    if spatial_convention.kernels_enabled():
        return _dsnt_kernels.js_divergence(p, c, sigma, gauss_log_factors=_gauss_log_factors,
                                           eps=_EPS)
    q = _gauss(c, _spatial_sizes(p), sigma)
    log_m = tf.math.log(0.5 * (p + q) + _EPS)
    return 0.5 * _kl(p, log_m) + 0.5 * _kl(q, log_m)


def _divergence_args(heatmaps, centres, fwhm, mask, reduction):
    """Validated (heatmaps, p [B, *spatial, K], centres [B, K, n], sigma, squeeze)."""
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    x, maps, squeeze = _prepare_heatmaps(heatmaps, "heatmaps")
    cdtype = _compute_dtype(x.dtype)
    c = _assert_batch_points(_prepare_centres(centres, maps, squeeze, cdtype), maps, "centres")
    sigma = _sigma(fwhm, cdtype)
    return x, tf.cast(maps, cdtype), c, sigma, squeeze


def _finish(per_point, x, squeeze, mask, reduction):
    """[B, K] per-point losses -> reduced output of dtype x.dtype."""
    if squeeze:
        per_point = per_point[:, 0]
    return tf.cast(_reduce(per_point, mask, reduction), x.dtype)


def js_reg_loss(heatmaps: TensorLike, centres: TensorLike, fwhm: Width = 1.0,
                mask: Optional[TensorLike] = None, reduction: Reduction = "mean") -> tf.Tensor:
    """Jensen-Shannon divergence between heatmaps and target Gaussians.

    The DSNT regulariser: ``JS(p || N(centre, sigma^2))`` per point (natural
    log, so at most ln 2), dsntnn's ``js_reg_losses(heatmaps, centres, sigma)``
    with ``sigma = fwhm / (2 sqrt(2 ln 2))`` pixels, followed by the reduction
    (``average_loss`` by default). The target is dsntnn's normalised
    ``make_gauss``; the logs carry dsntnn's 1e-24. Gradients flow to
    ``heatmaps``, ``centres`` and a tensor ``fwhm``.

    Args:
      heatmaps: normalised heatmaps, ``[B, H, W]`` (or ``[B, H, W, 1]``) with
        ``centres`` ``[B, 2]``, ``[B, H, W, K]`` with ``centres``
        ``[B, K, 2]``, or volumes ``[B, D, H, W, K]`` with ``centres``
        ``[B, K, 3]`` -- e.g. the first output of :func:`dsnt`.
      centres: target ``(x, y[, z])`` in normalised units.
      fwhm: Gaussian full width at half maximum in pixels (> 0).
      mask: optional ``[B]`` / ``[B, K]``; points with mask 0 are ignored.
      reduction: ``"mean"`` (default, scalar), ``"sum"`` or ``"none"``
        (per point, ``[B]`` or ``[B, K]``).

    Returns:
      Loss in the dtype of ``heatmaps``.

    Example:
      >>> targets = tf.constant([[0.1, -0.2]])
      >>> norm_heatmaps = make_gauss(targets, size=(8, 8), fwhm=3.0)
      >>> bool(js_reg_loss(norm_heatmaps, targets, fwhm=3.0) < 1e-6)   # the target itself
      True
      >>> round(float(js_reg_loss(norm_heatmaps, -targets, fwhm=3.0)), 4)
      0.1963
    """
    x, p, c, sigma, squeeze = _divergence_args(heatmaps, centres, fwhm, mask, reduction)
    return _finish(_js(p, c, sigma), x, squeeze, mask, reduction)


def kl_reg_loss(heatmaps: TensorLike, centres: TensorLike, fwhm: Width = 1.0,
                mask: Optional[TensorLike] = None, reduction: Reduction = "mean") -> tf.Tensor:
    """Kullback-Leibler divergence ``KL(heatmap || target Gaussian)``.

    dsntnn's ``kl_reg_losses``: ``sum p (log(p + 1e-24) - log(q + 1e-24))``,
    with ``log(q + 1e-24)`` evaluated stably from the Gaussian's exponent (so
    float32 stays accurate where q is near 1e-24). Unbounded: large where the
    heatmap has mass far from the target. Arguments, shapes and reduction as
    :func:`js_reg_loss`.

    Example:
      >>> targets = tf.constant([[0.1, -0.2]])
      >>> norm_heatmaps = make_gauss(targets, size=(8, 8), fwhm=3.0)
      >>> round(float(kl_reg_loss(norm_heatmaps, -targets, fwhm=3.0)), 4)
      0.9641
    """
    x, p, c, sigma, squeeze = _divergence_args(heatmaps, centres, fwhm, mask, reduction)
    # log(q + eps) from log q by a stable logaddexp: forming q first loses
    # its precision where it is tiny (~eps), where the log still sees it.
    log_q = functools.reduce(operator.add, _gauss_log_factors(c, _spatial_sizes(p), sigma)[1])
    log_eps = math.log(_EPS)
    log_q_eps = tf.maximum(log_q, log_eps) + tf.math.log1p(tf.exp(-tf.abs(log_q - log_eps)))
    return _finish(_kl(p, log_q_eps), x, squeeze, mask, reduction)


def variance_reg_loss(heatmaps: TensorLike, fwhm: Width = 1.0, mask: Optional[TensorLike] = None,
                      reduction: Reduction = "mean") -> tf.Tensor:
    """Squared error between the heatmap variance and a target variance.

    dsntnn's ``variance_reg_losses``: for each point,
    ``sum over axes (Var_axis[p] * (n_axis / 2)^2 - sigma^2)^2`` where the
    variance is measured in pixels^2, the axes are x, y (and z for volumes)
    and ``sigma = fwhm / (2 sqrt(2 ln 2))``.

    Args:
      heatmaps: normalised ``[B, H, W]``, ``[B, H, W, K]`` or ``[B, D, H, W, K]``.
      fwhm: target full width at half maximum in pixels (> 0).
      mask, reduction: as :func:`js_reg_loss`.

    Returns:
      Loss in the dtype of ``heatmaps``.

    Example:
      >>> uniform = tf.fill([1, 2, 2], 0.25)  # variance 0.25 px^2 along x and y
      >>> float(variance_reg_loss(uniform, fwhm=sigma_to_fwhm(1.0)))
      1.125
    """
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    x, maps, squeeze = _prepare_heatmaps(heatmaps, "heatmaps")
    cdtype = _compute_dtype(x.dtype)
    sigma = _sigma(fwhm, cdtype)
    total = 0.0
    for marginal, centres, size in _marginals(tf.cast(maps, cdtype)):
        centres = centres[:, tf.newaxis]                                  # [n, 1]
        mu = tf.reduce_sum(marginal * centres, axis=1, keepdims=True)     # [B, 1, K]
        var = tf.reduce_sum(marginal * tf.square(centres - mu), axis=1)   # [B, K]
        pixels_per_unit = spatial_convention.half_extent(size, False, cdtype)
        total = total + tf.square(var * pixels_per_unit ** 2 - sigma * sigma)  # pixels^2
    return _finish(total, x, squeeze, mask, reduction)


# ---------------------------------------------------------------------------
# coordinate losses, masks and reductions
# ---------------------------------------------------------------------------

def average_loss(losses: TensorLike, mask: Optional[TensorLike] = None) -> tf.Tensor:
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
      >>> float(average_loss([[1.0, 3.0]], mask=[[True, False]]))
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


def _coord_args(coords, targets, reduction):
    check_option(reduction, name="reduction", allowed=REDUCTIONS)
    c = _float_tensor(coords, "coords")
    t = _float_tensor(targets, "targets")
    if c.shape.rank is not None and c.shape.rank < 1:
        raise ValueError(f"coords must be [..., n], e.g. [B, 2], [B, K, 2] or [B, K, 3]; "
                         f"got {c.shape}")
    if not c.shape.is_compatible_with(t.shape):
        raise ValueError(f"targets must have the shape of coords {c.shape}; got {t.shape}")
    cdtype = _compute_dtype(c.dtype)
    return c, tf.cast(c, cdtype) - tf.cast(t, cdtype)


def euclidean_loss(coords: TensorLike, targets: TensorLike, mask: Optional[TensorLike] = None,
                   reduction: Reduction = "mean") -> tf.Tensor:
    """Euclidean distance between predicted and target points.

    Per point ``||coords - targets||_2`` over the last axis (dsntnn's
    ``euclidean_losses``), then reduced. The gradient at zero distance is 0
    (not NaN).

    Args:
      coords: ``[B, 2]``, ``[B, K, 2]`` or ``[B, K, 3]`` (any ``[..., n]``).
      targets: same shape as ``coords``.
      mask: optional ``coords.shape[:-1]``; points with mask 0 are ignored.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``
        (``coords.shape[:-1]``).

    Returns:
      Loss in the dtype of ``coords``.

    Example:
      >>> float(euclidean_loss([[0.0, 0.0]], [[0.3, 0.4]]))
      0.5
    """
    c, d = _coord_args(coords, targets, reduction)
    sq = tf.reduce_sum(tf.square(d), axis=-1)
    pos = sq > 0
    dist = tf.where(pos, tf.sqrt(tf.where(pos, sq, tf.ones_like(sq))), tf.zeros_like(sq))
    return tf.cast(_reduce(dist, mask, reduction), c.dtype)


def mse_loss(coords: TensorLike, targets: TensorLike, mask: Optional[TensorLike] = None,
             reduction: Reduction = "mean") -> tf.Tensor:
    """Mean squared error per point (mean over the coordinate axis), then reduced.

    dsntnn's ``mse_losses``. With the default ``reduction="mean"`` and no mask
    it equals ``tf.compat.v1.losses.mean_squared_error(targets, coords)``.
    Arguments as :func:`euclidean_loss`.

    Example:
      >>> float(mse_loss([[0.0, 0.0]], [[0.3, 0.4]]))
      0.125
    """
    c, d = _coord_args(coords, targets, reduction)
    return tf.cast(_reduce(tf.reduce_mean(tf.square(d), axis=-1), mask, reduction), c.dtype)


def l1_loss(coords: TensorLike, targets: TensorLike, mask: Optional[TensorLike] = None,
            reduction: Reduction = "mean") -> tf.Tensor:
    """Mean absolute error per point (mean over the coordinate axis), then reduced.

    dsntnn's ``l1_losses``. Arguments as :func:`euclidean_loss`.

    Example:
      >>> round(float(l1_loss([[0.0, 0.0]], [[0.3, 0.4]])), 6)
      0.35
    """
    c, d = _coord_args(coords, targets, reduction)
    return tf.cast(_reduce(tf.reduce_mean(tf.abs(d), axis=-1), mask, reduction), c.dtype)
