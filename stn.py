"""Spatial Transformer Networks for TensorFlow: grids, one sampler, transforms, in 2-D and 3-D.

Jaderberg, Simonyan, Zisserman and Kavukcuoglu, "Spatial Transformer
Networks", NeurIPS 2015 (arXiv:1506.02025).

A spatial transformer warps an image or feature map ``[B, H, W, C]`` (or a
volume ``[B, D, H, W, C]``) by a transform ``theta`` that maps *output*
coordinates to *input* coordinates: ``out[b, p] = img[b, T_b(p)]``, sampled
with interpolation. Everything here is differentiable with respect to the
image and to ``theta`` (or the sampling grid, or a displacement field), so
the transform can be predicted by a network.

Coordinates are normalised (x, y[, z]) from -1 to 1 across the image, as
in PyTorch's ``affine_grid`` / ``grid_sample``, with ``align_corners``
choosing where -1 and 1 fall; the convention is defined once, in
:mod:`spatial_convention`.

The module reads top-down: the convention, grids (transform -> where each
output pixel samples), the sampler (padding modes, then interpolation as a
weighted sum of taps), dense displacement fields, the transform
parameterisations (params -> theta), thin-plate splines, then the
transform families by name that the layers take. The sampler here is the
direct definition; ``_stn_kernels.py`` holds its hand-tuned, XLA-compiled
version, used unless ``spatial_convention.use_kernels(False)`` (or
``SPATIAL_KERNELS=0``), and tested against this one.

Copying the layer into another project means copying ``stn.py``,
``_stn_kernels.py`` and ``spatial_convention.py``; they import only
TensorFlow and NumPy.
"""
import functools
from typing import List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

import _stn_kernels
import spatial_convention
from spatial_convention import (SizeLike, TensorLike, as_float_tensor, centre, check_bool,
                                check_option, check_rank, check_size, half_extent)

__all__ = [
    "PADDING_MODES", "INTERPOLATIONS", "UNITS", "TRANSFORMS",
    "pixel_to_normalized", "normalized_to_pixel", "pixel_centers",
    "affine_grid", "affine_grid_generator",
    "grid_sample", "spatial_transformer_network", "bilinear_sampler", "check_sampling",
    "warp", "integrate_velocity", "compose_displacements", "jacobian_determinant",
    "resize_displacement", "displacement_to_normalized", "displacement_to_pixels",
    "identity_theta", "affine_theta", "attention_theta", "similarity_theta",
    "rotation_theta", "euler_rotation_theta", "affine_diffeomorphic_theta",
    "projective_theta", "invert_affine", "compose_affine", "AffineWarpConstraints",
    "control_point_lattice", "tps_coefficients", "tps_grid", "tps_control_points",
    "TransformFamily", "transform_family", "transform_theta", "set_jit",
]

PaddingMode = Literal["zeros", "border", "reflection"]
Interpolation = Literal["bilinear", "nearest", "bicubic"]
Units = Literal["pixels", "normalized"]
Size = Union[Sequence[SizeLike], tf.Tensor]

PADDING_MODES = ("zeros", "border", "reflection")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
#: The units a displacement field can be in (pixels of the image it samples, or normalised).
UNITS = ("pixels", "normalized")

# Cubic convolution constant used by PyTorch (and OpenCV) for "bicubic".
_CUBIC_A = -0.75

_LAYOUTS = {2: "[B, H, W, C]", 3: "[B, D, H, W, C]"}
_compute_dtype = spatial_convention.compute_dtype


def set_jit(enabled: bool) -> None:
    """Chooses whether the kernels run XLA-compiled (default) or as plain ops.

    Both give the same numbers; plain ops are there for platforms without
    XLA. Takes effect for calls traced after it. One switch for the project:
    ``spatial_convention.set_jit``.

    Example:
      >>> set_jit(False)   # plain TensorFlow ops from here on
      >>> set_jit(True)
    """
    spatial_convention.set_jit(enabled)


# --------------------------------------------------------------------------
# The coordinate convention (spatial_convention.py), for tensors
# --------------------------------------------------------------------------

def normalized_to_pixel(coord: TensorLike, size: SizeLike,
                        align_corners: bool = False) -> tf.Tensor:
    """Maps normalised coordinates along an axis of ``size`` pixels to pixel coordinates.

    ``pixel = coord * h + (size - 1) / 2`` with ``h = size / 2``
    (``align_corners=False``) or ``(size - 1) / 2`` (``True``); pixel ``i``
    is centred at ``i``.

    Example:
      >>> normalized_to_pixel([-1.0, 0.0, 1.0], 4).numpy()
      array([-0.5,  1.5,  3.5], dtype=float32)
    """
    coord = as_float_tensor(coord, name="coord", allow_bool=False)
    return spatial_convention.normalized_to_pixel(coord, size, align_corners)


def pixel_to_normalized(coord: TensorLike, size: SizeLike,
                        align_corners: bool = False) -> tf.Tensor:
    """Maps pixel coordinates (pixel ``i`` centred at ``i``) to normalised ones.

    The inverse of :func:`normalized_to_pixel`. With ``align_corners=True``
    and ``size == 1`` every coordinate maps to 0. An alias kept for the
    STN's users of ``spatial_convention.pixel_to_normalized``, the main
    spelling, that also takes lists and arrays.

    Example:
      >>> pixel_to_normalized([0.0, 3.0], 4).numpy()
      array([-0.75,  0.75], dtype=float32)
    """
    coord = as_float_tensor(coord, name="coord", allow_bool=False)
    return spatial_convention.pixel_to_normalized(coord, size, align_corners)


