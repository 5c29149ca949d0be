"""Spatial Transformer Networks for TensorFlow: grids, one sampler, transforms.

Jaderberg, Simonyan, Zisserman and Kavukcuoglu, "Spatial Transformer
Networks", NeurIPS 2015 (arXiv:1506.02025).

A spatial transformer warps an image or feature map ``[B, H, W, C]`` by a
transform ``theta`` that maps *output* coordinates to *input* coordinates:
``out[b, i, j] = img[b, T_b(p_ij)]``, sampled with interpolation. Everything
here is differentiable with respect to the image and to ``theta`` (or the
sampling grid), so ``theta`` can be predicted by a localisation network.

Coordinate convention (the one convention of this project, and PyTorch's
``affine_grid`` / ``grid_sample``): normalised coordinates run from -1 to 1
across the image, x along the width, y along the height, listed (x, y).

* ``align_corners=False`` (default): -1 and 1 are the outer edges of the
  border pixels; pixel ``i`` of ``n`` has centre ``(2i + 1) / n - 1``. This
  is DSNT's convention, so a ``dsnt`` output feeds an STN translation as is.
* ``align_corners=True``: -1 and 1 are the centres of the corner pixels;
  pixel ``i`` of ``n`` has centre ``2i / (n - 1) - 1`` (0 when ``n == 1``).

Results agree with ``torch.nn.functional.affine_grid`` + ``grid_sample``
(forward and gradients, every ``align_corners``, ``padding_mode`` and
``interpolation``) to float32 round-off, and the identity transform returns
the input exactly, for every size.

The sampler runs as an XLA-compiled TensorFlow function (CPU, GPU and TPU
alike); set the environment variable ``SPATIAL_JIT=0`` (or ``STN_JIT=0``)
before import, or call ``set_jit(False)``, to run it as ordinary TensorFlow
ops instead. Both give the same numbers.

Only TensorFlow, NumPy and the project's ``spatial_convention.py`` (the
convention, the argument rules and the XLA switch as small functions,
shared with ``dsnt`` and ``coordconv``) are imported: copy the two files
into any TF2 program or ``tf.compat.v1`` graph.
"""
import numpy as np
import tensorflow as tf

import spatial_convention
from spatial_convention import as_float_tensor, check_bool, check_option, check_rank, check_size

__all__ = [
    "PADDING_MODES", "INTERPOLATIONS", "TRANSFORMS",
    "spatial_transformer_network", "grid_sample", "affine_grid",
    "affine_grid_generator", "bilinear_sampler",
    "pixel_to_normalized", "normalized_to_pixel", "pixel_centers",
    "identity_theta", "affine_theta", "attention_theta", "rotation_theta",
    "similarity_theta", "affine_diffeomorphic_theta", "projective_theta",
    "invert_affine", "compose_affine", "AffineWarpConstraints",
    "TransformFamily", "transform_family", "transform_theta", "set_jit",
    "control_point_lattice", "tps_coefficients", "tps_grid",
]

PADDING_MODES = ("zeros", "border", "reflection")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")

# Cubic convolution constant used by PyTorch (and OpenCV) for "bicubic".
_CUBIC_A = -0.75

# The image gradient's scatter-add is split into this many independent
# scatters over the batch (see _scatter_add_per_image).
_SCATTER_PARTS = 4


def set_jit(enabled):
    """Chooses whether the sampler runs XLA-compiled (default) or as plain ops.

    Both give the same numbers; plain ops are there for platforms without
    XLA. Takes effect for calls traced after it. One switch for the project:
    the same as ``dsnt.set_jit`` and ``spatial_convention.set_jit``.
    """
    spatial_convention.set_jit(enabled)


# --------------------------------------------------------------------------
# Argument rules (one place for the project: spatial_convention.py)
# --------------------------------------------------------------------------

_compute_dtype = spatial_convention.compute_dtype


def _static_or_dynamic_shape(x):
    static = x.shape.as_list()
    dynamic = tf.unstack(tf.shape(x)) if any(s is None for s in static) else None
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


# --------------------------------------------------------------------------
# The coordinate convention (one helper for each direction)
# --------------------------------------------------------------------------

_half_extent = spatial_convention.half_extent
_centre = spatial_convention.centre


def normalized_to_pixel(coord, size, align_corners=False):
    """Maps normalised coordinates in [-1, 1] to pixel coordinates.

    Pixel coordinates put pixel ``i``'s centre at ``i`` (0-based).

    Args:
      coord: float tensor of any shape, normalised coordinates along one axis.
      size: number of pixels along that axis (int or int scalar tensor).
      align_corners: the convention (see the module docstring).

    Returns:
      A tensor like ``coord``: ``coord * h + (size - 1) / 2`` with
      ``h = size / 2`` (``align_corners=False``) or ``(size - 1) / 2``.

    Example:
      >>> normalized_to_pixel(tf.constant([-1., 0., 1.]), 4)   # [-0.5, 1.5, 3.5]
    """
    return spatial_convention.normalized_to_pixel(as_float_tensor(coord, name="coord", allow_bool=False), size, align_corners)


def pixel_to_normalized(coord, size, align_corners=False):
    """Maps pixel coordinates (pixel ``i`` centred at ``i``) to normalised ones.

    The inverse of ``normalized_to_pixel``. With ``align_corners=True`` and
    ``size == 1`` every coordinate maps to 0.

    Example:
      >>> pixel_to_normalized(tf.constant([0., 3.]), 4)   # [-0.75, 0.75]
    """
    return spatial_convention.pixel_to_normalized(as_float_tensor(coord, name="coord", allow_bool=False), size, align_corners)


def pixel_centers(size, align_corners=False, dtype=tf.float32):
    """Normalised coordinates of the centres of ``size`` pixels, shape ``[size]``.

    ``align_corners=False``: ``(2i + 1) / n - 1`` (DSNT's convention);
    ``align_corners=True``: ``2i / (n - 1) - 1`` (``[0.]`` for one pixel).

    Example:
      >>> pixel_centers(4)   # [-0.75, -0.25, 0.25, 0.75]
    """
    return spatial_convention.pixel_centers(size, align_corners, dtype)


# --------------------------------------------------------------------------
# Transforms -> sampling coordinates
# --------------------------------------------------------------------------

