"""CoordConv for TensorFlow: coordinate channels and a functional convolution.

Liu et al. 2018, "An intriguing failing of convolutional neural networks and
the CoordConv solution" (arXiv:1807.03247): a convolution cannot tell *where*
it is in the image; appending channels that hold each pixel's coordinates
before the convolution lets it.

This module imports only TensorFlow, NumPy and the project's small
``spatial_convention.py`` (the coordinate convention shared with ``stn`` and
``dsnt``), so the two files can be copied into any graph. It works eagerly,
inside ``tf.function`` with unknown (``None``) batch and spatial sizes, in
``tf.compat.v1`` graphs with placeholders, and under XLA
(``jit_compile=True``).

Coordinate convention
---------------------
For an input with spatial sizes ``[..., H, W]`` the appended channels are, in
this order:

* ``x``: the normalised pixel centres along the width axis (the last
  spatial axis);
* ``y``: the same along the height axis (second-to-last spatial axis);
* ``z`` (3-D inputs only): the same along the depth axis;
* ``r`` (only with ``with_r=True``): ``sqrt(x**2 + y**2 (+ z**2))``, the
  distance from the image centre; at most ``sqrt(2)`` in 2-D.

The pixel centres are those of the project's one convention, defined in
:mod:`spatial_convention`. The default ``align_corners=True`` is the
CoordConv paper's, ``numpy.linspace(-1, 1, W)`` corner to corner (0 on a
size-1 axis); ``align_corners=False`` is the one ``stn`` and ``dsnt`` use by
default.

Unlike the reference ``AddCoords`` of the paper's code, x is always the
width coordinate and y the height coordinate (the reference swaps them and so
only works on square inputs), and no static size is needed.

Example
-------
>>> import numpy as np, tensorflow as tf
>>> import coordconv
>>> images = tf.zeros([8, 28, 32, 3])                  # [B, H, W, C]
>>> coordconv.add_coords(images).shape                # x, y appended
TensorShape([8, 28, 32, 5])
>>> filters = tf.random.normal([3, 3, 3 + 2, 16])      # C + 2 input channels
>>> coordconv.coord_conv2d(images, filters).shape
TensorShape([8, 28, 32, 16])
"""

import numbers
from typing import Literal, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

import spatial_convention
from spatial_convention import (SizeLike, TensorLike, as_float_tensor, check_bool, check_option,
                                check_positive_int, check_rank)

IntOrInts = Union[int, Sequence[int]]
Padding = Literal["SAME", "VALID", "same", "valid"]

__all__ = [
    "add_coords",
    "coord_channels",
    "check_data_format",
    "num_coord_channels",
    "coord_conv",
    "coord_conv1d",
    "coord_conv2d",
    "coord_conv3d",
]

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# data_format -> (number of spatial dimensions, channels_last)
_DATA_FORMATS = {
    "NWC": (1, True), "NCW": (1, False),
    "NHWC": (2, True), "NCHW": (2, False),
    "NDHWC": (3, True), "NCDHW": (3, False),
}
# Keras's names -> {rank: data_format}
_CHANNELS_FOR_RANK = {"channels_last": {3: "NWC", 4: "NHWC", 5: "NDHWC"},
                      "channels_first": {3: "NCW", 4: "NCHW", 5: "NCDHW"}}


# --------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------

def check_data_format(data_format: Optional[str]) -> Optional[str]:
    """``data_format`` checked, in capitals (``"channels_last"`` in lower case), or None.

    One of ``'NWC'``, ``'NHWC'``, ``'NDHWC'``, ``'NCW'``, ``'NCHW'``,
    ``'NCDHW'`` (any case), ``'channels_last'``, ``'channels_first'``, or
    None (channels-last, by the input's rank). Shells call it when built.

    Example:
      >>> check_data_format("nhwc"), check_data_format("channels_first")
      ('NHWC', 'channels_first')
    """
    if data_format is None:
        return None
    if isinstance(data_format, str):
        lower = data_format.lower()
        data_format = lower if lower in _CHANNELS_FOR_RANK else data_format.upper()
    return check_option(data_format, name="data_format",
                        allowed=(*_DATA_FORMATS, *_CHANNELS_FOR_RANK))