def pixel_centers(size: SizeLike, align_corners: bool = False,
                  dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Normalised coordinates of the centres of ``size`` pixels, ``[size]``.

    Example:
      >>> pixel_centers(4).numpy()
      array([-0.75, -0.25,  0.25,  0.75], dtype=float32)
    """
    return spatial_convention.pixel_centers(size, align_corners, dtype)


def _sizes_xyz(x):
    """Spatial sizes of ``x`` [B, *spatial, ...] listed (x, y[, z]): width first."""
    return spatial_convention.shape_list(x)[-2:0:-1]


def _check_image(img, name, interpolation=None):
    """``img`` as a float tensor [B, H, W, C] or [B, D, H, W, C]; returns (img, ndim)."""
    img = as_float_tensor(img, name=name)
    ndim = check_rank(img, name=name, ranks=(4, 5), layout=" or ".join(_LAYOUTS.values())) - 2
    if interpolation == "bicubic" and ndim != 2:
        raise ValueError(f"interpolation='bicubic' is 2-D only (as in PyTorch); got {name} "
                         f"of shape {img.shape}")
    return img, ndim


def check_sampling(align_corners: bool, padding_mode: PaddingMode,
                   interpolation: Interpolation) -> dict:
    """The sampling options checked, as every sampling function checks them.

    Shells call it at construction, so a bad option fails there with the
    functions' own message.

    Example:
      >>> check_sampling(False, "border", "bilinear")
      {'align_corners': False, 'padding_mode': 'border', 'interpolation': 'bilinear'}
    """
    check_bool(align_corners, name="align_corners")
    check_option(padding_mode, name="padding_mode", allowed=PADDING_MODES)
    check_option(interpolation, name="interpolation", allowed=INTERPOLATIONS)
    return dict(align_corners=bool(align_corners), padding_mode=padding_mode,
                interpolation=interpolation)


# --------------------------------------------------------------------------
# Grids: where each output pixel samples the input
# --------------------------------------------------------------------------

def _theta_forms(ndim):
    n = ndim
    return (f"[B, {n * (n + 1)}] or [B, {n}, {n + 1}] (affine) or [B, {(n + 1) ** 2 - 1}] or "
            f"[B, {n + 1}, {n + 1}] (projective)")


def _theta_ndim(theta):
    """The number of spatial dimensions a theta's static shape implies, or None."""
    shape = theta.shape
    if shape.rank == 2:
        return {6: 2, 8: 2, 12: 3, 15: 3}.get(shape[-1])
    if shape.rank == 3:   # n + 1 columns; n or n + 1 rows
        return {3: 2, 4: 3}.get(shape[2]) or {2: 2, 4: 3}.get(shape[1])
    return None


def _theta_matrix(theta, ndim=None, name="theta"):
    """theta -> (matrix, projective): ``[B, n, n + 1]`` affine or ``[B, n + 1, n + 1]``.

    ``ndim`` (n) is the image's; None infers it from theta's shape (2 if
    that is unknown).
    """
    theta = as_float_tensor(theta, name=name, allow_bool=False)
    implied = _theta_ndim(theta)
    n = ndim or implied or 2
    shape = theta.shape
    known = shape.rank in (2, 3) and None not in shape[1:]
    if known and implied == n:
        if shape.rank == 2:
            if shape[-1] == n * (n + 1):
                return tf.reshape(theta, [-1, n, n + 1]), False
            return tf.reshape(tf.concat([theta, tf.ones_like(theta[:, :1])], 1),
                              [-1, n + 1, n + 1]), True
        return theta, shape[1] == n + 1
    if not known and shape.rank in (2, 3) and implied in (None, n):
        return _dynamic_homography(theta, n, name), True
    raise ValueError(f"{name} must have shape {_theta_forms(n)} for {n}-D inputs; got {shape}")


def _dynamic_homography(theta, n, name):
    """A theta whose matrix size is known only at run time -> ``[B, n + 1, n + 1]``.

    An affine theta gets the row (0, ..., 0, 1): its homogeneous divide is
    by exactly 1, so the numbers are those of the affine path.
    """
    batch = tf.shape(theta)[0]
    last_row = tf.tile(tf.constant([[0.0] * n + [1.0]], theta.dtype), [batch, 1])
    message = f"{name} must have shape {_theta_forms(n)}"
    if theta.shape.rank == 2:
        count = tf.shape(theta)[1]
        check = tf.debugging.assert_equal(
            tf.reduce_any(tf.equal(count, [n * (n + 1), (n + 1) ** 2 - 1])), True, message=message)
        with tf.control_dependencies([check]):
            tail = tf.cond(tf.equal(count, n * (n + 1)), lambda: last_row,
                           lambda: tf.ones([batch, 1], theta.dtype))
        return tf.reshape(tf.concat([theta, tail], axis=1), [-1, n + 1, n + 1])
    rows = tf.shape(theta)[1]
    check = tf.debugging.assert_equal(
        tf.logical_and(tf.reduce_any(tf.equal(rows, [n, n + 1])),
                       tf.equal(tf.shape(theta)[2], n + 1)), True, message=message)
    with tf.control_dependencies([check]):
        tail = tf.cond(tf.equal(rows, n), lambda: last_row,
                       lambda: tf.zeros([batch, 0], theta.dtype))
    flat = tf.reshape(theta, [batch, -1])
    return tf.reshape(tf.concat([flat, tail], axis=1), [-1, n + 1, n + 1])


def _offsets(sizes, dtype):
    """Offsets of the pixel centres from the grid's centre along each axis, in pixels.

    Half-integers, hence exact. One per axis (x, y[, z]), shaped to broadcast
    over ``[B, *spatial]`` (whose layout lists z, y, x).
    """
    n = len(sizes)
    offsets = []
    for axis, size in enumerate(sizes):
        shape = [1] * (n + 1)
        shape[n - axis] = -1
        offsets.append(tf.reshape(tf.range(size, dtype=dtype) - centre(size, dtype), shape))
    return offsets


def _transform_points(matrix, projective, out_sizes, align_corners, in_half, in_centre):
    """Applies theta to the output pixel centres; returns (x, y[, z]), each ``[B, *out]``.

    Per input axis r: ``in_half[r] * (T p)_r + in_centre[r]``, normalised
    coordinates when ``in_half = 1, in_centre = 0``, input pixel coordinates
    when they are the input's half extent and centre. The arithmetic is
    arranged so that the identity transform between equal sizes gives exact
    pixel indices: offsets from the centre are exact and each scale
    ``in_half / out_half`` is exactly 1.
    """
    dtype = matrix.dtype
    n = len(out_sizes)
    offsets = _offsets(out_sizes, dtype)
    out_half = [half_extent(s, align_corners, dtype) for s in out_sizes]
    t = tf.reshape(matrix, tf.concat([tf.shape(matrix), [1] * n], 0))   # [B, rows, n + 1, 1...]

    def row(r, scale):
        # scale / out_half folded into one factor per axis (0 for size-1 grids).
        total = t[:, r, 0] * tf.math.divide_no_nan(scale, out_half[0]) * offsets[0]
        for c in range(1, n):
            total += t[:, r, c] * tf.math.divide_no_nan(scale, out_half[c]) * offsets[c]
        return total + t[:, r, n] * scale

    coords = [row(r, in_half[r]) for r in range(n)]
    if projective:
        w = row(n, tf.ones([], dtype))
        coords = [c / w for c in coords]
    return [c + o for c, o in zip(coords, in_centre)]


def affine_grid(theta: TensorLike, size: Size, *, align_corners: bool = False) -> tf.Tensor:
    """Sampling grid for :func:`grid_sample` from transforms (PyTorch's ``affine_grid``).

    Args:
      theta: 2-D: ``[B, 2, 3]`` / ``[B, 6]`` affine or ``[B, 3, 3]`` /
        ``[B, 8]`` projective (``h22 = 1`` for the 8-vector). 3-D: ``[B, 3, 4]``
        / ``[B, 12]`` affine or ``[B, 4, 4]`` / ``[B, 15]`` projective. Maps
        output normalised (x, y[, z]) to input normalised (x, y[, z]).
      size: ``(out_height, out_width)`` or ``(out_depth, out_height,
        out_width)``: positive ints or int scalars.
      align_corners: the convention (module docstring).

    Returns:
      ``[B, *size, ndim]`` normalised (x, y[, z]) input coordinates, in
      theta's dtype (half types computed in float32).

    Example:
      >>> affine_grid(identity_theta(2), (3, 4)).shape
      TensorShape([2, 3, 4, 2])
      >>> affine_grid(identity_theta(1, ndim=3), (2, 3, 4)).shape
      TensorShape([1, 2, 3, 4, 3])
    """
    align_corners = check_bool(align_corners, name="align_corners")
    size = check_size(size, name="size", ndim=(2, 3), required=True)
    matrix, projective = _theta_matrix(theta, len(size))
    out_dtype = matrix.dtype
    matrix = tf.cast(matrix, _compute_dtype(out_dtype))
    one = tf.ones([], matrix.dtype)
    zero = tf.zeros([], matrix.dtype)
    coords = _transform_points(matrix, projective, size[::-1], align_corners,
                               [one] * len(size), [zero] * len(size))
    return tf.cast(tf.stack(coords, axis=-1), out_dtype)


def affine_grid_generator(height: SizeLike, width: SizeLike, theta: TensorLike, *,
                          align_corners: bool = False) -> tf.Tensor:
    """:func:`affine_grid` in the channels-first layout ``[B, 2, height, width]`` (x, y).

    Equals ``tf.transpose(affine_grid(theta, (height, width)), [0, 3, 1, 2])``.

    Example:
      >>> affine_grid_generator(3, 4, identity_theta(2)).shape
      TensorShape([2, 2, 3, 4])
    """
    grid = affine_grid(theta, (height, width), align_corners=align_corners)
    return tf.transpose(grid, [0, 3, 1, 2])


def _grid_pixels(img, grid, *, align_corners):
    """Pixel coordinates (x, y[, z]) in ``img`` of a normalised grid ``[B, *out, ndim]``."""
    grid = tf.cast(grid, _compute_dtype(img.dtype, grid.dtype))
    sizes = _sizes_xyz(img)
    return [spatial_convention.normalized_to_pixel(grid[..., axis], size, align_corners,
                                                   fused=len(sizes) == 2)
            for axis, size in enumerate(sizes)]


def _transform_pixels(img, theta, *, out_sizes, projective, align_corners):
    """Pixel coordinates (x, y[, z]) in ``img`` of theta's output grid (sizes listed x first)."""
    dtype = _compute_dtype(img.dtype, theta.dtype)
    sizes = _sizes_xyz(img)
    in_half = [half_extent(s, align_corners, dtype) for s in sizes]
    in_centre = [centre(s, dtype) for s in sizes]
    return _transform_points(tf.cast(theta, dtype), projective, out_sizes or sizes,
                             align_corners, in_half, in_centre)


def _displacement_pixels(img, displacement, *, units, align_corners):
    """Pixel coordinates in ``img`` of each output pixel moved by its displacement.

    The output grid is the displacement's; the identity part is computed
    as for the identity transform (exact), then the displacement is added
    (in input pixels, or normalised units scaled by the input's half
    extent).
    """
    dtype = _compute_dtype(img.dtype, displacement.dtype)
    displacement = tf.cast(displacement, dtype)
    sizes, out_sizes = _sizes_xyz(img), _sizes_xyz(displacement)
    coords = []
    for axis, (offset, size, out_size) in enumerate(zip(_offsets(out_sizes, dtype), sizes,
                                                         out_sizes)):
        in_half = half_extent(size, align_corners, dtype)
        scale = tf.math.divide_no_nan(in_half, half_extent(out_size, align_corners, dtype))
        d = displacement[..., axis]
        if units == "normalized":
            d = d * in_half
        coords.append(offset * scale + centre(size, dtype) + d)
    return coords


# --------------------------------------------------------------------------
# The sampler: padding modes (PyTorch's compute_coordinates, gradients included)
# --------------------------------------------------------------------------

def _clip_with_border_grad(coord, size):
    """Clips to [0, size - 1]; the gradient is 1 strictly inside, else 0.

    PyTorch treats the borders themselves as out of bounds for the gradient.
    """
    upper = tf.cast(size, coord.dtype) - 1.0
    inside = tf.logical_and(coord > 0.0, coord < upper)
    clipped = tf.minimum(tf.maximum(coord, 0.0), upper)
    return tf.where(inside, coord, tf.stop_gradient(clipped))


def _reflect(coord, size, align_corners):
    """Reflects about the image borders until inside (PyTorch's reflect_coordinates).

    The reflection lines are the corner centres (``align_corners=True``) or
    the image edges, half a pixel further out (``False``).
    """
    dtype = coord.dtype
    n = tf.cast(size, dtype)
    if align_corners:
        low, span = tf.zeros([], dtype), n - 1.0
    else:
        low, span = tf.constant(-0.5, dtype), n
    d = coord - low
    d = tf.where(d < 0.0, -d, d)  # gradient -1 / +1 (not 0 at the fold, unlike abs)
    safe_span = tf.where(span > 0.0, span, tf.ones_like(span))
    flips = tf.floor(d / safe_span)
    extra = d - tf.stop_gradient(flips) * safe_span
    odd = tf.equal(tf.math.floormod(flips, 2.0), 1.0)
    out = tf.where(odd, span - extra, extra) + low
    return tf.where(span > 0.0, out, tf.zeros_like(out))


def _apply_padding(coord, size, padding_mode, align_corners):
    """Maps a pixel coordinate per ``padding_mode`` (identity for "zeros")."""
    if padding_mode == "border":
        return _clip_with_border_grad(coord, size)
    if padding_mode == "reflection":
        return _clip_with_border_grad(_reflect(coord, size, align_corners), size)
    return coord


# --------------------------------------------------------------------------
# The sampler: interpolation as a weighted sum of taps
# --------------------------------------------------------------------------

def _int_position(coord):
    """Integer-valued float pixel coordinate -> int32, safe for NaN and huge values."""
    big = 2.0 ** 30
    coord = tf.where(tf.math.is_nan(coord), -big * tf.ones_like(coord), coord)
    return tf.cast(tf.clip_by_value(coord, -big, big), tf.int32)


def _linear_taps(coords, sizes):
    """N-linear interpolation (bilinear, trilinear) as taps: the cell's corners and weights.

    Coordinates are clamped to [-1, n] first: beyond that band every corner
    is outside the image, so no value changes, and +-inf becomes finite.
    Returns positions (per axis, int32 ``[B, ..., 2^n]``) and weights.
    """
    coords = [tf.clip_by_value(c, -1.0, tf.cast(n, c.dtype)) for c, n in zip(coords, sizes)]
    lower = [tf.floor(c) for c in coords]
    fractions = [c - f for c, f in zip(coords, lower)]
    positions, weights = [[] for _ in coords], []
    for corner in spatial_convention.cell_corners(len(coords)):
        weight = 1.0
        for axis, upper in enumerate(corner):
            weight *= fractions[axis] if upper else 1.0 - fractions[axis]
            positions[axis].append(_int_position(lower[axis]) + upper)
        weights.append(weight)
    return [tf.stack(p, axis=-1) for p in positions], tf.stack(weights, axis=-1)


def _nearest_taps(coords):
    """The nearest pixel (round half to even, as PyTorch), weight 1.

    The weight has a zero (not missing) gradient to the coordinates, as in
    PyTorch, and is NaN for a NaN coordinate (rounding alone would silently
    read the padding).
    """
    positions = [_int_position(tf.round(tf.stop_gradient(c)))[..., None] for c in coords]
    total = tf.add_n(coords)
    never = tf.zeros_like(total, dtype=tf.bool)
    one = 1.0 + tf.where(never, total, tf.zeros_like(total))
    nan = tf.fill(tf.shape(total), tf.constant(np.nan, total.dtype))
    return positions, tf.where(tf.math.is_nan(total), nan, one)[..., None]


def _cubic_weights(t):
    """Cubic convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 from the floor."""
    a = _CUBIC_A

    def near(s):   # |s| <= 1
        return ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0

    def far(s):    # 1 < |s| < 2
        return ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a

    return tf.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def _bicubic_taps(coords, sizes, padding_mode, align_corners):
    """The 4 x 4 taps of bicubic interpolation (2-D); each tap is mapped by padding_mode."""
    def axis_taps(coord, size):
        n = tf.cast(size, coord.dtype)
        if padding_mode == "reflection":
            # Reflection is periodic; fold far coordinates into one period
            # first (an integer shift keeps the fractional part).
            period = 2.0 * (n - 1.0) if align_corners else 2.0 * n
            safe = tf.where(period > 0.0, period, tf.ones_like(period))
            coord = coord - tf.stop_gradient(tf.floor(coord / safe) * safe)
        else:
            # Beyond 2 pixels outside, every tap is padding (zeros) or the
            # border pixel with weights summing to 1 (border): clamping
            # changes no value.
            coord = tf.clip_by_value(coord, -3.0, n + 2.0)
        floor = tf.floor(coord)
        t = coord - floor
        positions = floor[..., None] + tf.constant([-1.0, 0.0, 1.0, 2.0], coord.dtype)
        positions = _apply_padding(positions, size, padding_mode, align_corners)
        return _int_position(tf.stop_gradient(positions)), _cubic_weights(t)

    (xs, wx), (ys, wy) = axis_taps(coords[0], sizes[0]), axis_taps(coords[1], sizes[1])
    # 16 taps, row-major over (y tap, x tap).
    weights = wy[..., :, None] * wx[..., None, :]                 # [B, Ho, Wo, 4, 4]
    taps16 = tf.concat([tf.shape(xs)[:-1], [16]], 0)
    flat = lambda t: tf.reshape(tf.broadcast_to(t, tf.shape(weights)), taps16)
    return [flat(xs[..., None, :]), flat(ys[..., :, None])], flat(weights)


def _taps(img, positions, weights):
    """``sum_k weights[..., k] * img[b, positions[..., k]]``: the one weighted gather.

    positions: per axis (x, y[, z]), int32 ``[B, ..., K]``; weights
    ``[B, ..., K]``. Taps outside the image read 0. Returns ``[B, ..., C]``
    in img's dtype. The direct version: ``_stn_kernels.taps`` is the fast one.
    """
    sizes = _sizes_xyz(img)
    inside = tf.reduce_all(tf.stack([(p >= 0) & (p < n) for p, n in zip(positions, sizes)]), 0)
    batch = tf.reshape(tf.range(tf.shape(positions[0])[0]), [-1] + [1] * (positions[0].shape.rank - 1))
    index = [tf.broadcast_to(batch, tf.shape(positions[0]))]
    index += [tf.clip_by_value(p, 0, n - 1) for p, n in zip(reversed(positions), reversed(sizes))]
    values = tf.gather_nd(img, tf.stack(index, axis=-1))          # [B, ..., K, C]
    weights = tf.cast(weights, img.dtype)
    weights = tf.where(inside, weights, 0.0 * weights)             # 0 * NaN stays NaN
    return tf.reduce_sum(values * weights[..., None], axis=-2)


def _sample(img, coords, *, padding_mode, interpolation, align_corners, fast=False):
    """The one sampler: ``img`` ``[B, *spatial, C]`` at pixel coordinates (x, y[, z]).

    Returns ``[B, *out, C]`` in img's dtype. ``align_corners`` only selects
    the reflection lines here (the coordinates are already pixels). With
    ``fast`` the gathers run as ``_stn_kernels``' hand-tuned versions.
    """
    sizes = _sizes_xyz(img)
    if interpolation == "bicubic":
        positions, weights = _bicubic_taps(coords, sizes, padding_mode, align_corners)
    else:
        coords = [_apply_padding(c, n, padding_mode, align_corners) for c, n in zip(coords, sizes)]
        if interpolation == "bilinear" and fast:
            return _stn_kernels.linear(img, coords)
        if interpolation == "bilinear":
            positions, weights = _linear_taps(coords, sizes)
        else:
            positions, weights = _nearest_taps(coords)
    return (_stn_kernels.taps if fast else _taps)(img, positions, weights)


def _warp(img, pixels, arg, *, pixel_options, sampling):
    """``pixels(img, arg)`` gives the pixel coordinates to sample; then the sampler.

    With the kernels on (default), the two run as two compiled functions
    (``_stn_kernels.staged`` says why); off, as plain ops with autodiff.
    """
    if spatial_convention.kernels_enabled():
        return _stn_kernels.staged(pixels, _sample, img, arg, pixel_options, sampling)
    return _sample(img, pixels(img, arg, **pixel_options), **sampling)


# --------------------------------------------------------------------------
# Sampling: the public functions
# --------------------------------------------------------------------------

def grid_sample(img: TensorLike, grid: TensorLike, *, align_corners: bool = False,
                padding_mode: PaddingMode = "zeros",
                interpolation: Interpolation = "bilinear") -> tf.Tensor:
    """Samples ``img`` at normalised locations (PyTorch's ``grid_sample``, NHWC / NDHWC).

    Args:
      img: ``[B, H, W, C]`` image or ``[B, D, H, W, C]`` volume. Float
        dtypes are kept; integer images are cast to float32.
      grid: ``[B, Ho, Wo, 2]`` normalised (x, y), or ``[B, Do, Ho, Wo, 3]``
        normalised (x, y, z) for a volume; x along the width, y along the
        height, z along the depth.
      align_corners: False: -1 and 1 are the image's outer edges; True: the
        corner pixels' centres.
      padding_mode: value outside the image: "zeros", "border" (nearest edge
        pixel) or "reflection" (mirror about the border).
      interpolation: "bilinear" (trilinear for volumes), "nearest" (round
        half to even) or "bicubic" (cubic convolution, A = -0.75; 2-D only).

    Returns:
      ``[B, Ho, Wo, C]`` (or ``[B, Do, Ho, Wo, C]``) in img's float dtype.
      Differentiable with respect to ``img`` and ``grid`` (the grid gradient
      is 0 for "nearest"; coordinates exactly on the border get no gradient
      with "border" and "reflection", as in PyTorch). A NaN coordinate gives
      NaN in that output pixel; +-inf is far outside (0 with "zeros", the
      edge pixel with "border", NaN with "reflection"); nothing is read
      outside the image.

    Example:
      >>> img = tf.reshape(tf.range(4.0), [1, 2, 2, 1])
      >>> grid = tf.constant([[[[0.0, 0.0]]]])        # the centre of the image
      >>> float(grid_sample(img, grid)[0, 0, 0, 0])   # the mean of the 4 pixels
      1.5
    """
    sampling = check_sampling(align_corners, padding_mode, interpolation)
    img, ndim = _check_image(img, "img", interpolation)
    grid = as_float_tensor(grid, name="grid", allow_bool=False)
    layout = f"[B, {', '.join(['Do', 'Ho', 'Wo'][-ndim:])}, {ndim}]"
    check_rank(grid, name="grid", ranks=(ndim + 2,), layout=layout)
    if grid.shape[-1] is not None and grid.shape[-1] != ndim:
        raise ValueError(f"grid must have shape {layout} ({', '.join('xyz'[:ndim])}) for "
                         f"{ndim}-D inputs; got {grid.shape}")
    checks = spatial_convention.check_same_batch(img, grid, name="grid")
    return spatial_convention.with_assertions(checks, lambda: _warp(
        img, _grid_pixels, grid, pixel_options=dict(align_corners=sampling["align_corners"]),
        sampling=sampling))


def spatial_transformer_network(input_fmap: TensorLike, theta: TensorLike,
                                out_dims: Optional[Size] = None, *, align_corners: bool = False,
                                padding_mode: PaddingMode = "zeros",
                                interpolation: Interpolation = "bilinear") -> tf.Tensor:
    """Warps ``input_fmap`` by ``theta``: the spatial transformer layer.

    ``out[b, p] = input_fmap[b, T_b(p)]`` where ``p`` is an output pixel's
    centre in normalised coordinates and ``T_b`` is ``theta[b]``. Same
    numbers as ``grid_sample(input_fmap, affine_grid(theta, out_dims))`` and
    as PyTorch's ``grid_sample(affine_grid(...))``, to float32 round-off;
    the identity transform returns the input exactly (any size, both
    conventions).

    Args:
      input_fmap: ``[B, H, W, C]`` image or ``[B, D, H, W, C]`` volume. Float
        dtypes are kept; integer images are cast to float32.
      theta: maps output (x, y[, z]) to input (x, y[, z]), normalised. 2-D:
        ``[B, 6]`` / ``[B, 2, 3]`` affine, ``[B, 8]`` / ``[B, 3, 3]``
        projective; 3-D: ``[B, 12]`` / ``[B, 3, 4]`` affine, ``[B, 15]`` /
        ``[B, 4, 4]`` projective. See :func:`identity_theta`,
        :func:`attention_theta`, :func:`rotation_theta`, the other
        ``*_theta`` functions and :func:`transform_family`.
      out_dims: ``(out_height, out_width)`` or ``(out_depth, out_height,
        out_width)``; default the input's. Up- or down-samples.
      align_corners, padding_mode, interpolation: as in :func:`grid_sample`.

    Returns:
      ``[B, *out_dims, C]``, in the input's float dtype.

    Example:
      >>> x = tf.random.normal([2, 20, 20, 3])
      >>> bool(tf.reduce_all(spatial_transformer_network(x, identity_theta(2)) == x))
      True
      >>> spatial_transformer_network(x, attention_theta([[0.5, 0.0, 0.0]] * 2), (5, 5)).shape
      TensorShape([2, 5, 5, 3])
    """
    sampling = check_sampling(align_corners, padding_mode, interpolation)
    img, ndim = _check_image(input_fmap, "input_fmap", interpolation)
    matrix, projective = _theta_matrix(theta, ndim)
    out_size = check_size(out_dims, name="out_dims", ndim=(ndim,))
    checks = spatial_convention.check_same_batch(img, matrix, name="theta")
    if out_size is None or all(isinstance(s, int) for s in out_size):
        # Static output size: the grid is generated inside the compiled function.
        fn = lambda: _warp(img, _transform_pixels, matrix, sampling=sampling, pixel_options=dict(
            out_sizes=out_size[::-1] if out_size else None, projective=projective,
            align_corners=sampling["align_corners"]))
    else:
        # Output size known only at run time: the sampling grid goes in.
        fn = lambda: grid_sample(img, affine_grid(matrix, out_size,
                                                  align_corners=sampling["align_corners"]),
                                 **sampling)
    return spatial_convention.with_assertions(checks, fn)


def bilinear_sampler(img: TensorLike, x: TensorLike, y: TensorLike, *, align_corners: bool = False,
                     padding_mode: PaddingMode = "zeros") -> tf.Tensor:
    """Bilinear :func:`grid_sample` with the grid given as two tensors, ``x`` and ``y``.

    ``img`` ``[B, H, W, C]`` at normalised ``x``, ``y`` ``[B, Ho, Wo]``.
    Returns ``[B, Ho, Wo, C]``.

    Example:
      >>> img = tf.reshape(tf.range(4.0), [1, 2, 2, 1])
      >>> float(bilinear_sampler(img, tf.zeros([1, 1, 1]), tf.zeros([1, 1, 1]))[0, 0, 0, 0])
      1.5
    """
    x = as_float_tensor(x, name="x", allow_bool=False)
    y = as_float_tensor(y, name="y", allow_bool=False)
    check_rank(x, name="x", ranks=(3,), layout="[B, Ho, Wo]")
    check_rank(y, name="y", ranks=(3,), layout="[B, Ho, Wo]")
    dtype = _compute_dtype(x.dtype, y.dtype)
    grid = tf.stack([tf.cast(x, dtype), tf.cast(y, dtype)], axis=-1)
    return grid_sample(img, grid, align_corners=align_corners, padding_mode=padding_mode)


# --------------------------------------------------------------------------
# Dense displacement fields (image registration)
# --------------------------------------------------------------------------

def _check_field(field, name, ndim=None):
    """A displacement or velocity field ``[B, H, W, 2]`` / ``[B, D, H, W, 3]``; returns (field, ndim)."""
    field = as_float_tensor(field, name=name, allow_bool=False)
    return field, spatial_convention.check_field_shape(field.shape, name=name, ndim=ndim)


def warp(image: TensorLike, displacement: TensorLike, *, units: Units = "pixels",
         align_corners: bool = False, padding_mode: PaddingMode = "border",
         interpolation: Interpolation = "bilinear") -> tf.Tensor:
    """Warps ``image`` by a dense displacement field (VoxelMorph's spatial transformer).

    Each output pixel ``p`` samples the image at its own position plus its
    displacement: ``out[b, p] = image[b, p + displacement[b, p]]``. The
    output grid is the displacement's (its size may differ from the image's:
    ``p`` is then the same normalised position in both). A zero
    displacement returns the image exactly.

    Args:
      image: ``[B, H, W, C]`` or ``[B, D, H, W, C]``; float dtypes kept.
      displacement: ``[B, Ho, Wo, 2]`` (x, y) or ``[B, Do, Ho, Wo, 3]``
        (x, y, z).
      units: "pixels" (pixels of ``image``) or "normalized" (the
        normalised units of the convention; 2 spans the image).
      align_corners: the convention (module docstring).
      padding_mode, interpolation: as in :func:`grid_sample` (default
        "border": registration fields look just past the edge).

    Returns:
      ``[B, Ho, Wo, C]`` (or ``[B, Do, Ho, Wo, C]``) in the image's dtype,
      differentiable with respect to the image and the displacement.

    Example:
      >>> image = tf.reshape(tf.range(6.0), [1, 2, 3, 1])
      >>> shift = tf.concat([tf.ones([1, 2, 3, 1]), tf.zeros([1, 2, 3, 1])], -1)  # x + 1
      >>> warp(image, shift)[0, :, :, 0].numpy()
      array([[1., 2., 2.],
             [4., 5., 5.]], dtype=float32)
    """
    sampling = check_sampling(align_corners, padding_mode, interpolation)
    check_option(units, name="units", allowed=UNITS)
    img, ndim = _check_image(image, "image", interpolation)
    displacement, _ = _check_field(displacement, "displacement", ndim)
    checks = spatial_convention.check_same_batch(img, displacement, name="displacement")
    options = dict(units=units, align_corners=sampling["align_corners"])
    return spatial_convention.with_assertions(checks, lambda: _warp(
        img, _displacement_pixels, displacement, pixel_options=options, sampling=sampling))


def integrate_velocity(velocity: TensorLike, steps: int = 7, *, units: Units = "pixels",
                       align_corners: bool = False) -> tf.Tensor:
    """Diffeomorphic displacement from a stationary velocity field, by scaling and squaring.

    The flow of ``velocity`` for unit time, ``exp(v)``: the field is scaled
    by ``2^-steps`` (a small, invertible step) and composed with itself
    ``steps`` times, ``d <- d + warp(d, d)`` (Arsigny et al. 2006; the
    field-wide form of ``affine_diffeomorphic_theta``). Integrating ``-v``
    gives the inverse map.

    Args:
      velocity: ``[B, H, W, 2]`` or ``[B, D, H, W, 3]``, in ``units``.
      steps: number of squarings (7: 128 small steps).
      units, align_corners: as in :func:`warp`; the field samples itself.

    Returns:
      The displacement, shape and dtype of ``velocity``.

    Example:
      >>> v = tf.fill([1, 4, 4, 2], 0.5)             # a constant flow
      >>> float(integrate_velocity(v)[0, 2, 2, 0])   # is a translation
      0.5
    """
    velocity, _ = _check_field(velocity, "velocity")
    steps = spatial_convention.check_positive_int(steps, name="steps", allow_zero=True)
    check_option(units, name="units", allowed=UNITS)
    check_bool(align_corners, name="align_corners")
    # Half precision is integrated in float32: each step's error compounds.
    field = tf.cast(velocity, _compute_dtype(velocity.dtype)) / (2.0 ** steps)
    for _ in range(steps):
        field = field + warp(field, field, units=units, align_corners=align_corners)
    return tf.cast(field, velocity.dtype)


def compose_displacements(first: TensorLike, second: TensorLike, *, units: Units = "pixels",
                          align_corners: bool = False) -> tf.Tensor:
    """One displacement equal to warping by ``first`` and then by ``second``.

    ``warp(warp(x, first), second) = warp(x, compose_displacements(first,
    second))`` up to resampling: the result is ``second + warp(first,
    second)``, on ``second``'s grid (as :func:`compose_affine` for
    matrices).

    Example:
      >>> a = tf.fill([1, 4, 4, 2], 1.0)
      >>> float(compose_displacements(a, a)[0, 1, 1, 0])   # two shifts by 1
      2.0
    """
    first, ndim = _check_field(first, "first")
    second, _ = _check_field(second, "second", ndim)
    return second + warp(first, second, units=units, align_corners=align_corners)


def _gradient(f, axis):
    """``numpy.gradient`` along ``axis`` (unit spacing): central differences
    inside, one-sided at the two ends; 0 along an axis of one pixel."""
    n = tf.shape(f)[axis]
    i = tf.range(n)
    after, before = tf.minimum(i + 1, n - 1), tf.maximum(i - 1, 0)
    shape = [1] * f.shape.rank
    shape[axis] = -1
    spacing = tf.reshape(tf.cast(after - before, f.dtype), shape)   # 2 inside, 1 at the ends
    return tf.math.divide_no_nan(tf.gather(f, after, axis=axis) - tf.gather(f, before, axis=axis),
                                 spacing)


def jacobian_determinant(displacement: TensorLike, *, units: Units = "pixels",
                         align_corners: bool = False) -> tf.Tensor:
    """Determinant of the Jacobian of ``p -> p + displacement(p)`` at every pixel.

    Positive where the map preserves orientation; zero or negative values
    mark folding. Derivatives are taken on the field's own grid, in its
    pixels, as ``numpy.gradient`` does (central differences inside,
    one-sided at the borders).

    Args:
      displacement: ``[B, H, W, 2]`` or ``[B, D, H, W, 3]``; "pixels" are the
        field's own, "normalized" values are converted with its sizes.
      units, align_corners: as in :func:`warp`.

    Returns:
      ``[B, H, W]`` or ``[B, D, H, W]`` in the field's dtype.

    Example:
      >>> x = tf.range(4.0)[None, None, :, None] * tf.ones([1, 4, 1, 1])
      >>> stretch = tf.concat([0.5 * x, tf.zeros_like(x)], -1)   # x -> 1.5 x
      >>> float(jacobian_determinant(stretch)[0].numpy().min())
      1.5
    """
    field, n = _check_field(displacement, "displacement")
    check_option(units, name="units", allowed=UNITS)
    align_corners = check_bool(align_corners, name="align_corners")
    dtype = _compute_dtype(field.dtype)
    d = tf.cast(field, dtype)
    sizes = _sizes_xyz(d)
    components = [d[..., a] * (half_extent(sizes[a], align_corners, dtype)
                               if units == "normalized" else 1.0) for a in range(n)]
    # J[a][c] = delta_ac + d(component a) / d(coordinate c); coordinate c
    # runs along tensor axis n - c (x is the last spatial axis).
    j = [[_gradient(components[a], n - c) + (1.0 if a == c else 0.0) for c in range(n)]
         for a in range(n)]
    if n == 2:
        det = j[0][0] * j[1][1] - j[0][1] * j[1][0]
    else:
        det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
               - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
               + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return tf.cast(det, field.dtype)


def _pixels_per_unit(field, size, align_corners):
    """Per component, pixels per normalised unit of the image of ``size`` (default the field's)."""
    sizes = _sizes_xyz(field) if size is None else list(size)[::-1]
    dtype = _compute_dtype(field.dtype)
    return tf.stack([half_extent(s, align_corners, dtype) for s in sizes])


def displacement_to_normalized(displacement: TensorLike, *, size: Optional[Size] = None,
                               align_corners: bool = False) -> tf.Tensor:
    """A displacement in pixels -> normalised units.

    ``size`` is the (height, width[, depth first]) of the image the field
    samples; default the field's own.

    Example:
      >>> displacement_to_normalized(tf.fill([1, 4, 4, 2], 2.0))[0, 0, 0].numpy()
      array([1., 1.], dtype=float32)
    """
    field, scale = _field_and_scale(displacement, size, align_corners)
    return tf.cast(tf.cast(field, scale.dtype) / scale, field.dtype)


def displacement_to_pixels(displacement: TensorLike, *, size: Optional[Size] = None,
                           align_corners: bool = False) -> tf.Tensor:
    """A displacement in normalised units -> pixels; the inverse of :func:`displacement_to_normalized`.

    Example:
      >>> displacement_to_pixels(tf.fill([1, 4, 4, 2], 1.0))[0, 0, 0].numpy()
      array([2., 2.], dtype=float32)
    """
    field, scale = _field_and_scale(displacement, size, align_corners)
    return tf.cast(tf.cast(field, scale.dtype) * scale, field.dtype)


def _field_and_scale(displacement, size, align_corners):
    """The checked field and its pixels per normalised unit (see :func:`_pixels_per_unit`)."""
    field, n = _check_field(displacement, "displacement")
    size = check_size(size, name="size", ndim=(n,))
    return field, _pixels_per_unit(field, size, check_bool(align_corners, name="align_corners"))


def resize_displacement(displacement: TensorLike, size: Size, *, units: Units = "pixels",
                        align_corners: bool = False) -> tf.Tensor:
    """Resamples a displacement field to another resolution (e.g. a coarse-to-fine pyramid).

    The field is sampled (bilinear, border padding) at the same normalised
    positions on the new grid. In "pixels" the field describes an image of
    its own size, so the vectors are rescaled too (a field for a 32 x 32
    image becomes one for a 64 x 64 image); "normalized" vectors keep their
    values.

    Args:
      displacement: ``[B, H, W, 2]`` or ``[B, D, H, W, 3]``.
      size: the new ``(height, width)`` or ``(depth, height, width)``.
      units, align_corners: as in :func:`warp`.

    Example:
      >>> coarse = tf.fill([1, 4, 4, 2], 1.0)     # 1 pixel of a 4 x 4 image
      >>> resize_displacement(coarse, (8, 8))[0, 3, 3].numpy()
      array([2., 2.], dtype=float32)
    """
    field, n = _check_field(displacement, "displacement")
    size = check_size(size, name="size", ndim=(n,), required=True)
    check_option(units, name="units", allowed=UNITS)
    align_corners = check_bool(align_corners, name="align_corners")
    zeros = tf.zeros(tf.stack([tf.shape(field)[0], *size, n]), field.dtype)
    resampled = warp(field, zeros, align_corners=align_corners)
    if units == "normalized":
        return resampled
    scale = (_pixels_per_unit(resampled, None, align_corners)
             / _pixels_per_unit(field, None, align_corners))
    return tf.cast(tf.cast(resampled, scale.dtype) * scale, field.dtype)


# --------------------------------------------------------------------------
# Transform families: parameters -> theta, in 2-D and 3-D
# --------------------------------------------------------------------------

def _params(params, name, counts, ndim=None):
    """``params`` ``[B, k]`` for one of ``counts`` ({ndim: k}); returns (params, ndim).

    ``ndim`` None infers it from the static k.
    """
    params = as_float_tensor(params, name=name, allow_bool=False)
    k = params.shape[-1] if params.shape.rank == 2 else None
    forms = " or ".join(f"[B, {c}] ({d}-D)" for d, c in counts.items())
    if params.shape.rank not in (None, 2):
        raise ValueError(f"{name} must have shape {forms}; got {params.shape}")
    if ndim is None:
        by_count = {c: d for d, c in counts.items()}
        if k is not None and k not in by_count:
            raise ValueError(f"{name} must have shape {forms}; got {params.shape}")
        ndim = by_count.get(k, 2)
    count = counts[ndim]
    if k is not None and k != count:
        raise ValueError(f"{name} must have shape [B, {count}] ({ndim}-D); got {params.shape}")
    if k is None:
        check = tf.debugging.assert_equal(tf.shape(params)[-1], count,
                                          message=f"{name} must have shape [B, {count}]")
        with tf.control_dependencies([check]):
            params = tf.reshape(params, [-1, count])
    return params, ndim


def _matrix(linear, translation):
    """theta ``[B, n, n + 1]`` from a linear part ``[B, n, n]`` and a translation ``[B, n]``."""
    return tf.concat([linear, translation[..., None]], axis=-1)


def identity_theta(batch_size: SizeLike, dtype: tf.DType = tf.float32, ndim: int = 2) -> tf.Tensor:
    """``[batch_size, ndim, ndim + 1]`` identity transforms ``[I | 0]``.

    Example:
      >>> identity_theta(1).numpy()
      array([[[1., 0., 0.],
              [0., 1., 0.]]], dtype=float32)
    """
    if ndim not in (2, 3) or isinstance(ndim, bool):
        raise ValueError(f"ndim must be 2 or 3; got {ndim!r}")
    eye = tf.eye(ndim, ndim + 1, dtype=dtype)
    return tf.tile(eye[None], tf.stack([batch_size, 1, 1]))


def affine_theta(params: TensorLike, ndim: Optional[int] = None) -> tf.Tensor:
    """General affine: ``params`` ``[B, 6]`` -> ``[B, 2, 3]``, ``[B, 12]`` -> ``[B, 3, 4]`` (row-major).

    Identity parameters: the rows of ``[I | 0]``.

    Example:
      >>> affine_theta([[1.0, 0, 0, 0, 1, 0]]).shape
      TensorShape([1, 2, 3])
    """
    params, n = _params(params, "params", {2: 6, 3: 12}, ndim)
    return tf.reshape(params, [-1, n, n + 1])


def attention_theta(params: TensorLike, ndim: Optional[int] = None) -> tf.Tensor:
    """Attention: isotropic scale + translation (crops and zooms).

    ``params`` ``[B, 3]`` = (s, tx, ty) -> ``[[s, 0, tx], [0, s, ty]]``, or
    ``[B, 4]`` = (s, tx, ty, tz) -> ``[s I | t]`` ``[B, 3, 4]``. ``s < 1``
    zooms in on a window of half-size ``s`` centred at t (normalised
    units). Identity parameters: (1, 0, ...).

    Example:
      >>> attention_theta([[0.5, 0.5, -0.5]]).numpy()   # the top-right quarter
      array([[[ 0.5,  0. ,  0.5],
              [ 0. ,  0.5, -0.5]]], dtype=float32)
    """
    params, n = _params(params, "params", {2: 3, 3: 4}, ndim)
    scale = params[:, 0, None, None] * tf.eye(n, dtype=params.dtype)
    return _matrix(scale, params[:, 1:])


def _skew(v):
    """``[B, 3]`` -> the cross-product matrices ``[v]_x`` ``[B, 3, 3]``."""
    x, y, z = tf.unstack(v, axis=-1)
    zero = tf.zeros_like(x)
    return tf.reshape(tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1), [-1, 3, 3])