def _theta_matrix(theta, name="theta"):
    """Returns (matrix, is_projective): [B, 2, 3] affine or [B, 3, 3] projective."""
    theta = as_float_tensor(theta, name=name, allow_bool=False)
    shape = theta.shape
    if shape.rank == 2 and shape[-1] in (6, 8):
        projective = shape[-1] == 8
        if projective:
            ones = tf.ones_like(theta[:, :1])
            return tf.reshape(tf.concat([theta, ones], axis=1), [-1, 3, 3]), True
        return tf.reshape(theta, [-1, 2, 3]), False
    if shape.rank == 3 and tuple(shape[1:]) in ((2, 3), (3, 3)):
        return theta, shape[1] == 3
    if shape.rank in (2, 3) and None in shape[1:]:
        return _dynamic_homography(theta, name), True
    raise ValueError(
        f"{name} must have shape [B, 6] or [B, 2, 3] (affine) or [B, 8] or "
        f"[B, 3, 3] (projective); got {shape}")


def _dynamic_homography(theta, name):
    """[B, 6|8] or [B, 2|3, 3] known only at run time -> [B, 3, 3].

    An affine theta gets the row (0, 0, 1): its homogeneous divide is by
    exactly 1, so the numbers are those of the affine path.
    """
    batch = tf.shape(theta)[0]
    if theta.shape.rank == 2:
        count = tf.shape(theta)[1]
        check = tf.debugging.assert_equal(
            tf.reduce_any(tf.equal(count, [6, 8])), True,
            message=f"{name} must have shape [B, 6] or [B, 8] (or [B, 2, 3] / [B, 3, 3])")
        with tf.control_dependencies([check]):
            tail = tf.cond(tf.equal(count, 6),
                           lambda: tf.tile(tf.constant([[0.0, 0.0, 1.0]], theta.dtype), [batch, 1]),
                           lambda: tf.ones([batch, 1], theta.dtype))
        return tf.reshape(tf.concat([theta, tail], axis=1), [-1, 3, 3])
    flat = tf.reshape(theta, [batch, -1])
    rows = tf.shape(theta)[1]
    check = tf.debugging.assert_equal(
        tf.logical_and(tf.reduce_any(tf.equal(rows, [2, 3])), tf.equal(tf.shape(theta)[2], 3)),
        True, message=f"{name} must have shape [B, 2, 3] or [B, 3, 3] (or [B, 6] / [B, 8])")
    with tf.control_dependencies([check]):
        tail = tf.cond(tf.equal(rows, 2),
                       lambda: tf.tile(tf.constant([[0.0, 0.0, 1.0]], theta.dtype), [batch, 1]),
                       lambda: tf.zeros([batch, 0], theta.dtype))
    return tf.reshape(tf.concat([flat, tail], axis=1), [-1, 3, 3])


def _transform_points(matrix, projective, out_size, align_corners, in_half, in_centre):
    """Applies theta to the output pixel centres; returns (x, y), [B, Ho, Wo].

    The result is ``in_half * T(p) + in_centre``: normalised coordinates when
    ``in_half = 1, in_centre = 0``, input pixel coordinates when they are the
    input's half extent and centre. The arithmetic is arranged so that the
    identity transform between equal sizes gives exact pixel indices:
    output offsets from the centre are half-integers (exact) and the scale
    ``in_half / out_half`` is exactly 1.
    """
    dtype = matrix.dtype
    out_h, out_w = out_size
    # Offsets of output pixel centres from the output centre, in pixels (exact).
    u = tf.range(out_w, dtype=dtype) - _centre(out_w, dtype)
    v = tf.range(out_h, dtype=dtype) - _centre(out_h, dtype)
    out_half_x = _half_extent(out_w, align_corners, dtype)
    out_half_y = _half_extent(out_h, align_corners, dtype)
    in_half_x, in_half_y = in_half
    u = u[None, None, :]
    v = v[None, :, None]
    t = matrix[:, :, :, None, None]  # [B, r, c, 1, 1]

    def row(r, scale_x, scale_y, offset_scale):
        # scale / out_half folded into one factor per axis (0 for size-1 grids).
        return (t[:, r, 0] * tf.math.divide_no_nan(scale_x, out_half_x) * u
                + t[:, r, 1] * tf.math.divide_no_nan(scale_y, out_half_y) * v
                + t[:, r, 2] * offset_scale)

    x = row(0, in_half_x, in_half_x, in_half_x)
    y = row(1, in_half_y, in_half_y, in_half_y)
    if projective:
        one = tf.ones([], dtype)
        w = row(2, one, one, one)
        x = x / w
        y = y / w
    return x + in_centre[0], y + in_centre[1]


def affine_grid(theta, size, *, align_corners=False):
    """Sampling grid for ``grid_sample`` from transforms (PyTorch's ``affine_grid``).

    Args:
      theta: ``[B, 2, 3]`` or ``[B, 6]`` affine, or ``[B, 3, 3]`` or ``[B, 8]``
        projective (homogeneous, ``h22 = 1`` for the 8-vector), mapping output
        normalised (x, y) to input normalised (x, y). Float dtypes are kept
        (half types are computed in float32 and cast back).
      size: ``(out_height, out_width)``, positive ints or int scalars.
      align_corners: the coordinate convention (module docstring).

    Returns:
      ``[B, out_height, out_width, 2]`` normalised (x, y) input coordinates,
      in ``theta``'s dtype.

    Example:
      >>> theta = identity_theta(2)
      >>> affine_grid(theta, (3, 4)).shape   # [2, 3, 4, 2]
    """
    align_corners = check_bool(align_corners, name="align_corners")
    size = check_size(size, name="size")
    if size is None:
        raise ValueError("size must be (height, width); got None")
    matrix, projective = _theta_matrix(theta)
    out_dtype = matrix.dtype
    matrix = tf.cast(matrix, _compute_dtype(out_dtype))
    one = tf.ones([], matrix.dtype)
    zero = tf.zeros([], matrix.dtype)
    x, y = _transform_points(matrix, projective, size, align_corners, (one, one), (zero, zero))
    return tf.cast(tf.stack([x, y], axis=-1), out_dtype)


# --------------------------------------------------------------------------
# Padding modes (PyTorch's compute_coordinates, gradients included)
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
# The sampler: pixel coordinates -> values
# --------------------------------------------------------------------------

def _flat_index(b, y, x, padded_h, padded_w):
    """Row of pixel (b, y, x) in an image flattened to [B * Hp * Wp, C]."""
    return (b * padded_h + y) * padded_w + x


def _batch_index(x):
    return tf.reshape(tf.range(tf.shape(x)[0]), [-1, 1, 1])


def _clip_int(i, low, high):
    return tf.minimum(tf.maximum(i, low), high)