def _resolve_data_format(data_format, inputs):
    """Returns (num_spatial, channels_last, canonical data_format) for ``inputs``."""
    rank = check_rank(inputs, name="inputs", ranks=(3, 4, 5),
                      layout="[B, W, C], [B, H, W, C] or [B, D, H, W, C]")
    fmt = check_data_format(data_format) or "channels_last"
    fmt = _CHANNELS_FOR_RANK.get(fmt, {}).get(rank, fmt)
    num_spatial, channels_last = _DATA_FORMATS[fmt]
    if num_spatial + 2 != rank:
        raise ValueError(f"data_format={data_format!r} is for rank-{num_spatial + 2} inputs; "
                         f"got inputs of shape {inputs.shape}")
    return num_spatial, channels_last, fmt


def num_coord_channels(num_spatial_dims: int = 2, with_r: bool = False) -> int:
    """Number of channels `add_coords` appends: one per spatial dim, +1 for r.

    Example:
      >>> num_coord_channels(2, with_r=True)
      3
    """
    if check_positive_int(num_spatial_dims, name="num_spatial_dims") > 3:
        raise ValueError(f"num_spatial_dims must be 1, 2 or 3; got {num_spatial_dims!r}")
    return int(num_spatial_dims) + int(check_bool(with_r, name="with_r"))


# --------------------------------------------------------------------------
# coordinate channels (the one place they are built)
# --------------------------------------------------------------------------

def coord_channels(spatial_shape: Union[Sequence[SizeLike], tf.Tensor], with_r: bool = False,
                   align_corners: bool = True, dtype: tf.DType = tf.float32,
                   batch_size: Optional[SizeLike] = None) -> tf.Tensor:
    """Builds the coordinate channels alone, channels-last.

    Args:
      spatial_shape: ``[W]``, ``[H, W]`` or ``[D, H, W]``: a list of ints or
        scalar tensors, or an int32 vector tensor of length 1, 2 or 3.
      with_r: also build ``r = sqrt(x^2 + y^2 (+ z^2))``.
      align_corners: True: ``linspace(-1, 1, n)``; False: pixel centres
        ``(2 i + 1) / n - 1``. See the module docstring.
      dtype: a floating dtype of the result. Computed in float32 (float64 for
        float64) and cast, so half precision gets correctly rounded values.
      batch_size: None for a result without batch axis, else an int or scalar
        tensor (the channels are broadcast over the batch).

    Returns:
      ``[*spatial_shape, k]`` (or ``[batch_size, *spatial_shape, k]``) with
      ``k = len(spatial_shape) + with_r`` channels ordered x, y, (z), (r):
      x along the last spatial axis, y along the one before, z the first.

    Example:
      >>> c = coord_channels([2, 3])          # [H, W] -> [2, 3, 2]
      >>> c[..., 0].numpy()                   # x, along the width
      array([[-1.,  0.,  1.],
             [-1.,  0.,  1.]], dtype=float32)
    """
    with_r = check_bool(with_r, name="with_r")
    align_corners = check_bool(align_corners, name="align_corners")
    dtype = tf.as_dtype(check_option(tf.as_dtype(dtype).name, name="dtype", allowed=_FLOAT_DTYPES))
    if isinstance(spatial_shape, (tf.Tensor, np.ndarray)):
        spatial_shape = tf.convert_to_tensor(spatial_shape)
        if spatial_shape.shape.rank != 1 or spatial_shape.shape[0] is None:
            raise ValueError("spatial_shape must be a vector of static length 1, 2 "
                             f"or 3; got shape {spatial_shape.shape}")
        sizes = [spatial_shape[i] for i in range(spatial_shape.shape[0])]
    else:
        sizes = list(spatial_shape)
    n = len(sizes)
    if n not in (1, 2, 3):
        raise ValueError(f"spatial_shape must have 1, 2 or 3 entries ([W], [H, W] "
                         f"or [D, H, W]); got {n}")
    for s in sizes:
        if isinstance(s, numbers.Integral) and (isinstance(s, bool) or s < 0):
            raise ValueError(f"spatial_shape entries must be non-negative ints; "
                             f"got {spatial_shape!r}")
    sizes = [tf.cast(s, tf.int32) for s in sizes]

    compute_dtype = spatial_convention.compute_dtype(dtype)
    full = tf.stack(sizes + [1])  # [*spatial, 1]
    channels = []
    # Spatial axis a (0..n-1) carries the coordinate named by n - 1 - a:
    # the last axis is x, the one before y, the first of three z.
    for a in reversed(range(n)):
        c = spatial_convention.pixel_centers(sizes[a], align_corners, compute_dtype)
        shape = [1] * (n + 1)
        shape[a] = -1
        channels.append(tf.broadcast_to(tf.reshape(c, shape), full))
    if with_r:
        channels.append(tf.sqrt(tf.add_n([tf.square(c) for c in channels])))
    coords = tf.cast(tf.concat(channels, axis=-1), dtype)
    if batch_size is not None:
        coords = tf.broadcast_to(coords[tf.newaxis],
                                 tf.concat([[tf.cast(batch_size, tf.int32)],
                                            tf.shape(coords)], axis=0))
    return coords