def _rotation(angles):
    """2-D: angles ``[B]`` -> ``[B, 2, 2]``; 3-D: axis-angle ``[B, 3]`` -> ``[B, 3, 3]``.

    In 3-D the rotation is ``expm([v]_x)``: by the angle ``|v|`` about the
    axis ``v / |v|`` (Rodrigues' formula), differentiable at ``v = 0``.
    """
    if angles.shape.rank == 2:
        return _expm(_skew(angles))
    c, s = tf.cos(angles), tf.sin(angles)
    return tf.reshape(tf.stack([c, -s, s, c], axis=-1), [-1, 2, 2])


def similarity_theta(params: TensorLike, ndim: Optional[int] = None) -> tf.Tensor:
    """Similarity: scale, rotation, translation.

    2-D: ``params`` ``[B, 4]`` = (s, angle, tx, ty) ->
    ``[[s cos, -s sin, tx], [s sin, s cos, ty]]``. Since theta maps output
    to input coordinates and y points down, the warped content turns
    *anticlockwise* on screen by ``angle`` radians. 3-D: ``[B, 7]`` =
    (s, rx, ry, rz, tx, ty, tz) -> ``[s R | t]`` with R the rotation by
    ``|r|`` radians about the axis ``r`` (axis-angle). Identity parameters:
    (1, 0, ...).

    Example:
      >>> similarity_theta([[2.0, 0.0, 0.1, 0.2]]).numpy() + 0.0   # + 0.0: no -0.0
      array([[[2. , 0. , 0.1],
              [0. , 2. , 0.2]]], dtype=float32)
    """
    params, n = _params(params, "params", {2: 4, 3: 7}, ndim)
    angles = params[:, 1] if n == 2 else params[:, 1:4]
    return _matrix(params[:, 0, None, None] * _rotation(angles), params[:, -n:])