def _scatter_add_per_image(weights, values, rows, shape):
    """Scatter-add of ``weights[..., k] * values`` at flat ``rows[..., k]``.

    weights ``[B, ..., K]``, values ``[B, ..., C]``, rows ``[B, ..., K]``
    indexing ``[B * H * W]``; returns ``shape`` ``[B, H, W, C]``.

    Done as ``_SCATTER_PARTS`` independent scatters over slices of the batch
    (each image's rows stay inside its own block): XLA runs a scatter as one
    serial loop on CPU but runs independent ones side by side. Each part
    forms its own updates, so no slice of a large tensor is copied.

    Rows of 4 k + 3 channels get one zero channel for the scatter: XLA's CPU
    scatter of 4.2M rows (16x256x256 bilinear) took 15.8 ms with 3 channels
    and 12.1 ms with 4, 28.0 ms with 7 and 25.2 ms with 8. Padding other
    counts lost (1 -> 4 took 2.4x as long, 2 -> 4 1.4x, 5 -> 8 1.1x) or
    gained little for two more channels (6 -> 8 0.94x).
    """
    batch = shape[0]
    per_image = shape[1] * shape[2]
    c = values.shape[-1]
    extra = 1 if c is not None and c % 4 == 3 else 0
    if extra:
        values = tf.concat([values, tf.zeros_like(values[..., :1])], axis=-1)
    bounds = [batch * i // _SCATTER_PARTS for i in range(_SCATTER_PARTS + 1)]
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        updates = weights[start:stop, ..., None] * values[start:stop, ..., None, :]
        parts.append(tf.math.unsorted_segment_sum(
            updates, rows[start:stop] - start * per_image, (stop - start) * per_image))
    summed = tf.concat(parts, 0)
    return tf.reshape(summed[:, :c] if extra else summed, shape)


def _pixel_rows(img):
    """``[B, H, W, C]`` -> ``[B * H * W, C]`` (C static when known)."""
    c = img.shape[-1] if img.shape[-1] is not None else tf.shape(img)[-1]
    return tf.reshape(img, [-1, c])


def _weighted_taps(img, rows, weights):
    """``sum_k weights[..., k] * img[rows[..., k]]``: the one weighted gather.

    img: ``[B, H, W, C]`` viewed as ``[B * H * W, C]``; rows: ``[B, ..., K]``
    flat pixel indices (each inside its own image's block); weights:
    ``[B, ..., K]`` in img's dtype, K static (4 bilinear corners, 1 nearest
    pixel, 16 bicubic taps). Returns ``[B, ..., C]``.

    The sum is unrolled: XLA compiles it to one loop, where a reduction over
    the tap axis ran 10-18x slower than PyTorch's forward when no gradient
    was taken. Its gradient is :func:`_weighted_taps_grad`.
    """
    taps = tf.gather(_pixel_rows(img), rows)   # [B, ..., K, C]
    out = taps[..., 0, :] * weights[..., 0:1]
    for k in range(1, rows.shape[-1]):
        out += taps[..., k, :] * weights[..., k:k + 1]
    return out


def _weighted_taps_grad(img, rows, weights, g):
    """Gradients of :func:`_weighted_taps` to img and weights, upstream g.

    The taps are gathered again rather than kept from the forward pass:
    nothing of size ``[B, ..., K, C]`` lives between the passes.
    """
    d_img = _scatter_add_per_image(weights, g, rows, tf.shape(img))
    taps = tf.gather(_pixel_rows(img), rows)
    return d_img, tf.reduce_sum(taps * g[..., None, :], axis=-1)


def _interpolate(img, rows, weights):
    """:func:`_weighted_taps` with its gradient written out (nearest, bicubic)."""
    @tf.custom_gradient
    def interpolate(img, weights):
        def grad(g):
            return _weighted_taps_grad(img, rows, weights, g)

        return _weighted_taps(img, rows, weights), grad

    return interpolate(img, weights)


def _sample_bilinear(img, x, y, dims):
    """Bilinear interpolation at pixel coordinates; zero outside the image.

    The image is padded with zeros (1 pixel before, 2 after), coordinates are
    clamped to [-1, n], which keeps every corner inside the padded image and
    changes no value (outside that band all four corners are padding).

    Every step from ``x``, ``y`` to the corner indices and the weights is
    exact (clamp, floor, subtraction of the floor), so however a compiler
    duplicates or fuses them, indices and weights agree.

    The gradient to ``x``, ``y`` is written out too: autodiff of the weights
    kept 7 more ``[B, Ho, Wo]`` tensors and copies of the weights and the
    padded image between the passes. Without them a step takes 0.89-0.92x
    the time at 32x128x128x16 and 16x256x256x3 (0.98x at 64x32x32x64).
    """
    _, h, w, _ = dims
    hf = tf.cast(h, x.dtype)
    wf = tf.cast(w, x.dtype)
    # Corners (0,0), (0,1), (1,0), (1,1) along a last axis of 4, built by
    # broadcasting, not stacking: XLA's CPU concatenation is several times
    # slower than a broadcast.
    right = tf.constant([0.0, 1.0, 0.0, 1.0], x.dtype)
    below = tf.constant([0.0, 0.0, 1.0, 1.0], x.dtype)

    @tf.custom_gradient
    def sample(img, x, y):
        xc = tf.clip_by_value(x, -1.0, wf)
        yc = tf.clip_by_value(y, -1.0, hf)
        x0f = tf.floor(xc)
        y0f = tf.floor(yc)
        wx = xc - x0f
        wy = yc - y0f
        # (1 - wx or wx) * (1 - wy or wy) per corner
        weights = tf.cast(((1.0 - right) + (2.0 * right - 1.0) * wx[..., None])
                          * ((1.0 - below) + (2.0 * below - 1.0) * wy[..., None]), img.dtype)
        # +1: position in the padded image. The integer clip only matters for
        # NaN coordinates, whose integer cast is undefined: never read outside.
        x0 = _clip_int(tf.cast(x0f, tf.int32) + 1, 0, w + 1)
        y0 = _clip_int(tf.cast(y0f, tf.int32) + 1, 0, h + 1)
        i00 = _flat_index(_batch_index(x), y0, x0, h + 3, w + 3)
        rows = i00[..., None] + tf.stack([0, 1, w + 3, w + 4])
        padded = tf.pad(img, [[0, 0], [1, 2], [1, 2], [0, 0]])

        def grad(g):
            d_padded, d_weights = _weighted_taps_grad(padded, rows, weights, g)
            d = tf.unstack(tf.cast(d_weights, x.dtype), axis=-1)
            d_x = (1.0 - wy) * (d[1] - d[0]) + wy * (d[3] - d[2])
            d_y = (1.0 - wx) * (d[2] - d[0]) + wx * (d[3] - d[1])
            # clip_by_value's gradient: none strictly outside [-1, n].
            d_x = tf.where((x < -1.0) | (x > wf), tf.zeros_like(d_x), d_x)
            d_y = tf.where((y < -1.0) | (y > hf), tf.zeros_like(d_y), d_y)
            return d_padded[:, 1:h + 1, 1:w + 1, :], d_x, d_y

        return _weighted_taps(padded, rows, weights), grad

    return sample(img, x, y)


def _gather_taps(img, xs, ys, dims, weights):
    """Sums weights[k] * img[ys[k], xs[k]] over taps k; taps outside read 0.

    xs, ys: integer tap positions [B, Ho, Wo, K]; weights: [B, Ho, Wo, K].
    """
    _, h, w, _ = dims
    valid = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    rows = _flat_index(_batch_index(xs)[..., None],
                       _clip_int(ys, 0, h - 1), _clip_int(xs, 0, w - 1), h, w)
    weights = tf.cast(weights, img.dtype)
    # 0 * w rather than 0: a NaN weight (NaN coordinate) stays NaN.
    weights = tf.where(valid, weights, 0.0 * weights)
    return _interpolate(img, rows, weights)


def _int_coord(coord):
    """Float pixel coordinate (integer-valued) -> int32, safe for NaN / huge values."""
    big = 2.0 ** 30
    coord = tf.where(tf.math.is_nan(coord), -big * tf.ones_like(coord), coord)
    return tf.cast(tf.clip_by_value(coord, -big, big), tf.int32)


def _sample_nearest(img, x, y, dims):
    """Nearest pixel (round half to even, as PyTorch); zero outside."""
    xi = _int_coord(tf.stop_gradient(tf.round(x)))[..., None]
    yi = _int_coord(tf.stop_gradient(tf.round(y)))[..., None]
    # Weight 1 with a zero (not missing) gradient to the coordinates, as
    # PyTorch: optimisers then see zeros rather than None.
    never = tf.zeros_like(x, dtype=tf.bool)
    ones = 1.0 + tf.where(never, x + y, tf.zeros_like(x))
    # A NaN coordinate gives NaN, as with the other interpolations (rounding
    # alone would silently read the padding).
    nan = tf.math.is_nan(x) | tf.math.is_nan(y)
    ones = tf.where(nan, tf.fill(tf.shape(ones), tf.constant(np.nan, ones.dtype)), ones)
    return _gather_taps(img, xi, yi, dims, ones[..., None])


def _cubic_weights(t):
    """Cubic convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 from floor."""
    a = _CUBIC_A

    def near(s):   # |s| <= 1
        return ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0

    def far(s):    # 1 < |s| < 2
        return ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a

    return tf.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def _sample_bicubic(img, x, y, dims, padding_mode, align_corners):
    """Bicubic interpolation; each of the 4x4 taps is mapped by padding_mode."""
    _, h, w, _ = dims

    def taps(coord, size):
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
        c0 = tf.floor(coord)
        t = coord - c0
        positions = c0[..., None] + tf.constant([-1.0, 0.0, 1.0, 2.0], coord.dtype)
        positions = tf.stop_gradient(_apply_padding(positions, size, padding_mode, align_corners))
        return _int_coord(positions), _cubic_weights(t)

    xs, wx = taps(x, w)
    ys, wy = taps(y, h)
    k = tf.shape(xs)[:-1]
    # 16 taps: row-major over (y tap, x tap).
    xs16 = tf.reshape(tf.tile(xs[..., None, :], [1, 1, 1, 4, 1]), tf.concat([k, [16]], 0))
    ys16 = tf.reshape(tf.tile(ys[..., :, None], [1, 1, 1, 1, 4]), tf.concat([k, [16]], 0))
    w16 = tf.reshape(wy[..., :, None] * wx[..., None, :], tf.concat([k, [16]], 0))
    return _gather_taps(img, xs16, ys16, dims, w16)


def _sample_pixels(img, x, y, padding_mode, interpolation, align_corners):
    """The one sampler: img [B, H, W, C] at pixel coordinates x, y [B, Ho, Wo].

    Returns [B, Ho, Wo, C] in img's dtype. ``x``/``y`` follow the pixel
    convention (pixel i centred at i); align_corners only selects the
    reflection lines.
    """
    dims = _static_or_dynamic_shape(img)
    _, h, w, _ = dims
    if interpolation == "bicubic":
        return _sample_bicubic(img, x, y, dims, padding_mode, align_corners)
    x = _apply_padding(x, w, padding_mode, align_corners)
    y = _apply_padding(y, h, padding_mode, align_corners)
    if interpolation == "nearest":
        return _sample_nearest(img, x, y, dims)
    return _sample_bilinear(img, x, y, dims)


def _grid_pixels(img, grid, align_corners):
    """Pixel coordinates (x, y) ``[B, Ho, Wo]`` of a normalised sampling grid."""
    cdtype = _compute_dtype(img.dtype, grid.dtype)
    grid = tf.cast(grid, cdtype)
    x = normalized_to_pixel(grid[..., 0], tf.shape(img)[2], align_corners)
    y = normalized_to_pixel(grid[..., 1], tf.shape(img)[1], align_corners)
    return x, y


def _transform_pixels(img, theta, out_size, projective, align_corners):
    """Pixel coordinates (x, y) ``[B, Ho, Wo]`` in ``img`` of theta's output grid."""
    cdtype = _compute_dtype(img.dtype, theta.dtype)
    theta = tf.cast(theta, cdtype)
    h = tf.shape(img)[1]
    w = tf.shape(img)[2]
    if out_size is None:
        out_size = (h, w)
    in_half = (_half_extent(w, align_corners, cdtype), _half_extent(h, align_corners, cdtype))
    in_centre = (_centre(w, cdtype), _centre(h, cdtype))
    return _transform_points(theta, projective, out_size, align_corners, in_half, in_centre)


def _warp(img, pixels_fn, coords_arg, coords_options, padding_mode, interpolation,
          align_corners):
    """Coordinates, then the sampler: two compiled functions, on purpose.

    The sampler gets the coordinates as computed values. Inside one XLA
    computation the coordinate arithmetic would be recomputed in every
    fusion that uses it, and a multiply-add contracted to an FMA in one
    fusion but not in another can put the same coordinate on either side of
    an integer for the corner index and for its weight: a whole pixel wrong
    (seen once in ~500k output pixels at 32x128x128x16 before this split).
    From its inputs on, the sampler only rounds exactly (clamp, floor,
    subtracting the floor), so its indices and weights always agree. (Inside
    a caller's own XLA function both are inlined into one computation
    again; tests/test_stn.py checks that case too.)
    """
    x, y = spatial_convention.compiled(pixels_fn, img, coords_arg, **coords_options)
    return spatial_convention.compiled(_sample_pixels, img, x, y, padding_mode=padding_mode,
                                       interpolation=interpolation, align_corners=align_corners)


# --------------------------------------------------------------------------
# Public API: sampling
# --------------------------------------------------------------------------

def grid_sample(img, grid, *, align_corners=False, padding_mode="zeros",
                interpolation="bilinear"):
    """Samples ``img`` at normalised (x, y) locations (PyTorch's ``grid_sample``).

    Args:
      img: ``[B, H, W, C]`` image or feature map (NHWC). Float dtypes are kept;
        integer images are cast to float32.
      grid: ``[B, Ho, Wo, 2]`` normalised (x, y) coordinates in the input,
        x along the width, y along the height (module docstring).
      align_corners: False: -1/1 are the image edges; True: the corner pixel
        centres.
      padding_mode: value outside the image: "zeros", "border" (nearest edge
        pixel) or "reflection" (mirror about the border).
      interpolation: "bilinear", "nearest" (round half to even) or "bicubic"
        (cubic convolution, A = -0.75).

    Returns:
      ``[B, Ho, Wo, C]`` in ``img``'s (float) dtype. Differentiable with
      respect to ``img`` and ``grid`` (the grid gradient is 0 for "nearest").
      Non-finite coordinates never read outside the image: a NaN coordinate
      gives NaN in that output pixel (every mode, so a diverging
      localisation network shows in the loss); +-inf is far outside (0 with
      "zeros", the edge pixel with "border", NaN with "reflection", which
      has no reflection of infinity). Other batch elements are unaffected.

    Example:
      >>> img = tf.random.normal([1, 8, 8, 3])
      >>> grid = affine_grid(identity_theta(1), (8, 8))
      >>> out = grid_sample(img, grid)          # == img
    """
    align_corners = check_bool(align_corners, name="align_corners")
    check_option(padding_mode, name="padding_mode", allowed=PADDING_MODES)
    check_option(interpolation, name="interpolation", allowed=INTERPOLATIONS)
    img = as_float_tensor(img, name="img")
    grid = as_float_tensor(grid, name="grid", allow_bool=False)
    check_rank(img, name="img", ranks=(4,), layout="[B, H, W, C]")
    check_rank(grid, name="grid", ranks=(4,), layout="[B, Ho, Wo, 2]")
    if grid.shape[-1] is not None and grid.shape[-1] != 2:
        raise ValueError(f"grid must have shape [B, Ho, Wo, 2] (x, y); got {grid.shape}")
    deps = spatial_convention.check_same_batch(img, grid, name="grid")
    return spatial_convention.with_assertions(deps, lambda: _warp(
        img, _grid_pixels, grid, dict(align_corners=align_corners), padding_mode, interpolation, align_corners))


def spatial_transformer_network(input_fmap, theta, out_dims=None, *, align_corners=False,
                                padding_mode="zeros", interpolation="bilinear"):
    """Warps ``input_fmap`` by ``theta``: the spatial transformer layer.

    ``out[b, i, j] = input_fmap[b, T_b(p_ij)]`` where ``p_ij`` is output pixel
    (i, j)'s centre in normalised coordinates and ``T_b`` is ``theta[b]``.
    Same numbers as ``grid_sample(input_fmap, affine_grid(theta, out_dims))``
    and as PyTorch's ``grid_sample(affine_grid(...))``, to float32 round-off;
    the identity transform returns the input exactly (any size, both
    conventions).

    Args:
      input_fmap: ``[B, H, W, C]`` image or feature map. Float dtypes are
        kept; integer images are cast to float32.
      theta: ``[B, 6]`` / ``[B, 2, 3]`` affine, or ``[B, 8]`` / ``[B, 3, 3]``
        projective, mapping output (x, y) to input (x, y), normalised.
        See ``identity_theta``, ``attention_theta``, ``rotation_theta``,
        ``affine_diffeomorphic_theta``, ``projective_theta``.
      out_dims: ``(out_height, out_width)``; default the input's (H, W).
        Up- or down-samples.
      align_corners, padding_mode, interpolation: as in ``grid_sample``.

    Returns:
      ``[B, out_height, out_width, C]``, in the input's (float) dtype.

    Example:
      >>> x = tf.random.normal([2, 200, 200, 3])
      >>> theta = tf.constant([[1., 0, 0, 0, 1., 0]] * 2)
      >>> y = spatial_transformer_network(x, theta)   # == x, exactly
      >>> crop = spatial_transformer_network(x, attention_theta([[0.5, 0., 0.]] * 2), (50, 50))
    """
    align_corners = check_bool(align_corners, name="align_corners")
    check_option(padding_mode, name="padding_mode", allowed=PADDING_MODES)
    check_option(interpolation, name="interpolation", allowed=INTERPOLATIONS)
    img = as_float_tensor(input_fmap, name="input_fmap")
    check_rank(img, name="input_fmap", ranks=(4,), layout="[B, H, W, C]")
    matrix, projective = _theta_matrix(theta)
    out_size = check_size(out_dims, name="out_dims")
    deps = spatial_convention.check_same_batch(img, matrix, name="theta")
    if out_size is None or all(isinstance(s, int) for s in out_size):
        # Static output size: the grid is generated inside XLA.
        fn = lambda: _warp(img, _transform_pixels, matrix,
                           dict(out_size=out_size, projective=projective,
                                align_corners=align_corners),
                           padding_mode, interpolation, align_corners)
    else:
        # Output size known only at run time (a tensor): grid generation
        # stays outside XLA, the sampling grid goes in.
        fn = lambda: grid_sample(
            img, affine_grid(matrix, out_size, align_corners=align_corners),
            align_corners=align_corners, padding_mode=padding_mode,
            interpolation=interpolation)
    return spatial_convention.with_assertions(deps, fn)


def affine_grid_generator(height, width, theta, *, align_corners=False):
    """The seed's grid generator: ``[B, 2, height, width]`` normalised (x, y).

    Kept for snippet compatibility with ``kevinzakka/spatial-transformer-network``;
    equals ``tf.transpose(affine_grid(theta, (height, width)), [0, 3, 1, 2])``.
    ``theta`` is ``[B, 2, 3]`` (or any form ``affine_grid`` accepts).

    Example:
      >>> grids = affine_grid_generator(32, 32, identity_theta(4))
      >>> out = bilinear_sampler(img, grids[:, 0], grids[:, 1])
    """
    grid = affine_grid(theta, (height, width), align_corners=align_corners)
    return tf.transpose(grid, [0, 3, 1, 2])


def bilinear_sampler(img, x, y, *, align_corners=False, padding_mode="zeros"):
    """The seed's sampler: ``img`` [B, H, W, C] at normalised ``x``, ``y`` [B, Ho, Wo].

    Kept for snippet compatibility; now exact (it is ``grid_sample`` with
    bilinear interpolation). Returns ``[B, Ho, Wo, C]``.
    """
    x = as_float_tensor(x, name="x", allow_bool=False)
    y = as_float_tensor(y, name="y", allow_bool=False)
    check_rank(x, name="x", ranks=(3,), layout="[B, Ho, Wo]")
    check_rank(y, name="y", ranks=(3,), layout="[B, Ho, Wo]")
    dtype = _compute_dtype(x.dtype, y.dtype)
    grid = tf.stack([tf.cast(x, dtype), tf.cast(y, dtype)], axis=-1)
    return grid_sample(img, grid, align_corners=align_corners, padding_mode=padding_mode,
                       interpolation="bilinear")


# --------------------------------------------------------------------------
# Transform parameterisations: params -> theta
# --------------------------------------------------------------------------

def _params(params, name, count):
    params = as_float_tensor(params, name=name, allow_bool=False)
    if params.shape.rank is not None and (params.shape.rank != 2 or params.shape[-1] not in (None, count)):
        raise ValueError(f"{name} must have shape [B, {count}]; got {params.shape}")
    if params.shape.rank is None or params.shape[-1] is None:
        check = tf.debugging.assert_equal(
            tf.shape(params)[-1], count, message=f"{name} must have shape [B, {count}]")
        with tf.control_dependencies([check]):
            params = tf.reshape(params, [-1, count])
    return params


def identity_theta(batch_size, dtype=tf.float32):
    """``[batch_size, 2, 3]`` identity transforms: ``[[1, 0, 0], [0, 1, 0]]``.

    Example:
      >>> spatial_transformer_network(x, identity_theta(tf.shape(x)[0]))   # == x
    """
    eye = tf.eye(2, 3, dtype=dtype)
    return tf.tile(eye[None], tf.stack([batch_size, 1, 1]))


def affine_theta(params):
    """General affine: ``params`` [B, 6] row-major -> theta [B, 2, 3].

    Identity parameters: ``(1, 0, 0, 0, 1, 0)``.
    """
    return tf.reshape(_params(params, "params", 6), [-1, 2, 3])


def attention_theta(params):
    """Attention (isotropic scale + translation), the seed README's constrained form.

    ``params`` [B, 3] = (s, tx, ty) -> ``[[s, 0, tx], [0, s, ty]]`` [B, 2, 3].
    ``s < 1`` zooms in on a window of half-size ``s`` centred at (tx, ty),
    in normalised units. Identity parameters: ``(1, 0, 0)``.

    Example:
      >>> theta = attention_theta([[0.5, 0.5, -0.5]])  # top-right quarter
    """
    params = _params(params, "params", 3)
    s, tx, ty = tf.unstack(params, axis=-1)
    zero = tf.zeros_like(s)
    return tf.reshape(tf.stack([s, zero, tx, zero, s, ty], axis=-1), [-1, 2, 3])


def similarity_theta(params):
    """Similarity (scale, rotation, translation).

    ``params`` [B, 4] = (s, angle, tx, ty) -> ``s * R(angle)`` with
    translation (tx, ty): ``[[s cos, -s sin, tx], [s sin, s cos, ty]]``.
    Since theta maps output to input coordinates and y points down, the
    warped content turns *anticlockwise* on screen by ``angle`` radians.
    Identity parameters: ``(1, 0, 0, 0)``.
    """
    params = _params(params, "params", 4)
    s, angle, tx, ty = tf.unstack(params, axis=-1)
    c = s * tf.cos(angle)
    n = s * tf.sin(angle)
    return tf.reshape(tf.stack([c, -n, tx, n, c, ty], axis=-1), [-1, 2, 3])


def rotation_theta(angle, scale=1.0, translation=(0.0, 0.0)):
    """Rotation about the image centre by ``angle`` radians ([B] or scalar).

    The output shows the input turned anticlockwise on screen by ``angle``
    (see ``similarity_theta``). Returns [B, 2, 3] ([1, 2, 3] for a scalar).

    Example:
      >>> out = spatial_transformer_network(img, rotation_theta(tf.fill([B], np.pi / 4)))
    """
    angle = as_float_tensor(angle, name="angle", allow_bool=False)
    angle = tf.reshape(angle, [-1])
    scale = tf.cast(scale, angle.dtype) * tf.ones_like(angle)
    tx = tf.cast(translation[0], angle.dtype) * tf.ones_like(angle)
    ty = tf.cast(translation[1], angle.dtype) * tf.ones_like(angle)
    return similarity_theta(tf.stack([scale, angle, tx, ty], axis=-1))


def affine_diffeomorphic_theta(params):
    """Affine diffeomorphic transform: the matrix exponential of an affine generator.

    ``params`` [B, 6] = (a, b, c, d, e, f) -> top two rows of
    ``expm([[a, b, c], [d, e, f], [0, 0, 0]])`` [B, 2, 3]. Always invertible
    (its inverse is ``expm(-A)``), so the warp never folds or collapses the
    image (Detlefsen et al., CVPR 2018; seed 004). Identity parameters: zeros.
    """
    params = _params(params, "params", 6)
    generator = tf.concat([tf.reshape(params, [-1, 2, 3]),
                           tf.zeros_like(params[:, None, :3])], axis=1)
    return _expm(generator)[:, :2, :]


_EXPM_MAX_SQUARINGS = 24   # norms up to 2**22: e**(2**22) overflows float64 anyway
_EXPM_TAYLOR_DEGREE = 12


def _expm(a):
    """Matrix exponential of small matrices [B, n, n], by scaling and squaring.

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


def projective_theta(params):
    """Projective transform (homography): ``params`` [B, 8] -> [B, 3, 3], h22 = 1.

    Maps output (x, y) to input ``((h00 x + h01 y + h02) / w, (h10 x + h11 y + h12) / w)``
    with ``w = h20 x + h21 y + 1``. Identity parameters: ``(1, 0, 0, 0, 1, 0, 0, 0)``.
    """
    params = _params(params, "params", 8)
    return tf.reshape(tf.concat([params, tf.ones_like(params[:, :1])], axis=1), [-1, 3, 3])


def _homogeneous(theta, name):
    matrix, projective = _theta_matrix(theta, name)
    if projective:
        return matrix, True
    last = tf.tile(tf.constant([[[0.0, 0.0, 1.0]]], matrix.dtype), [tf.shape(matrix)[0], 1, 1])
    return tf.concat([matrix, last], axis=1), False


def invert_affine(theta):
    """Inverse transform: warping by theta then by its inverse restores the image.

    ``theta`` [B, 2, 3] / [B, 6] gives [B, 2, 3]; a projective [B, 3, 3] /
    [B, 8] gives [B, 3, 3] (normalised so h22 = 1).
    """
    matrix, projective = _homogeneous(theta, "theta")
    inverse = tf.linalg.inv(matrix)
    if projective:
        return inverse / inverse[:, 2:3, 2:3]
    return inverse[:, :2, :]


def compose_affine(first, second):
    """One transform equal to warping by ``first`` and then by ``second``.

    Warping by ``first`` gives ``o1(p) = img(A p)``; warping that by
    ``second`` gives ``o2(p) = o1(B p) = img(A B p)``: the product ``A @ B``
    in homogeneous form (up to resampling and borders). Affine inputs give
    [B, 2, 3]; if either is projective the result is [B, 3, 3].
    """
    a, pa = _homogeneous(first, "first")
    b, pb = _homogeneous(second, "second")
    product = tf.matmul(a, tf.cast(b, a.dtype))
    if pa or pb:
        return product / product[:, 2:3, 2:3]
    return product[:, :2, :]


class AffineWarpConstraints:
    """Fixes some entries of the 2x3 affine matrix and learns the rest.

    In the spirit of Sonnet 1's ``AffineWarpConstraints``: ``constraints``
    is a 2x3 nested sequence whose entries are a number (fixed) or ``None``
    (free). ``theta(params)`` fills the free entries, row-major, from
    ``params`` [B, num_free_params].

    Example:
      >>> c = AffineWarpConstraints.translation_only()   # [[1, 0, None], [0, 1, None]]
      >>> theta = c.theta(tf.zeros([4, c.num_free_params]))   # identity
    """

    def __init__(self, constraints=((None,) * 3,) * 2):
        rows = [list(r) for r in constraints]
        if len(rows) != 2 or any(len(r) != 3 for r in rows):
            raise ValueError(f"constraints must be 2x3 (numbers or None); got {constraints!r}")
        for r in rows:
            for v in r:
                if v is not None and not isinstance(v, (int, float, np.number)):
                    raise ValueError(f"constraints entries must be numbers or None; got {v!r}")
        self.constraints = tuple(tuple(r) for r in rows)
        flat = [v for r in rows for v in r]
        self._free = [i for i, v in enumerate(flat) if v is None]
        self._fixed = [0.0 if v is None else float(v) for v in flat]

    @property
    def num_free_params(self):
        return len(self._free)

    @property
    def identity_params(self):
        """Free-parameter values giving the identity transform."""
        eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        return [eye[i] for i in self._free]

    def theta(self, params):
        """``params`` [B, num_free_params] -> theta [B, 2, 3]."""
        params = _params(params, "params", self.num_free_params)
        batch = tf.shape(params)[0]
        columns = []
        free = iter(range(self.num_free_params))
        for i in range(6):
            if i in self._free:
                columns.append(params[:, next(free)])
            else:
                columns.append(tf.fill([batch], tf.cast(self._fixed[i], params.dtype)))
        return tf.reshape(tf.stack(columns, axis=-1), [-1, 2, 3])

    @classmethod
    def no_constraints(cls):
        return cls(((None, None, None), (None, None, None)))

    @classmethod
    def translation_only(cls):
        return cls(((1.0, 0.0, None), (0.0, 1.0, None)))

    @classmethod
    def scale_only(cls):
        return cls(((None, 0.0, 0.0), (0.0, None, 0.0)))

    @classmethod
    def shear_only(cls):
        return cls(((1.0, None, 0.0), (None, 1.0, 0.0)))

    @classmethod
    def no_shear(cls):
        return cls(((None, 0.0, None), (0.0, None, None)))

    def __repr__(self):
        return f"AffineWarpConstraints({self.constraints!r})"


# --------------------------------------------------------------------------
# Thin-plate splines
# --------------------------------------------------------------------------

def control_point_lattice(rows, cols=None, *, extent=1.0, dtype=tf.float32):
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


def tps_coefficients(control_points, source_points):
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
    c, s = tf.cast(c, tf.float64), tf.cast(s, tf.float64)
    features = _tps_features(c, c)                                     # [..., N, N + 3]
    p_t = tf.linalg.matrix_transpose(features[..., -3:])              # [..., 3, N]
    bottom = tf.concat([p_t, tf.zeros_like(p_t[..., :3])], axis=-1)   # [..., 3, N + 3]
    system = tf.concat([features, bottom], axis=-2)                   # [..., N + 3, N + 3]
    rhs = tf.concat([s, tf.zeros_like(s[:, :3])], axis=1)             # [B, N + 3, 2]
    if c.shape.rank == 2:
        # One system for the whole batch, with 2B right-hand sides.
        batch = tf.shape(rhs)[0]
        stacked = tf.reshape(tf.transpose(rhs, [1, 0, 2]), [tf.shape(rhs)[1], -1])
        solved = tf.linalg.solve(system, stacked)
        return tf.transpose(tf.reshape(solved, [-1, batch, 2]), [1, 0, 2])
    return tf.linalg.solve(system, rhs)


def tps_grid(control_points, source_points, size, *, align_corners=False):
    """Sampling grid of the thin-plate spline that sends control points to source points.

    The unique thin-plate interpolant (kernel ``r^2 log r^2`` plus an affine
    part, see :func:`tps_coefficients`) evaluated at the output pixel
    centres: each control point (output, normalised) is sent to its source
    point (input, normalised), and the warp bends as little as possible in
    between. Affine point sets give exactly ``affine_grid``'s grid (no
    bending). The grid feeds ``grid_sample``; for the STN layer use
    ``transform_family("tps", control_points=...)``.

    Args:
      control_points: ``[N, 2]`` or ``[B, N, 2]`` normalised (x, y) in the
        output, e.g. ``control_point_lattice(4)``.
      source_points: ``[B, N, 2]`` normalised (x, y) in the input.
      size: ``(out_height, out_width)``.
      align_corners: the convention of the normalised coordinates.

    Returns:
      ``[B, out_height, out_width, 2]`` normalised (x, y), in the dtype of
      ``source_points`` (computed in float64, see :func:`tps_coefficients`).

    Example:
      >>> c = control_point_lattice(3)
      >>> grid = tps_grid(c, c[None], (4, 5))   # source = control: the identity
      >>> float(tf.reduce_max(tf.abs(grid - affine_grid(identity_theta(1), (4, 5))))) < 1e-6
      True
    """
    align_corners = check_bool(align_corners, name="align_corners")
    size = check_size(size, name="size")
    if size is None:
        raise ValueError("size must be (height, width); got None")
    out_dtype = as_float_tensor(source_points, name="source_points", allow_bool=False).dtype
    coefficients = tps_coefficients(control_points, source_points)     # [B, N + 3, 2]
    # Evaluated in float64 too: the weights of close control points are
    # large and cancel, which float32 features would not survive.
    dtype = tf.float64
    c = tf.cast(as_float_tensor(control_points, name="control_points", allow_bool=False), dtype)
    height, width = size
    xs = pixel_centers(width, align_corners, dtype)
    ys = pixel_centers(height, align_corners, dtype)
    points = tf.reshape(tf.stack(tf.meshgrid(xs, ys), axis=-1), [-1, 2])   # [H * W, 2]
    if c.shape.rank == 3:
        points = tf.broadcast_to(points, tf.concat([tf.shape(c)[:1], tf.shape(points)], 0))
    grid = tf.matmul(_tps_features(points, c), coefficients)               # [B, H * W, 2]
    grid = tf.reshape(grid, tf.stack([-1, height, width, 2]))
    return tf.cast(grid, out_dtype)


class TransformFamily:
    """A family of transforms as a localisation network predicts it.

    ``theta(params)`` maps ``[B, num_params]`` parameters to the transform
    (what ``spatial_transformer_network`` takes); ``identity_params`` are the
    parameters of the identity, the starting point of a localisation
    network's last layer; ``warp(inputs, theta, ...)`` applies a transform
    of the family. Get one with :func:`transform_family`.

    Example:
      >>> family = transform_family("attention")
      >>> family.num_params, family.identity_params
      (3, (1.0, 0.0, 0.0))
    """

    def __init__(self, name, ndim, num_params, identity_params, theta, warp=None):
        self.name = name
        self.ndim = ndim
        self.num_params = num_params
        self.identity_params = tuple(float(v) for v in identity_params)
        self._theta = theta
        self._warp = warp or spatial_transformer_network

    def theta(self, params):
        """``params`` ``[B, num_params]`` -> this family's transform."""
        return self._theta(params)

    def warp(self, inputs, theta, out_dims=None, *, align_corners=False, padding_mode="zeros",
             interpolation="bilinear"):
        """Warps ``inputs`` by a transform ``theta`` of this family."""
        return self._warp(inputs, theta, out_dims, align_corners=align_corners,
                          padding_mode=padding_mode, interpolation=interpolation)

    def __repr__(self):
        return f"TransformFamily({self.name!r}, ndim={self.ndim}, num_params={self.num_params})"