def add_coords(inputs: TensorLike, with_r: bool = False, *, align_corners: bool = True,
               data_format: Optional[str] = None, name: Optional[str] = None) -> tf.Tensor:
    """Appends coordinate channels x, y (z) (r) to `inputs`.

    Args:
      inputs: ``[B, W, C]`` (1-D), ``[B, H, W, C]`` (2-D) or ``[B, D, H, W, C]``
        (3-D) channels-last, or channels-first with `data_format`. Any of the
        dimensions may be unknown (``None``); the rank must be known. Float16,
        bfloat16, float32 and float64 are kept; integer and bool inputs are
        cast to float32.
      with_r: also append ``r = sqrt(x^2 + y^2 (+ z^2))``.
      align_corners: keyword only. True (default): x = linspace(-1, 1, W),
        -1/+1 at the centres of the corner pixels; False: pixel centres of the
        project's convention, (2 j + 1) / W - 1.
      data_format: keyword only. None (channels-last, by rank), or one of
        'NWC', 'NHWC', 'NDHWC', 'NCW', 'NCHW', 'NCDHW', 'channels_last',
        'channels_first'.
      name: optional name scope.

    Returns:
      ``inputs`` with ``k`` channels appended on the channel axis, where
      ``k = num_spatial_dims + with_r``, in the order x (varies along width),
      y (along height), z (along depth, 3-D only), r. Shape e.g.
      ``[B, H, W, C + 2 (+ 1)]``; same dtype as the (cast) input.

    Raises:
      TypeError: `inputs` not numeric, `with_r` / `align_corners` not bool,
        `data_format` not a string.
      ValueError: rank unknown or not 3, 4 or 5; bad or mismatched
        `data_format`.

    Example:
      >>> x = tf.zeros([2, 3, 5, 1])
      >>> c = add_coords(x, with_r=True)          # [2, 3, 5, 4]
      >>> c[0, 0, :, 1].numpy()                   # x along the width
      array([-1. , -0.5,  0. ,  0.5,  1. ], dtype=float32)
    """
    with_r = check_bool(with_r, name="with_r")
    align_corners = check_bool(align_corners, name="align_corners")
    with tf.name_scope(name or "add_coords"):
        inputs = as_float_tensor(inputs, name="inputs")
        num_spatial, channels_last, _ = _resolve_data_format(data_format, inputs)
        dyn = tf.shape(inputs)
        if channels_last:
            spatial = [dyn[1 + i] for i in range(num_spatial)]
        else:
            spatial = [dyn[2 + i] for i in range(num_spatial)]
        coords = coord_channels(spatial, with_r=with_r, align_corners=align_corners,
                                dtype=inputs.dtype, batch_size=dyn[0])
        k = num_spatial + int(with_r)
        static = inputs.shape.as_list()
        if channels_last:
            coords.set_shape(static[:-1] + [k])
            out = tf.concat([inputs, coords], axis=-1)
        else:
            perm = [0, num_spatial + 1] + list(range(1, num_spatial + 1))
            coords = tf.transpose(coords, perm)
            coords.set_shape([static[0], k] + static[2:])
            out = tf.concat([inputs, coords], axis=1)
        return out