def rotation_theta(angle: TensorLike, scale: float = 1.0,
                   translation: Optional[Sequence[float]] = None) -> tf.Tensor:
    """Rotation about the centre: 2-D by ``angle`` radians, 3-D by an axis-angle vector.

    ``angle``: a scalar or ``[B]`` (2-D; the content turns anticlockwise on
    screen, see :func:`similarity_theta`) or ``[B, 3]`` axis-angle vectors
    (3-D: ``|v|`` radians about ``v``). Returns ``[B, 2, 3]`` or ``[B, 3, 4]``.

    Example:
      >>> rotation_theta(np.pi / 2).numpy().round(6) + 0.0
      array([[[ 0., -1.,  0.],
              [ 1.,  0.,  0.]]], dtype=float32)
    """
    angle = as_float_tensor(angle, name="angle", allow_bool=False)
    if angle.shape.rank not in (0, 1, 2) or (angle.shape.rank == 2 and angle.shape[-1] not in (None, 3)):
        raise ValueError(f"angle must be a scalar or [B] angles (2-D), or [B, 3] axis-angle "
                         f"vectors (3-D); got shape {angle.shape}")
    if angle.shape.rank < 2:
        angle = tf.reshape(angle, [-1])
    n = angle.shape.rank + 1
    return _scaled_rotation(_rotation(angle), scale, (0.0,) * n if translation is None
                            else translation)