# name -> {number of spatial dimensions: family}
TRANSFORMS = {
    "affine": {2: TransformFamily("affine", 2, 6, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), affine_theta)},
    "attention": {2: TransformFamily("attention", 2, 3, (1.0, 0.0, 0.0), attention_theta)},
    "similarity": {2: TransformFamily("similarity", 2, 4, (1.0, 0.0, 0.0, 0.0),
                                      similarity_theta)},
    "diffeomorphic": {2: TransformFamily("diffeomorphic", 2, 6, (0.0,) * 6,
                                         affine_diffeomorphic_theta)},
    "projective": {2: TransformFamily("projective", 2, 8, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
                                      projective_theta)},
}


def _tps_family(control_points):
    """The "tps" family: theta is the source points ``[B, N, 2]`` of fixed control points."""
    if isinstance(control_points, (int, np.integer)) and not isinstance(control_points, bool):
        points = _lattice(int(control_points))
    elif isinstance(control_points, (tuple, list)) and len(control_points) == 2 and \
            all(isinstance(v, (int, np.integer)) for v in control_points):
        points = _lattice(*control_points)
    else:
        points = tf.get_static_value(
            as_float_tensor(control_points, name="control_points", allow_bool=False))
        if points is None:
            raise ValueError("control_points of the tps family must be known when the layer "
                             "is built (a constant, not a computed tensor)")
        points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[-1] != 2 or len(points) < 3:
        raise ValueError("control_points must be an int k (k x k lattice), (rows, cols) or "
                         f"an [N, 2] array of N >= 3 normalised (x, y); got shape {points.shape}")
    n = len(points)

    def theta(params):
        return tf.reshape(_params(params, "params", 2 * n), [-1, n, 2])

    def warp(inputs, source_points, out_dims=None, **sampling):
        image = as_float_tensor(inputs, name="inputs")
        size = out_dims if out_dims is not None else tf.unstack(tf.shape(image)[1:3])
        grid = tps_grid(tf.constant(points, _compute_dtype(image.dtype)), source_points, size,
                        align_corners=sampling["align_corners"])
        return grid_sample(image, grid, **sampling)

    family = TransformFamily("tps", 2, 2 * n, points.ravel(), theta, warp)
    family.control_points = points   # [N, 2] NumPy, normalised (x, y) in the output
    return family