# --------------------------------------------------------------------------
# functional CoordConv
# --------------------------------------------------------------------------

def coord_conv(inputs: TensorLike, filters: TensorLike, strides: IntOrInts = 1,
               padding: Padding = "SAME", with_r: bool = False, *,
               dilations: Optional[IntOrInts] = None, data_format: Optional[str] = None,
               align_corners: bool = True, name: Optional[str] = None) -> tf.Tensor:
    """N-D CoordConv: ``tf.nn.convolution(add_coords(inputs), filters, ...)``.

    Args:
      inputs: rank 3, 4 or 5 tensor, see `add_coords`.
      filters: ``[*kernel_spatial, C + k, out_channels]`` where C is the input
        channel count and ``k = num_spatial_dims + with_r`` the coordinate
        channels (2 or 3 in 2-D). The last k input slices of the filter act on
        x, y, (z), (r) in that order.
      strides, padding, dilations: as for `tf.nn.convolution`. `padding` is
        'SAME' or 'VALID' (case-insensitive).
      with_r, align_corners, data_format: see `add_coords`.
      name: optional name scope.

    Returns:
      The convolution output, e.g. ``[B, H', W', out_channels]``.

    Example:
      >>> coord_conv(tf.zeros([2, 8, 8, 3]), tf.ones([3, 3, 3 + 2, 4]), padding="VALID").shape
      TensorShape([2, 6, 6, 4])
    """
    with_r = check_bool(with_r, name="with_r")
    with tf.name_scope(name or "coord_conv"):
        inputs = as_float_tensor(inputs, name="inputs")
        num_spatial, channels_last, fmt = _resolve_data_format(data_format, inputs)
        padding_name = check_option(padding.upper() if isinstance(padding, str) else padding,
                                    name="padding", allowed=("SAME", "VALID"))
        try:
            filters = tf.convert_to_tensor(filters)
        except (TypeError, ValueError) as e:
            raise TypeError(f"filters must be a tensor; got {type(filters).__name__}: {e}") from e
        if filters.shape.rank is not None and filters.shape.rank != num_spatial + 2:
            raise ValueError(
                f"filters must have rank {num_spatial + 2} "
                f"([*kernel, in_channels, out_channels]) for rank-{num_spatial + 2} "
                f"inputs; got shape {filters.shape}")
        k = num_spatial + int(with_r)
        c = inputs.shape[-1] if channels_last else inputs.shape[1]
        if c is not None and filters.shape.rank is not None:
            expected = c + k
            got = filters.shape[-2]
            if got is not None and got != expected:
                raise ValueError(
                    f"filters must have {expected} input channels (the {c} input "
                    f"channels plus {k} coordinate channels"
                    f"{' incl. r' if with_r else ''}); got shape {filters.shape}")
        if filters.dtype != inputs.dtype:
            if filters.dtype.is_floating:
                filters = tf.cast(filters, inputs.dtype)
            else:
                raise TypeError(f"filters must be floating point; got {filters.dtype.name}")
        augmented = add_coords(inputs, with_r=with_r, align_corners=align_corners,
                               data_format=fmt)
        return tf.nn.convolution(augmented, filters, strides=strides,
                                 padding=padding_name, dilations=dilations,
                                 data_format=fmt)