def euler_rotation_theta(angles: TensorLike, scale: float = 1.0,
                         translation: Sequence[float] = (0.0, 0.0, 0.0)) -> tf.Tensor:
    """3-D rotation from Euler angles: about the fixed x, then y, then z axes.

    ``angles`` ``[B, 3]`` (or ``[3]``) = (a, b, c) radians give
    ``R = Rz(c) Ry(b) Rx(a)`` (extrinsic x-y-z; SciPy's
    ``Rotation.from_euler("xyz", angles)``), as ``[scale R | translation]``
    ``[B, 3, 4]``.

    Example:
      >>> euler_rotation_theta([0.0, 0.0, np.pi / 2]).numpy().round(6)[0, :, :3] + 0.0
      array([[ 0., -1.,  0.],
             [ 1.,  0.,  0.],
             [ 0.,  0.,  1.]], dtype=float32)
    """
    angles = tf.reshape(as_float_tensor(angles, name="angles", allow_bool=False), [-1, 3])
    unit = tf.eye(3, dtype=angles.dtype)
    rotation = tf.eye(3, batch_shape=tf.shape(angles)[:1], dtype=angles.dtype)
    for axis in range(3):
        rotation = tf.matmul(_rotation(angles[:, axis, None] * unit[axis]), rotation)
    return _scaled_rotation(rotation, scale, translation)


