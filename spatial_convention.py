"""The project's one coordinate convention, and the input rules, shared by stn, dsnt, coordconv.

Normalised coordinates run from -1 to 1 across an axis of ``n`` pixels.
Pixel coordinates put pixel ``i``'s centre at ``i``.

* ``align_corners=False``: -1 and 1 are the outer edges of the border
  pixels; pixel ``i`` has normalised centre ``(2i + 1) / n - 1``. DSNT's
  convention and PyTorch's default.
* ``align_corners=True``: -1 and 1 are the centres of the corner pixels;
  pixel ``i`` has normalised centre ``2i / (n - 1) - 1`` (0 when ``n == 1``).
  CoordConv's channels use this one.

In both, normalised 0 is pixel ``(n - 1) / 2`` and one normalised unit is
``n / 2`` (``False``) or ``(n - 1) / 2`` (``True``) pixels: every formula
below is ``pixel = normalised * half_extent + centre``.

The second part holds the argument rules the three layers share: option
strings, Python bools, real-valued tensors (floats keep their dtype,
integers become float32) and the dtype coordinates are computed in.

The last part is the one switch for the XLA-compiled inner functions (the
STN sampler, DSNT's JS divergence): :func:`compiled` runs a function through
``tf.function(jit_compile=True)`` unless :func:`set_jit` turned that off
(or the environment variable ``SPATIAL_JIT=0``, or the older ``STN_JIT=0``,
was set before import).

Imports only TensorFlow and NumPy.
"""
import functools
import os

import numpy as np
import tensorflow as tf

__all__ = ["half_extent", "centre", "normalized_to_pixel", "pixel_to_normalized",
           "pixel_centers", "check_option", "check_bool", "as_float_tensor",
           "compute_dtype", "compiled", "set_jit", "jit_enabled"]


def half_extent(size, align_corners, dtype):
    """Pixels per normalised unit: ``n / 2`` (edges at +-1) or ``(n - 1) / 2`` (centres)."""
    size = tf.cast(size, dtype)
    return (size - 1.0) / 2.0 if align_corners else size / 2.0


def centre(size, dtype):
    """Pixel coordinate of normalised 0: ``(n - 1) / 2`` in both conventions."""
    return (tf.cast(size, dtype) - 1.0) / 2.0


def normalized_to_pixel(coord, size, align_corners=False):
    """Normalised coordinates (float tensor) -> pixel coordinates along an axis of ``size``.

    Example:
      >>> normalized_to_pixel(tf.constant([-1., 0., 1.]), 4)   # [-0.5, 1.5, 3.5]
    """
    return coord * half_extent(size, align_corners, coord.dtype) + centre(size, coord.dtype)


def pixel_to_normalized(coord, size, align_corners=False):
    """Pixel coordinates (float tensor) -> normalised; the inverse of ``normalized_to_pixel``.

    With ``align_corners=True`` and ``size == 1`` every coordinate maps to 0.

    Example:
      >>> pixel_to_normalized(tf.constant([0., 3.]), 4)   # [-0.75, 0.75]
    """
    return tf.math.divide_no_nan(coord - centre(size, coord.dtype),
                                 half_extent(size, align_corners, coord.dtype))


def pixel_centers(size, align_corners=False, dtype=tf.float32):
    """Normalised coordinates of the centres of ``size`` pixels, shape ``[size]``.

    ``align_corners=False``: ``(2i + 1) / n - 1``; ``True``: ``linspace(-1, 1, n)``
    (``[0.]`` for one pixel). ``size`` may be a scalar tensor.

    Example:
      >>> pixel_centers(4)   # [-0.75, -0.25, 0.25, 0.75]
    """
    return pixel_to_normalized(tf.range(size, dtype=dtype), size, align_corners)


# --------------------------------------------------------------------------
# Input rules shared by the layers (messages name the argument as given)
# --------------------------------------------------------------------------

def check_option(name, value, allowed):
    """``value`` if it is one of the strings ``allowed``, else a ValueError listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def check_bool(name, value):
    """``value`` as a bool if it is a Python or NumPy bool, else a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False (a Python bool); got {value!r}")
    return bool(value)


def as_float_tensor(x, name, allow_bool=True):
    """A real-valued tensor: float dtypes are kept, integers (and bools) become float32."""
    try:
        x = tf.convert_to_tensor(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a tensor or array of numbers; "
                        f"got {type(x).__name__}: {e}") from None
    dtype = x.dtype
    if dtype.is_floating:
        return x
    if dtype.is_integer or (allow_bool and dtype == tf.bool):
        return tf.cast(x, tf.float32)
    kinds = "float, integer or bool" if allow_bool else "float or integer"
    raise TypeError(f"{name} must be a real-valued tensor ({kinds}); got dtype {dtype.name}")


def compute_dtype(*dtypes):
    """Where coordinates are computed: float64 if any input is, else float32.

    Half precision cannot even count pixels past 2048, so float16 and
    bfloat16 inputs are computed in float32 and cast back.
    """
    return tf.float64 if any(d == tf.float64 for d in dtypes) else tf.float32


# --------------------------------------------------------------------------
# XLA-compiled inner functions (one switch for the project)
# --------------------------------------------------------------------------

def _env_jit():
    for var in ("SPATIAL_JIT", "STN_JIT"):
        value = os.environ.get(var)
        if value is not None:
            return value.strip().lower() not in ("0", "false", "no", "off")
    return True


_JIT = _env_jit()
_jitted = {}


def set_jit(enabled):
    """Chooses whether inner functions run XLA-compiled (default) or as plain ops.

    Both give the same numbers to float round-off; plain ops are there for
    platforms without XLA. Takes effect for calls traced after it.
    """
    global _JIT
    _JIT = check_bool("enabled", enabled)


def jit_enabled():
    """Whether :func:`compiled` currently XLA-compiles."""
    return _JIT


def compiled(fn, *args, static=()):
    """Calls ``fn(*args, *static)``, XLA-compiled unless ``set_jit(False)``.

    One compiled function per (fn, static options); a partial rather than a
    lambda so that TensorFlow's retracing statistics are kept per option
    set (they are keyed by code object) and mixing options stays quiet.
    Gradients of the call are compiled too.
    """
    if not _JIT:
        return fn(*args, *static)
    key = (fn, static)
    if key not in _jitted:
        bound = functools.partial(_call_with_static, fn, static)
        _jitted[key] = tf.function(bound, jit_compile=True, reduce_retracing=True)
    return _jitted[key](*args)


def _call_with_static(fn, static, *args):
    return fn(*args, *static)