def _check_input_rank(inputs, num_spatial, fn):
    """The inputs as a float tensor of rank ``num_spatial + 2``, for ``fn``'s message."""
    inputs = as_float_tensor(inputs, name="inputs")
    layout = {1: "[B, W, C]", 2: "[B, H, W, C]", 3: "[B, D, H, W, C]"}[num_spatial]
    check_rank(inputs, name="inputs", ranks=(num_spatial + 2,), layout=f"{layout} for {fn}")
    return inputs


def coord_conv1d(inputs: TensorLike, filters: TensorLike, strides: IntOrInts = 1,
                 padding: Padding = "SAME", with_r: bool = False, *,
                 dilations: Optional[IntOrInts] = None, data_format: Optional[str] = None,
                 align_corners: bool = True, name: Optional[str] = None) -> tf.Tensor:
    """1-D CoordConv on ``[B, W, C]``; ``filters`` ``[kw, C + 1 (+1), out]``.

    The appended channels are x (and ``r = abs(x)`` with ``with_r``); see
    :func:`coord_conv`.

    Example:
      >>> coord_conv1d(tf.zeros([2, 10, 3]), tf.ones([3, 3 + 1, 5])).shape
      TensorShape([2, 10, 5])
    """
    return coord_conv(_check_input_rank(inputs, 1, "coord_conv1d"), filters, strides, padding,
                      with_r, dilations=dilations, data_format=data_format,
                      align_corners=align_corners, name=name or "coord_conv1d")


def coord_conv2d(inputs: TensorLike, filters: TensorLike, strides: IntOrInts = 1,
                 padding: Padding = "SAME", with_r: bool = False, *,
                 dilations: Optional[IntOrInts] = None, data_format: Optional[str] = None,
                 align_corners: bool = True, name: Optional[str] = None) -> tf.Tensor:
    """2-D CoordConv on ``[B, H, W, C]``; ``filters`` ``[kh, kw, C + 2 (+1), out]``.

    ``coord_conv2d(x, f, strides, padding, with_r)`` equals
    ``tf.nn.conv2d(add_coords(x, with_r), f, strides, padding)``: input
    channels of ``filters`` are the C input channels, then x, y, (r). See
    :func:`coord_conv`.

    Example:
      >>> images = tf.zeros([4, 28, 28, 1])
      >>> f = tf.random.normal([3, 3, 1 + 3, 8])   # with_r: C + 3
      >>> coord_conv2d(images, f, strides=2, with_r=True).shape
      TensorShape([4, 14, 14, 8])
    """
    return coord_conv(_check_input_rank(inputs, 2, "coord_conv2d"), filters, strides, padding,
                      with_r, dilations=dilations, data_format=data_format,
                      align_corners=align_corners, name=name or "coord_conv2d")


def coord_conv3d(inputs: TensorLike, filters: TensorLike, strides: IntOrInts = 1,
                 padding: Padding = "SAME", with_r: bool = False, *,
                 dilations: Optional[IntOrInts] = None, data_format: Optional[str] = None,
                 align_corners: bool = True, name: Optional[str] = None) -> tf.Tensor:
    """3-D CoordConv on ``[B, D, H, W, C]``; ``filters`` ``[kd, kh, kw, C + 3 (+1), out]``.

    Appended channels x (width), y (height), z (depth), (r). See
    :func:`coord_conv`.

    Example:
      >>> coord_conv3d(tf.zeros([1, 4, 5, 6, 2]), tf.ones([3, 3, 3, 2 + 3, 4])).shape
      TensorShape([1, 4, 5, 6, 4])
    """
    return coord_conv(_check_input_rank(inputs, 3, "coord_conv3d"), filters, strides, padding,
                      with_r, dilations=dilations, data_format=data_format,
                      align_corners=align_corners, name=name or "coord_conv3d")