def _scaled_rotation(rotation, scale, translation):
    """``[scale R | translation]`` from rotations ``[B, n, n]``."""
    n = rotation.shape[-1]
    if len(translation) != n:
        raise ValueError(f"translation must have {n} values for a {n}-D rotation; "
                         f"got {translation!r}")
    linear = tf.cast(scale, rotation.dtype) * rotation
    shift = tf.zeros_like(linear[:, :, 0]) + tf.constant(list(translation), rotation.dtype)
    return _matrix(linear, shift)


def affine_diffeomorphic_theta(params: TensorLike, ndim: Optional[int] = None) -> tf.Tensor:
    """Affine diffeomorphic transform: the matrix exponential of an affine generator.

    ``params`` ``[B, 6]`` (2-D) or ``[B, 12]`` (3-D) fill the top rows of
    the generator ``G = [[A, b], [0, 0]]``; theta is the top rows of
    ``expm(G)``. Always invertible (its inverse is ``expm(-G)``), so the
    warp never folds or collapses the image (Detlefsen et al., CVPR 2018).
    Identity parameters: zeros.

    Example:
      >>> affine_diffeomorphic_theta(tf.zeros([1, 6])).numpy()
      array([[[1., 0., 0.],
              [0., 1., 0.]]], dtype=float32)
    """
    params, n = _params(params, "params", {2: 6, 3: 12}, ndim)
    top = tf.reshape(params, [-1, n, n + 1])
    generator = tf.concat([top, tf.zeros_like(top[:, :1])], axis=1)
    return _expm(generator)[:, :n, :]


_EXPM_MAX_SQUARINGS = 24   # norms up to 2**22: e**(2**22) overflows float64 anyway
_EXPM_TAYLOR_DEGREE = 12


def _expm(a):
    """Matrix exponential of small matrices ``[B, n, n]``, by scaling and squaring.

    Each matrix is scaled by 2**-s so that its infinity norm is <= 1/4, the
    exponential of that is summed as a degree-12 Taylor series (error below
    1e-17 relative) and squared back s times. Unlike ``tf.linalg.expm`` it
    has no data-dependent loop, so it compiles under XLA and differentiates
    there too; squarings beyond a matrix's own s are skipped with a select.
    """
    dtype = a.dtype
    norm = tf.reduce_max(tf.reduce_sum(tf.abs(a), axis=-1), axis=-1)      # [B]
    s = tf.math.ceil(tf.math.log(norm / 0.25) / np.log(2.0))
    s = tf.where(tf.math.is_finite(s), tf.clip_by_value(s, 0.0, _EXPM_MAX_SQUARINGS), 0.0)
    s = tf.stop_gradient(s)
    scaled = a * tf.pow(tf.constant(2.0, dtype), -s)[:, None, None]
    eye = tf.eye(tf.shape(a)[-1], batch_shape=tf.shape(a)[:1], dtype=dtype)
    # Horner form of sum_k x^k / k!.
    result = eye
    for k in range(_EXPM_TAYLOR_DEGREE, 0, -1):
        result = eye + tf.matmul(scaled, result) / float(k)
    for i in range(_EXPM_MAX_SQUARINGS):
        result = tf.where((s > i)[:, None, None], tf.matmul(result, result), result)
    return result


def projective_theta(params: TensorLike, ndim: Optional[int] = None) -> tf.Tensor:
    """Projective transform (homography): ``[B, 8]`` -> ``[B, 3, 3]``, ``[B, 15]`` -> ``[B, 4, 4]``.

    The last entry is fixed to 1. In 2-D, output (x, y) maps to input
    ``((h00 x + h01 y + h02) / w, (h10 x + h11 y + h12) / w)`` with
    ``w = h20 x + h21 y + 1``. Identity parameters: the identity's entries.

    Example:
      >>> projective_theta([[1.0, 0, 0, 0, 1, 0, 0, 0]]).shape
      TensorShape([1, 3, 3])
    """
    params, n = _params(params, "params", {2: 8, 3: 15}, ndim)
    return tf.reshape(tf.concat([params, tf.ones_like(params[:, :1])], axis=1), [-1, n + 1, n + 1])


def _homogeneous(theta, name, ndim=None):
    """theta -> (``[B, n + 1, n + 1]``, projective)."""
    matrix, projective = _theta_matrix(theta, ndim, name=name)
    if projective:
        return matrix, True
    n = matrix.shape[1]
    last = tf.tile(tf.constant([[[0.0] * n + [1.0]]], matrix.dtype), [tf.shape(matrix)[0], 1, 1])
    return tf.concat([matrix, last], axis=1), False


def invert_affine(theta: TensorLike) -> tf.Tensor:
    """Inverse transform: warping by theta then by its inverse restores the image.

    Affine ``[B, n, n + 1]`` (or flat) gives ``[B, n, n + 1]``; projective
    ``[B, n + 1, n + 1]`` gives the same form, normalised so the last entry
    is 1. 2-D and 3-D.

    Example:
      >>> invert_affine(attention_theta([[0.5, 0.2, 0.0]])).numpy()
      array([[[ 2. ,  0. , -0.4],
              [ 0. ,  2. ,  0. ]]], dtype=float32)
    """
    matrix, projective = _homogeneous(theta, "theta")
    inverse = tf.linalg.inv(matrix)
    if projective:
        return inverse / inverse[:, -1:, -1:]
    return inverse[:, :-1, :]


def compose_affine(first: TensorLike, second: TensorLike) -> tf.Tensor:
    """One transform equal to warping by ``first`` and then by ``second``.

    Warping by ``first`` gives ``o1(p) = img(A p)``; warping that by
    ``second`` gives ``o2(p) = o1(B p) = img(A B p)``: the product ``A @ B``
    in homogeneous form (up to resampling and borders). Affine inputs give
    an affine result; if either is projective the result is projective.

    Example:
      >>> half = attention_theta([[0.5, 0.0, 0.0]])
      >>> compose_affine(half, half).numpy()
      array([[[0.25, 0.  , 0.  ],
              [0.  , 0.25, 0.  ]]], dtype=float32)
    """
    first = as_float_tensor(first, name="first", allow_bool=False)
    second = as_float_tensor(second, name="second", allow_bool=False)
    ndim = _theta_ndim(first) or _theta_ndim(second)
    a, pa = _homogeneous(first, "first", ndim)
    b, pb = _homogeneous(second, "second", ndim)
    product = tf.matmul(a, tf.cast(b, a.dtype))
    if pa or pb:
        return product / product[:, -1:, -1:]
    return product[:, :-1, :]


class AffineWarpConstraints:
    """Fixes some entries of the affine matrix and learns the rest.

    In the spirit of Sonnet 1's ``AffineWarpConstraints``: ``constraints``
    is a 2 x 3 (images) or 3 x 4 (volumes) nested sequence whose entries
    are a number (fixed) or ``None`` (free). ``theta(params)`` fills the
    free entries, row-major, from ``params`` ``[B, num_free_params]``.

    Example:
      >>> c = AffineWarpConstraints.translation_only()   # [[1, 0, None], [0, 1, None]]
      >>> c.num_free_params
      2
      >>> c.theta(tf.zeros([4, c.num_free_params])).shape   # identity
      TensorShape([4, 2, 3])
    """

    def __init__(self, constraints: Sequence[Sequence[Optional[float]]] = ((None,) * 3,) * 2):
        rows = [list(r) for r in constraints]
        n = len(rows)
        if n not in (2, 3) or any(len(r) != n + 1 for r in rows):
            raise ValueError(f"constraints must be 2x3 or 3x4 (numbers or None); got {constraints!r}")
        for r in rows:
            for v in r:
                if v is not None and not isinstance(v, (int, float, np.number)):
                    raise ValueError(f"constraints entries must be numbers or None; got {v!r}")
        self.constraints = tuple(tuple(r) for r in rows)
        self.ndim = n
        flat = [v for r in rows for v in r]
        self._free = [i for i, v in enumerate(flat) if v is None]
        self._fixed = [0.0 if v is None else float(v) for v in flat]

    @property
    def num_free_params(self) -> int:
        return len(self._free)

    @property
    def identity_params(self) -> List[float]:
        """Free-parameter values giving the identity transform."""
        eye = np.eye(self.ndim, self.ndim + 1).ravel()
        return [float(eye[i]) for i in self._free]

    def theta(self, params: TensorLike) -> tf.Tensor:
        """``params`` ``[B, num_free_params]`` -> theta ``[B, n, n + 1]``."""
        n = self.ndim
        params, _ = _params(params, "params", {n: self.num_free_params}, n)
        batch = tf.shape(params)[0]
        columns = []
        free = iter(range(self.num_free_params))
        for i in range(n * (n + 1)):
            if i in self._free:
                columns.append(params[:, next(free)])
            else:
                columns.append(tf.fill([batch], tf.cast(self._fixed[i], params.dtype)))
        return tf.reshape(tf.stack(columns, axis=-1), [-1, n, n + 1])

    @classmethod
    def _like_identity(cls, free, ndim):
        """The identity with the entries ``free(row, column)`` left free."""
        eye = np.eye(ndim, ndim + 1)
        return cls([[None if free(r, c) else float(eye[r, c]) for c in range(ndim + 1)]
                    for r in range(ndim)])

    @classmethod
    def no_constraints(cls, ndim: int = 2) -> "AffineWarpConstraints":
        return cls._like_identity(lambda r, c: True, ndim)

    @classmethod
    def translation_only(cls, ndim: int = 2) -> "AffineWarpConstraints":
        return cls._like_identity(lambda r, c: c == ndim, ndim)

    @classmethod
    def scale_only(cls, ndim: int = 2) -> "AffineWarpConstraints":
        return cls._like_identity(lambda r, c: r == c, ndim)

    @classmethod
    def shear_only(cls, ndim: int = 2) -> "AffineWarpConstraints":
        return cls._like_identity(lambda r, c: r != c and c < ndim, ndim)

    @classmethod
    def no_shear(cls, ndim: int = 2) -> "AffineWarpConstraints":
        return cls._like_identity(lambda r, c: r == c or c == ndim, ndim)

    def __repr__(self):
        return f"AffineWarpConstraints({self.constraints!r})"