def transform_family(transform="affine", ndim=2, *, constraints=None, control_points=None):
    """The family named ``transform`` (a key of ``TRANSFORMS``) in ``ndim`` dimensions.

    Args:
      transform: "affine", "attention", "similarity", "diffeomorphic" or
        "projective".
      ndim: 2 for images.
      constraints: an ``AffineWarpConstraints`` that fixes some entries of
        an affine transform (``transform="affine"`` only); the family's
        parameters are then the free entries.

    Example:
      >>> transform_family("affine", constraints=AffineWarpConstraints.translation_only()).num_params
      2
    """
    check_option(transform, name="transform", allowed=tuple(TRANSFORMS) + ("tps",))
    if transform == "tps":
        if ndim != 2:
            raise ValueError(f"transform='tps' is 2-D only; got ndim={ndim!r}")
        if constraints is not None:
            raise ValueError("constraints only apply to transform='affine'; got transform='tps'")
        # Default: a 4 x 4 lattice over the whole image.
        return _tps_family(4 if control_points is None else control_points)
    if control_points is not None:
        raise ValueError(f"control_points only apply to transform='tps'; got {transform!r}")
    families = TRANSFORMS[transform]
    if ndim not in families:
        raise ValueError(f"transform={transform!r} has no {ndim}-D form; ndim must be one of "
                         f"{', '.join(str(n) for n in sorted(families))}; got {ndim!r}")
    family = families[ndim]
    if constraints is None:
        return family
    if not isinstance(constraints, AffineWarpConstraints):
        raise TypeError(f"constraints must be an stn.AffineWarpConstraints; got {constraints!r}")
    if transform != "affine":
        raise ValueError(f"constraints only apply to transform='affine'; got {transform!r}")
    return TransformFamily("affine", ndim, constraints.num_free_params,
                           constraints.identity_params, constraints.theta)


def transform_theta(transform, params, ndim=2):
    """theta from ``params`` ``[B, k]`` for a transform family named in ``TRANSFORMS``."""
    return transform_family(transform, ndim).theta(params)