# --------------------------------------------------------------------------
# Thin-plate splines
# --------------------------------------------------------------------------

def control_point_lattice(rows: int, cols: Optional[int] = None, *, extent: float = 1.0,
                          dtype: tf.DType = tf.float32) -> tf.Tensor:
    """A regular ``rows x cols`` lattice of control points, ``[rows * cols, 2]`` (x, y).

    The points run from ``-extent`` to ``extent`` along each axis
    (normalised units; ``extent=1`` puts the outer points on the image's
    edges with ``align_corners=False``, on the corner pixels' centres with
    ``True``), listed row by row (y outer, x inner).

    Example:
      >>> control_point_lattice(2, 3).numpy()
      array([[-1., -1.],
             [ 0., -1.],
             [ 1., -1.],
             [-1.,  1.],
             [ 0.,  1.],
             [ 1.,  1.]], dtype=float32)
    """
    return tf.constant(_lattice(rows, cols, extent), dtype)


def _lattice(rows, cols=None, extent=1.0):
    """NumPy ``[rows * cols, 2]`` lattice of :func:`control_point_lattice`."""
    rows = spatial_convention.check_positive_int(rows, name="rows")
    cols = rows if cols is None else spatial_convention.check_positive_int(cols, name="cols")
    if rows * cols < 3:
        raise ValueError(f"a thin-plate spline needs at least 3 control points; got {rows} x {cols}")

    def axis(n):
        return np.linspace(-extent, extent, n) if n > 1 else np.zeros(1)

    x, y = np.meshgrid(axis(cols), axis(rows))
    return np.stack([x.ravel(), y.ravel()], axis=-1)


def _tps_kernel(squared_distance):
    """The thin-plate radial basis U = r^2 log r^2 (0 at r = 0), from r^2."""
    positive = squared_distance > 0.0
    safe = tf.where(positive, squared_distance, tf.ones_like(squared_distance))
    return tf.where(positive, squared_distance * tf.math.log(safe),
                    tf.zeros_like(squared_distance))


def _tps_features(points, control_points):
    """[U(|p - c_i|^2) for each control point i, 1, x, y] of points p: ``[..., M, N + 3]``."""
    d = points[..., :, None, :] - control_points[..., None, :, :]          # [..., M, N, 2]
    radial = _tps_kernel(tf.reduce_sum(tf.square(d), axis=-1))
    affine = tf.concat([tf.ones_like(points[..., :1]), points], axis=-1)   # [..., M, 3]
    return tf.concat([radial, affine], axis=-1)


def _tps_points(control_points, source_points):
    """Checked control ``[N, 2]`` / ``[B, N, 2]`` and source ``[B, N, 2]`` points, as float64.

    The control points are first rounded to the source points' dtype (float32
    for half types): the identity (source = control, as a network's float32
    head holds it) must give a zero displacement.
    """
    c = as_float_tensor(control_points, name="control_points", allow_bool=False)
    s = as_float_tensor(source_points, name="source_points", allow_bool=False)
    check_rank(c, name="control_points", ranks=(2, 3), layout="[N, 2] or [B, N, 2]")
    check_rank(s, name="source_points", ranks=(3,), layout="[B, N, 2]")
    for t, name in ((c, "control_points"), (s, "source_points")):
        if t.shape[-1] is not None and t.shape[-1] != 2:
            raise ValueError(f"{name} must end in an (x, y) axis of size 2; got shape {t.shape}")
    n_c, n_s = c.shape[-2], s.shape[-2]
    if n_c is not None and n_s is not None and n_c != n_s:
        raise ValueError(f"source_points must have one point per control point ({n_c}); "
                         f"got shape {s.shape}")
    rounding = _compute_dtype(s.dtype)
    c = tf.cast(tf.cast(c, rounding), tf.float64)
    return c, tf.cast(s, tf.float64)


def _tps_system(c):
    """The thin-plate system ``[[K, P], [P^T, 0]]`` of control points ``c`` ``[..., N, 2]``."""
    features = _tps_features(c, c)                                     # [..., N, N + 3]
    p_t = tf.linalg.matrix_transpose(features[..., -3:])              # [..., 3, N]
    bottom = tf.concat([p_t, tf.zeros_like(p_t[..., :3])], axis=-1)   # [..., 3, N + 3]
    return tf.concat([features, bottom], axis=-2)


def tps_coefficients(control_points: TensorLike, source_points: TensorLike) -> tf.Tensor:
    """Solves for the thin-plate spline that sends control points to source points.

    The interpolant is ``f(p) = sum_i w_i U(|p - c_i|^2) + a_0 + a_x x + a_y y``
    with ``U(r^2) = r^2 log r^2``; ``f(c_i) = s_i`` together with
    ``sum w_i = 0`` and ``sum w_i c_i = 0`` (no affine part in the bending)
    is the ``(N + 3)``-square linear system ``[[K, P], [P^T, 0]]``, solved
    batched. Differentiable in both point sets.

    Args:
      control_points: ``[N, 2]`` (shared) or ``[B, N, 2]`` normalised (x, y)
        in the output; N >= 3, not all on one line.
      source_points: ``[B, N, 2]`` normalised (x, y) in the input.

    Returns:
      ``[B, N + 3, 2]`` float64: the weights ``w`` (first N rows) and the
      affine part ``a_0, a_x, a_y`` (last three), per output coordinate (x, y).
      Solved in float64 whatever the inputs: close control points make the
      system ill-conditioned enough to cost float32 several digits.

    Example:
      >>> c = control_point_lattice(3)
      >>> coefficients = tps_coefficients(c, 2.0 * c[None])   # a scaling: no bending
      >>> bool(np.abs(coefficients[0, :9]).max() < 1e-12), coefficients[0, 9:].numpy().round(6) + 0.0
      (True, array([[0., 0.],
             [2., 0.],
             [0., 2.]]))
    """
    c, s = _tps_points(control_points, source_points)
    system = _tps_system(c)                                            # [..., N + 3, N + 3]
    rhs = tf.concat([s, tf.zeros_like(s[:, :3])], axis=1)             # [B, N + 3, 2]
    if c.shape.rank == 2:
        # One system for the whole batch, with 2B right-hand sides.
        batch = tf.shape(rhs)[0]
        stacked = tf.reshape(tf.transpose(rhs, [1, 0, 2]), [tf.shape(rhs)[1], -1])
        solved = tf.linalg.solve(system, stacked)
        return tf.transpose(tf.reshape(solved, [-1, batch, 2]), [1, 0, 2])
    return tf.linalg.solve(system, rhs)


def _tps_displacement(control_points, source_points, size, align_corners):
    """The thin-plate interpolant of ``source - control`` at the output pixel centres.

    ``[B, *size, 2]`` float64, normalised. ``tps_grid`` is the identity grid
    plus this; the "tps" family warps by it directly, so that source points
    equal to the control points give a zero displacement, hence exactly the
    identity.
    """
    c, s = _tps_points(control_points, source_points)
    coefficients = tps_coefficients(c, s - c)                          # [B, N + 3, 2]
    height, width = size
    xs = pixel_centers(width, align_corners, tf.float64)
    ys = pixel_centers(height, align_corners, tf.float64)
    points = tf.reshape(tf.stack(tf.meshgrid(xs, ys), axis=-1), [-1, 2])   # [H * W, 2]
    if c.shape.rank == 3:
        points = tf.broadcast_to(points, tf.concat([tf.shape(c)[:1], tf.shape(points)], 0))
    moved = tf.matmul(_tps_features(points, c), coefficients)             # [B, H * W, 2]
    return tf.reshape(moved, tf.stack([-1, height, width, 2]))


def tps_grid(control_points: TensorLike, source_points: TensorLike, size: Size, *,
             align_corners: bool = False) -> tf.Tensor:
    """Sampling grid of the thin-plate spline that sends control points to source points.

    The unique thin-plate interpolant (kernel ``r^2 log r^2`` plus an affine
    part, see :func:`tps_coefficients`) evaluated at the output pixel
    centres: each control point (output, normalised) is sent to its source
    point (input, normalised), and the warp bends as little as possible in
    between. Affine point sets give ``affine_grid``'s grid (no bending).
    The grid feeds :func:`grid_sample`; for the STN layer use
    ``transform_family("tps", control_points=...)``.

    Args:
      control_points: ``[N, 2]`` or ``[B, N, 2]`` normalised (x, y) in the
        output, e.g. ``control_point_lattice(4)``.
      source_points: ``[B, N, 2]`` normalised (x, y) in the input.
      size: ``(out_height, out_width)``.
      align_corners: the convention of the normalised coordinates.

    Returns:
      ``[B, out_height, out_width, 2]`` normalised (x, y), in the dtype of
      ``source_points`` (computed in float64: the weights of close control
      points are large and cancel, which float32 would not survive).

    Example:
      >>> c = control_point_lattice(3)
      >>> grid = tps_grid(c, c[None], (4, 5))   # source = control: the identity
      >>> bool(tf.reduce_all(grid == affine_grid(identity_theta(1), (4, 5))))
      True
    """
    align_corners = check_bool(align_corners, name="align_corners")
    size = check_size(size, name="size", required=True)
    out_dtype = as_float_tensor(source_points, name="source_points", allow_bool=False).dtype
    moved = _tps_displacement(control_points, source_points, size, align_corners)
    identity = tf.stack(tf.meshgrid(pixel_centers(size[1], align_corners, tf.float64),
                                    pixel_centers(size[0], align_corners, tf.float64)), axis=-1)
    return tf.cast(identity + moved, out_dtype)


# The "tps" family's constant maps, computed once per (control points, output
# size, convention): NumPy float64 [H * W, N], keyed by the points' bytes and
# shape (an array is not hashable) with the size and align_corners.
_TPS_LINEAR_MAPS: dict = {}


def _tps_linear_map(points, size, align_corners):
    """NumPy float64 ``[H * W, N]``: the displacement at the output pixel
    centres per unit of each source point's offset from its control point."""
    key = (points.tobytes(), points.shape, tuple(size), bool(align_corners))
    if key not in _TPS_LINEAR_MAPS:
        with tf.init_scope():   # constants: computed eagerly once, also when traced
            c = tf.constant(points, tf.float64)
            n = points.shape[0]
            unit = tf.concat([tf.eye(n, dtype=tf.float64), tf.zeros([3, n], tf.float64)], 0)
            inverse = tf.linalg.solve(_tps_system(c), unit)               # [N + 3, N]
            xs = pixel_centers(size[1], align_corners, tf.float64)
            ys = pixel_centers(size[0], align_corners, tf.float64)
            grid = tf.reshape(tf.stack(tf.meshgrid(xs, ys), axis=-1), [-1, 2])
            _TPS_LINEAR_MAPS[key] = tf.matmul(_tps_features(grid, c), inverse).numpy()
    return _TPS_LINEAR_MAPS[key]


# --------------------------------------------------------------------------
# Transform families by name (what the layers take)
# --------------------------------------------------------------------------

class TransformFamily:
    """A family of transforms as a localisation network predicts it.

    ``theta(params)`` maps ``[B, num_params]`` parameters to the transform
    (what :func:`spatial_transformer_network` takes, or the source points of
    a thin-plate spline); ``identity_params`` are the parameters of the
    identity, the starting point of a localisation network's last layer;
    ``warp(inputs, theta, ...)`` applies a transform of the family. Get one
    with :func:`transform_family`.

    Example:
      >>> family = transform_family("attention")
      >>> family.num_params, family.identity_params
      (3, (1.0, 0.0, 0.0))
    """

    def __init__(self, name: str, ndim: int, num_params: int, identity_params: Sequence[float],
                 theta, warp=None):
        self.name = name
        self.ndim = ndim
        self.num_params = num_params
        self.identity_params = tuple(float(v) for v in identity_params)
        self._theta = theta
        self._warp = warp or spatial_transformer_network

    def theta(self, params: TensorLike) -> tf.Tensor:
        """``params`` ``[B, num_params]`` -> this family's transform."""
        return self._theta(params)

    def warp(self, inputs: TensorLike, theta: TensorLike, out_dims: Optional[Size] = None, *,
             align_corners: bool = False, padding_mode: PaddingMode = "zeros",
             interpolation: Interpolation = "bilinear") -> tf.Tensor:
        """Warps ``inputs`` by a transform ``theta`` of this family."""
        return self._warp(inputs, theta, out_dims, align_corners=align_corners,
                          padding_mode=padding_mode, interpolation=interpolation)

    def __repr__(self):
        return f"TransformFamily({self.name!r}, ndim={self.ndim}, num_params={self.num_params})"


def tps_control_points(control_points: Union[int, Sequence[int], TensorLike]
                       ) -> Union[int, Tuple[int, int], np.ndarray]:
    """The "tps" family's control points, checked, in the form they were given.

    The one reading of the three forms: an int k (a k x k lattice of
    :func:`control_point_lattice`), a pair of ints ``(rows, cols)``, or an
    ``[N, 2]`` array of N >= 3 normalised (x, y) output points, known when
    the layer is built (a constant, not a computed tensor). Returns an int,
    a tuple or a float64 NumPy array ``[N, 2]``; :func:`transform_family`
    and the shells (which keep the form in their config) read it here.

    Example:
      >>> tps_control_points(np.int64(3)), tps_control_points([2, 3])
      (3, (2, 3))
      >>> tps_control_points([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).shape
      (3, 2)
    """
    if isinstance(control_points, (int, np.integer)) and not isinstance(control_points, bool):
        _lattice(control_points)   # at least 3 points
        return int(control_points)
    if isinstance(control_points, (tuple, list)) and len(control_points) == 2 and \
            all(isinstance(v, (int, np.integer)) for v in control_points):
        _lattice(*control_points)  # positive rows and cols (not bools), at least 3 points
        return int(control_points[0]), int(control_points[1])
    points = tf.get_static_value(
        as_float_tensor(control_points, name="control_points", allow_bool=False))
    if points is None:
        raise ValueError("control_points of the tps family must be known when the layer "
                         "is built (a constant, not a computed tensor)")
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[-1] != 2 or len(points) < 3:
        raise ValueError("control_points must be an int k (k x k lattice), (rows, cols) or "
                         f"an [N, 2] array of N >= 3 normalised (x, y); got shape {points.shape}")
    return points


def _tps_family(control_points):
    """The "tps" family: theta is the source points ``[B, N, 2]`` of fixed control points."""
    spec = tps_control_points(control_points)
    points = spec if isinstance(spec, np.ndarray) else _lattice(*np.atleast_1d(spec))
    n = len(points)

    def theta(params):
        params, _ = _params(params, "params", {2: 2 * n}, 2)
        return tf.reshape(params, [-1, n, 2])

    def warp_by_tps(inputs, source_points, out_dims=None, **sampling):
        image, _ = _check_image(inputs, "inputs")
        size = check_size(out_dims, name="out_dims") or spatial_convention.shape_list(image)[1:3]
        dtype = _compute_dtype(image.dtype)
        if all(isinstance(s, int) for s in size):
            # The interpolant is linear in the source points: with the control
            # points and the size fixed, displacement = M (source - control)
            # with a constant M [H * W, N]. No linear solve at run time (TFLite
            # has none), one matmul.
            source = tf.cast(as_float_tensor(source_points, name="source_points",
                                             allow_bool=False), dtype)
            m = tf.constant(_tps_linear_map(points, tuple(size), sampling["align_corners"]), dtype)
            moved = tf.tensordot(m, source - tf.constant(points, dtype), [[1], [1]])  # [HW, B, 2]
            moved = tf.reshape(tf.transpose(moved, [1, 0, 2]), [-1, size[0], size[1], 2])
        else:
            moved = _tps_displacement(points, source_points, size, sampling["align_corners"])
        return warp(image, tf.cast(moved, dtype), units="normalized", **sampling)

    family = TransformFamily("tps", 2, 2 * n, points.ravel(), theta, warp_by_tps)
    family.control_points = points   # [N, 2] NumPy, normalised (x, y) in the output
    return family


def _matrix_families(name, theta, num_params, identity):
    """``{ndim: family}`` for ndim 2 and 3 of a matrix-valued family."""
    return {n: TransformFamily(name, n, num_params(n), identity(n), functools.partial(theta, ndim=n))
            for n in (2, 3)}


# name -> {number of spatial dimensions: family}
TRANSFORMS = {
    "affine": _matrix_families("affine", affine_theta, lambda n: n * (n + 1),
                               lambda n: np.eye(n, n + 1).ravel()),
    "attention": _matrix_families("attention", attention_theta, lambda n: n + 1,
                                  lambda n: (1.0,) + (0.0,) * n),
    "similarity": _matrix_families("similarity", similarity_theta, lambda n: 1 + n * (n + 1) // 2,
                                   lambda n: (1.0,) + (0.0,) * (n * (n + 1) // 2)),
    "diffeomorphic": _matrix_families("diffeomorphic", affine_diffeomorphic_theta,
                                      lambda n: n * (n + 1), lambda n: (0.0,) * (n * (n + 1))),
    "projective": _matrix_families("projective", projective_theta, lambda n: (n + 1) ** 2 - 1,
                                   lambda n: np.eye(n + 1).ravel()[:-1]),
    "tps": {2: _tps_family(4)},   # a 4 x 4 lattice; transform_family chooses others
}


def transform_family(transform: str = "affine", ndim: int = 2, *,
                     constraints: Optional[AffineWarpConstraints] = None,
                     control_points=None) -> TransformFamily:
    """The family named ``transform`` (a key of ``TRANSFORMS``) in ``ndim`` dimensions.

    Args:
      transform: "affine", "attention" (scale + translation), "similarity"
        (scale, rotation, translation), "diffeomorphic" (expm of the affine
        generator), "projective" or "tps" (thin-plate spline, 2-D).
      ndim: 2 for images, 3 for volumes.
      constraints: an ``AffineWarpConstraints`` fixing some entries of an
        affine transform (``transform="affine"`` only); the parameters are
        then the free entries.
      control_points: for "tps": an int k (a k x k lattice, default 4),
        ``(rows, cols)``, or an ``[N, 2]`` array of normalised (x, y).

    Example:
      >>> transform_family("affine", 3).num_params
      12
      >>> transform_family("tps", control_points=(2, 3)).num_params
      12
    """
    check_option(transform, name="transform", allowed=tuple(TRANSFORMS))
    families = TRANSFORMS[transform]
    if isinstance(ndim, bool) or ndim not in families:
        dims = " or ".join(f"{n}-D" for n in sorted(families))
        raise ValueError(f"transform={transform!r} is {dims}"
                         f"{' only' if len(families) == 1 else ''}; got ndim={ndim!r}")
    if constraints is not None and transform != "affine":
        raise ValueError(f"constraints only apply to transform='affine'; got {transform!r}")
    if control_points is not None:
        if transform != "tps":
            raise ValueError(f"control_points only apply to transform='tps'; got {transform!r}")
        return _tps_family(control_points)
    if constraints is None:
        return families[ndim]
    if not isinstance(constraints, AffineWarpConstraints):
        raise TypeError(f"constraints must be an stn.AffineWarpConstraints; got {constraints!r}")
    if constraints.ndim != ndim:
        raise ValueError(f"constraints are {constraints.ndim}-D but ndim={ndim}")
    return TransformFamily("affine", ndim, constraints.num_free_params,
                           constraints.identity_params, constraints.theta)


def transform_theta(transform: str, params: TensorLike, ndim: int = 2) -> tf.Tensor:
    """theta from ``params`` ``[B, k]`` for a transform family named in ``TRANSFORMS``.

    Example:
      >>> transform_theta("attention", [[1.0, 0.0, 0.0]]).shape
      TensorShape([1, 2, 3])
    """
    return transform_family(transform, ndim).theta(params)
