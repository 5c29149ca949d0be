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
``n / 2`` (``False``) or ``(n - 1) / 2`` (``True``) pixels: mathematically,
``pixel = normalised * half_extent + centre``. :func:`normalized_to_pixel`
computes it in PyTorch's order of operations instead, so that a float32 grid
rounds, and so reads the taps at the kinks, as PyTorch's ``grid_sample``
(docs/stn.md, "Exactness at pixel positions").

The first part is the convention for tensors (:func:`pixel_to_normalized`
and its inverse, the pixel centres, a cell's corners). The second part
holds the argument rules the layers and their shells share, all called the
same way: the value, then keyword-only ``name=`` and the rule (option
strings, Python bools, sizes, ranks, a field's shape, batch sizes,
real-valued tensors whose floats keep their dtype and whose integers become
float32, and the dtype coordinates are computed in).

The last part holds the two switches of the fast paths: :func:`use_kernels`
chooses between the hand-tuned kernels (``_stn_kernels.py``,
``_dsnt_kernels.py``) and the direct maths written in ``stn.py`` and
``dsnt.py`` (environment variable ``SPATIAL_KERNELS=0``), and
:func:`compiled` runs a kernel through ``tf.function(jit_compile=True)``
unless :func:`set_jit` turned that off (or ``SPATIAL_JIT=0``, also read as
``STN_JIT=0``, was set before import).

Imports only TensorFlow and NumPy.
"""
import functools
import itertools
import os
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple, TypeVar, Union, overload

import numpy as np
import tensorflow as tf

#: Anything ``tf.convert_to_tensor`` takes: tensors, NumPy arrays, nested lists, numbers.
TensorLike = Union[tf.Tensor, tf.Variable, np.ndarray, Sequence[Any], float, int]
#: A pixel count: a Python int or an int scalar tensor (known only at run time).
SizeLike = Union[int, tf.Tensor]
#: An option's value, returned as given (a ``Literal`` stays that ``Literal``).
_Option = TypeVar("_Option")

__all__ = ["half_extent", "centre", "normalized_to_pixel", "pixel_to_normalized",
           "pixel_centers", "cell_corners", "check_option", "check_bool", "check_positive_int",
           "as_float_tensor", "check_rank", "check_size", "check_field_shape", "check_positive",
           "check_same_batch", "with_assertions", "missing_extra", "shape_list", "compute_dtype",
           "compiled",
           "set_jit", "jit_enabled", "use_kernels", "kernels_enabled"]


# --------------------------------------------------------------------------
# The coordinate convention
# --------------------------------------------------------------------------

def half_extent(size: SizeLike, align_corners: bool, dtype: tf.DType) -> tf.Tensor:
    """Pixels per normalised unit: ``n / 2`` (edges at +-1) or ``(n - 1) / 2`` (centres).

    Example:
      >>> float(half_extent(4, False, tf.float32)), float(half_extent(4, True, tf.float32))
      (2.0, 1.5)
    """
    size = tf.cast(size, dtype)
    return (size - 1.0) / 2.0 if align_corners else size / 2.0


def centre(size: SizeLike, dtype: tf.DType) -> tf.Tensor:
    """Pixel coordinate of normalised 0: ``(n - 1) / 2`` in both conventions.

    Example:
      >>> float(centre(4, tf.float32))
      1.5
    """
    return (tf.cast(size, dtype) - 1.0) / 2.0


def normalized_to_pixel(coord: tf.Tensor, size: SizeLike, align_corners: bool = False,
                        fused: bool = False) -> tf.Tensor:
    """Normalised coordinates (float tensor) -> pixel coordinates along an axis of ``size``.

    Rounds as PyTorch's grid_sample on the CPU, so that a float32 grid reads the same
    taps at the kinks (pixel positions): ``(x + 1) / 2 * (n - 1)`` with
    ``align_corners``, else ``((x + 1) * n - 1) / 2`` with ``(x + 1) * n`` rounded
    (3-D), or with ``(x + 1) * n - 1`` rounded once, as the fused multiply-add of
    the vectorised 2-D kernel (``fused=True``). Computed in the coordinate's own
    dtype (no float64, so TFLite converts it) and the same with or without XLA:
    the comment above ``_scaled_minus_one`` says how.

    Example:
      >>> normalized_to_pixel(tf.constant([-1., 0., 1.]), 4).numpy()
      array([-0.5,  1.5,  3.5], dtype=float32)
    """
    shifted = coord + 1.0
    if align_corners:   # one rounding of a product: no order of operations can change it
        return shifted / 2.0 * (tf.cast(size, coord.dtype) - 1.0)
    return _scaled_minus_one(shifted, size, fused) / 2.0


# Why not the obvious `shifted * n - 1.0`: XLA contracts a product and a sum
# into one fused multiply-add (measured: with jit_compile 53215 of 10**6
# random float32 values of `x * 37 - 1` differ from TensorFlow's eager
# result), so the same expression rounds once under XLA and twice without
# it. Here every product is exact (Veltkamp's split of the factors into
# halves of the significand), so contracting any of them changes nothing,
# and the product's rounding error is carried along (Knuth's two-sum): the
# rounding is chosen explicitly. tests/test_pytorch_taps.py checks it
# against the same formulas computed in float64 and rounded.
def _scaled_minus_one(s: tf.Tensor, size: SizeLike, fused: bool) -> tf.Tensor:
    """``s * size - 1`` rounded once (``fused``) or with the product rounded first."""
    n = tf.cast(size, s.dtype)
    half_bits = (np.finfo(s.dtype.as_numpy_dtype).nmant + 2) // 2   # 12 for float32
    unit = float(2 ** half_bits)
    s_hi, s_lo = _split(s, unit)
    n_hi = tf.floor(n / unit) * unit       # n is a whole number: both parts exact
    n_lo = n - n_hi
    # The split overflows before the product does; beyond 2**100 the grid is
    # far outside the image and the plain product gives the same taps. The
    # selects also keep Grappler's arithmetic optimiser and constant folding
    # from reordering the sums: unguarded, it hoists common factors
    # (`a * b + a * c -> a * (b + c)`, an inexact product), collapses chains
    # of additions into one AddN and pushes the constant 1 into a sum.
    small = tf.abs(s) < 2.0 ** 100
    plain = s * n

    def guarded(value, otherwise):
        return tf.where(small, value, otherwise)

    hi, lo = _two_sum(guarded(s_hi * n_hi, 0.0), guarded(s_hi * n_lo, 0.0))
    hi, lo2 = _two_sum(hi, guarded(s_lo * n_hi, 0.0))
    lo = guarded(lo + (lo2 + s_lo * n_lo), 0.0)   # s * n == hi + lo, hi nearly its rounding
    if fused:
        # hi - 1 is exact where hi >= 1/2 (pixel coordinate >= -1/4). Below it
        # may round once more, by an ulp: inside the image that moves no tap
        # (no pixel position lies in (-1/2, -1/4)); beyond the left edge it
        # could, at a kink that reflection padding folds back.
        return (guarded(hi, plain) - 1.0) + lo
    return guarded(hi + lo, plain) - 1.0          # the product rounded


def _split(v: tf.Tensor, unit: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """Veltkamp: ``v == hi + lo`` exactly, each with at most half the significand's bits."""
    c = v * unit + v          # == round(v * (unit + 1)) however it is evaluated
    hi = c - (c - v)
    return hi, v - hi


def _two_sum(a: tf.Tensor, b: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Knuth: ``a + b == total + error`` exactly, ``total`` the rounded sum."""
    total = a + b
    b_part = total - a
    error = (a - (total - b_part)) + (b - b_part)
    return total, error


def pixel_to_normalized(coord: tf.Tensor, size: SizeLike, align_corners: bool = False) -> tf.Tensor:
    """Pixel coordinates (float tensor) -> normalised; the inverse of ``normalized_to_pixel``.

    With ``align_corners=True`` and ``size == 1`` every coordinate maps to 0.

    The project's one spelling of the conversion, which the others call:
    ``stn.pixel_to_normalized`` is the same for the STN's users (it also
    takes lists and arrays), and ``dsnt.pixel_to_normalized_coordinates``
    is dsntnn's name for it (points ``[..., n]`` with the sizes of every axis).

    Example:
      >>> pixel_to_normalized(tf.constant([0., 3.]), 4).numpy()
      array([-0.75,  0.75], dtype=float32)
    """
    return tf.math.divide_no_nan(coord - centre(size, coord.dtype),
                                 half_extent(size, align_corners, coord.dtype))


def pixel_centers(size: SizeLike, align_corners: bool = False,
                  dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Normalised coordinates of the centres of ``size`` pixels, shape ``[size]``.

    ``align_corners=False``: ``(2i + 1) / n - 1``; ``True``: ``linspace(-1, 1, n)``
    (``[0.]`` for one pixel). ``size`` may be a scalar tensor.

    Example:
      >>> pixel_centers(4).numpy()
      array([-0.75, -0.25,  0.25,  0.75], dtype=float32)
      >>> pixel_centers(4, align_corners=True).numpy()
      array([-1.        , -0.33333334,  0.33333334,  1.        ], dtype=float32)
    """
    return pixel_to_normalized(tf.range(size, dtype=dtype), size, align_corners)


def cell_corners(ndim: int) -> List[Tuple[int, ...]]:
    """The 2^ndim corners of a pixel cell as 0/1 offsets (x, y[, z]), x fastest.

    The order in which N-linear interpolation lists a cell's corners and
    their weights (``stn``'s direct sampler and its kernels alike).

    Example:
      >>> cell_corners(2)
      [(0, 0), (1, 0), (0, 1), (1, 1)]
    """
    return [corner[::-1] for corner in itertools.product((0, 1), repeat=ndim)]


# --------------------------------------------------------------------------
# Argument rules shared by the layers and their shells
# --------------------------------------------------------------------------
#
# One calling convention: the value first, then keyword-only ``name`` (the
# argument's name as the caller spells it, quoted in every message) and the
# rule's parameters. Messages read "<name> must be <what>; got <value>".
# Static facts are checked at once (a plain ValueError or TypeError); facts
# known only at run time become ``tf.debugging`` assertions that carry the
# same message (see :func:`with_assertions`).

def check_option(value: _Option, *, name: str, allowed: Sequence[str]) -> _Option:
    """``value`` if it is one of the strings ``allowed``, else a ValueError listing them.

    Example:
      >>> check_option("border", name="padding_mode", allowed=("zeros", "border"))
      'border'
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def check_bool(value: Any, *, name: str) -> bool:
    """``value`` as a bool if it is a Python or NumPy bool, else a TypeError.

    Example:
      >>> check_bool(1, name="align_corners")
      Traceback (most recent call last):
      ...
      TypeError: align_corners must be True or False (a Python bool); got 1
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False (a Python bool); got {value!r}")
    return bool(value)


def check_positive_int(value: Any, *, name: str, allow_zero: bool = False) -> int:
    """``value`` as an int if it is a positive (or zero) Python or NumPy integer, not a bool.

    Example:
      >>> check_positive_int(np.int64(3), name="rows")
      3
      >>> check_positive_int(0, name="steps", allow_zero=True)
      0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or int(value) < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} integer; got {value!r}")
    return int(value)


def as_float_tensor(value: Any, *, name: str, allow_bool: bool = True) -> tf.Tensor:
    """A real-valued tensor: float dtypes are kept, integers (and bools) become float32.

    Example:
      >>> as_float_tensor([1, 2], name="img").dtype
      tf.float32
      >>> as_float_tensor(np.zeros(2, np.float16), name="img").dtype
      tf.float16
    """
    try:
        x = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a tensor or array of numbers; "
                        f"got {type(value).__name__}: {e}") from None
    dtype = x.dtype
    if dtype.is_floating:
        return x
    if dtype.is_integer or (allow_bool and dtype == tf.bool):
        return tf.cast(x, tf.float32)
    kinds = "float, integer or bool" if allow_bool else "float or integer"
    raise TypeError(f"{name} must be a real-valued tensor ({kinds}); got dtype {dtype.name}")


def check_rank(x: tf.Tensor, *, name: str, ranks: Sequence[int], layout: Optional[str] = None) -> int:
    """The static rank of ``x`` if it is one of ``ranks``, else a ValueError.

    ``layout`` describes the expected shape for the message, e.g.
    ``"[B, H, W, C] or [B, D, H, W, C]"``. An unknown rank is an error: the
    layers need to know how many spatial axes there are.

    Example:
      >>> check_rank(tf.zeros([2, 4, 4, 1]), name="img", ranks=(4, 5))
      4
    """
    rank = x.shape.rank
    want = " or ".join(str(r) for r in ranks)
    described = f" ({layout})" if layout else ""
    if rank is None:
        raise ValueError(f"{name} must have a statically known rank {want}{described}; "
                         "got a tensor of unknown rank")
    if rank not in ranks:
        raise ValueError(f"{name} must have rank {want}{described}; got shape {x.shape}")
    return rank


@overload
def check_size(value: Any, *, name: str, ndim: Sequence[int] = ..., labels: Optional[str] = ...,
               required: Literal[True]) -> Tuple[SizeLike, ...]: ...


@overload
def check_size(value: Any, *, name: str, ndim: Sequence[int] = ..., labels: Optional[str] = ...,
               required: bool = ...) -> Optional[Tuple[SizeLike, ...]]: ...


def check_size(value: Any, *, name: str, ndim: Sequence[int] = (2,),
               labels: Optional[str] = None, required: bool = False) -> Optional[Tuple[SizeLike, ...]]:
    """A spatial size: a tuple of positive ints or int scalar tensors, or None.

    ``ndim`` lists the allowed lengths (2 for ``(height, width)``, 3 for
    ``(depth, height, width)``). A 1-D int tensor of static length is split
    into scalars. None is returned as None (a default to fill in), or is an
    error with ``required=True``.

    Example:
      >>> check_size((28, 28), name="out_dims")
      (28, 28)
      >>> check_size(None, name="size", ndim=(2, 3), required=True)
      Traceback (most recent call last):
      ...
      ValueError: size must be (height, width) or (depth, height, width); got None
    """
    lengths = tuple(ndim)
    labels = labels or " or ".join({2: "(height, width)", 3: "(depth, height, width)"}.get(n, f"{n} sizes")
                                  for n in lengths)
    if value is None:
        if required:
            raise ValueError(f"{name} must be {labels}; got None")
        return None
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.shape.rank != 1 or value.shape[0] not in lengths:
            raise ValueError(f"{name} must be {labels}; got a tensor of shape {value.shape}")
        return tuple(value[i] for i in range(value.shape[0]))
    try:
        sizes = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be {labels}; got {value!r}") from None
    if len(sizes) not in lengths:
        raise ValueError(f"{name} must be {labels}; got {value!r}")
    out = []
    for s in sizes:
        if isinstance(s, (tf.Tensor, tf.Variable)):
            out.append(s)
        elif isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or int(s) < 1:
            count = " or ".join({2: "two", 3: "three"}.get(n, str(n)) for n in lengths)
            raise ValueError(f"{name} must be {count} positive integers {labels}; got {value!r}")
        else:
            out.append(int(s))
    return tuple(out)


#: A field's layout per number of spatial axes: one (x, y[, z]) component per axis.
_FIELD_LAYOUTS = {2: "[B, H, W, 2] (x, y)", 3: "[B, D, H, W, 3] (x, y, z)"}


def check_field_shape(shape: Any, *, name: str, ndim: Optional[int] = None) -> int:
    """The number of spatial axes of a field ``[B, *spatial, n]`` of static ``shape``.

    A field (a displacement, a velocity, a sampling grid) holds one
    (x, y[, z]) component per spatial axis: ``[B, H, W, 2]`` or
    ``[B, D, H, W, 3]``, or only the one of ``ndim`` spatial axes. ``shape``
    is a tuple (None where unknown) or a ``tf.TensorShape``, so the rule
    serves tensors and a Keras layer's ``build`` alike.

    Example:
      >>> check_field_shape((None, 8, 8, 2), name="displacement")
      2
      >>> check_field_shape((1, 8, 8, 3), name="grid", ndim=2)
      Traceback (most recent call last):
      ...
      ValueError: grid must have shape [B, H, W, 2] (x, y): one component per spatial axis; got (1, 8, 8, 3)
    """
    shape = tf.TensorShape(shape)
    ranks = (4, 5) if ndim is None else (ndim + 2,)
    rank = check_rank(tf.TensorSpec(shape), name=name, ranks=ranks,
                      layout=" or ".join(_FIELD_LAYOUTS[r - 2] for r in ranks))
    if shape[-1] is not None and shape[-1] != rank - 2:
        raise ValueError(f"{name} must have shape {_FIELD_LAYOUTS[rank - 2]}: one component per "
                         f"spatial axis; got {shape}")
    return rank - 2


def check_positive(value: Any, *, name: str, dtype: tf.DType) -> tf.Tensor:
    """A positive finite scalar of ``dtype``: checked at once if static, else asserted.

    A tensor comes back as a tensor of ``dtype`` (its gradient kept).

    Example:
      >>> float(check_positive(2, name="fwhm", dtype=tf.float32))
      2.0
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not value > 0 or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite positive number; got {value!r}")
        return tf.constant(value, dtype)
    t = as_float_tensor(value, name=name)
    if t.shape.rank not in (None, 0):
        raise ValueError(f"{name} must be a scalar; got shape {t.shape}")
    t = tf.cast(t, dtype)
    static = tf.get_static_value(t)
    if static is not None:
        check_positive(float(static), name=name, dtype=dtype)
        return t   # the tensor itself, so that a learned value keeps its gradient
    return with_assertions([tf.debugging.assert_positive(t, message=f"{name} must be positive")],
                           lambda: tf.identity(t))


def check_same_batch(x: tf.Tensor, other: tf.Tensor, *, name: str,
                     reference: str = "the image") -> List[tf.Operation]:
    """Assertions that ``other`` has ``x``'s batch size (a ValueError when static).

    Example:
      >>> check_same_batch(tf.zeros([2, 3]), tf.zeros([2, 6]), name="theta")
      []
    """
    bx, bo = x.shape[0] if x.shape.rank else None, other.shape[0] if other.shape.rank else None
    if bx is not None and bo is not None:
        if bx != bo:
            raise ValueError(f"{name} must have the same batch size as {reference}; "
                             f"got {bo} for {name} and {bx} for {reference}")
        return []
    return [tf.debugging.assert_equal(
        tf.shape(x)[0], tf.shape(other)[0],
        message=f"{name} must have the same batch size as {reference}")]


def with_assertions(assertions: Sequence[Any], fn: Callable[[], Any]) -> Any:
    """``fn()`` run after the run-time ``assertions`` (in graphs; eager ones already ran).

    XLA compiles the assertions out; TF1 graphs and ``tf.function`` raise
    ``InvalidArgumentError`` with their message.

    Example:
      >>> float(with_assertions([], lambda: tf.constant(1.0)))
      1.0
    """
    if assertions and not tf.executing_eagerly():
        with tf.control_dependencies(assertions):
            return fn()
    return fn()


def missing_extra(package: str, *, by: str, extra: str) -> ImportError:
    """The ImportError a shell raises when its framework is not installed: which extra to install.

    Example:
      >>> print(missing_extra("sonnet", by="stn_snt", extra="sonnet"))
      stn_snt needs sonnet, which is not installed: pip install "spatial-layers[sonnet]"
    """
    return ImportError(f"{by} needs {package}, which is not installed: "
                       f"pip install \"spatial-layers[{extra}]\"")


def shape_list(x: tf.Tensor) -> List[SizeLike]:
    """``x``'s shape as a list: static ints where known, scalar tensors elsewhere.

    Example:
      >>> shape_list(tf.zeros([2, 3]))
      [2, 3]
    """
    static = x.shape.as_list()
    if all(s is not None for s in static):
        return static
    dynamic = tf.unstack(tf.shape(x), num=len(static))
    return [s if s is not None else d for s, d in zip(static, dynamic)]


def compute_dtype(*dtypes: tf.DType) -> tf.DType:
    """Where coordinates are computed: float64 if any input is, else float32.

    Half precision cannot even count pixels past 2048, so float16 and
    bfloat16 inputs are computed in float32 and cast back.

    Example:
      >>> compute_dtype(tf.float16), compute_dtype(tf.float32, tf.float64)
      (tf.float32, tf.float64)
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
_KERNELS = os.environ.get("SPATIAL_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")
_jitted: dict = {}


def use_kernels(enabled: bool) -> None:
    """Chooses the hand-tuned kernels (default) or the direct maths.

    With kernels off, ``stn`` and ``dsnt`` run the definitions written in
    their own modules as plain TensorFlow ops with automatic gradients: the
    reference the kernels (``_stn_kernels.py``, ``_dsnt_kernels.py``) are
    tested against. Same numbers to float round-off; the kernels are faster
    and need less memory. Also set by the environment variable
    ``SPATIAL_KERNELS=0`` before import. Takes effect for calls traced after it.

    Example:
      >>> use_kernels(False); kernels_enabled()
      False
      >>> use_kernels(True)
    """
    global _KERNELS
    _KERNELS = check_bool(enabled, name="enabled")


def kernels_enabled() -> bool:
    """Whether the hand-tuned kernels are used (see :func:`use_kernels`).

    Example:
      >>> kernels_enabled()
      True
    """
    return _KERNELS


def set_jit(enabled: bool) -> None:
    """Chooses whether inner functions run XLA-compiled (default) or as plain ops.

    Both give the same numbers to float round-off; plain ops are there for
    platforms without XLA. Takes effect for calls traced after it.

    Example:
      >>> set_jit(False); jit_enabled()
      False
      >>> set_jit(True)
    """
    global _JIT
    _JIT = check_bool(enabled, name="enabled")


def jit_enabled() -> bool:
    """Whether :func:`compiled` currently XLA-compiles.

    Example:
      >>> jit_enabled()
      True
    """
    return _JIT


def compiled(fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """Calls ``fn(*args, **options)``, XLA-compiled unless ``set_jit(False)``.

    ``args`` are tensors; ``options`` are named Python values (strings,
    bools, ints, tuples) fixed at trace time. One compiled function per
    (fn, options, the inputs' static shapes and dtypes), each traced once,
    as a plain ``tf.function`` traces once per shape: the code inside sees
    every size TensorFlow knows (the kernels choose their fast paths from
    static sizes), and a call's result does not depend on which sizes ran
    before in the process (docs/performance.md, "Compiled-function
    cache"). A partial rather than a lambda so that
    TensorFlow's retracing statistics are kept per function (they are keyed
    by code object). Gradients of the call are compiled too.

    Example:
      >>> float(compiled(lambda x, *, scale: x * scale, tf.constant(2.0), scale=3.0))
      6.0
    """
    if not _JIT:
        return fn(*args, **options)
    key = (fn, tuple(sorted(options.items())), tuple(_signature(a) for a in tf.nest.flatten(args)))
    if key not in _jitted:
        _jitted[key] = tf.function(functools.partial(fn, **options), jit_compile=True)
    return _jitted[key](*args)


def _signature(x: Any) -> Tuple[Any, str]:
    """``x``'s static shape (a tuple, None entries unknown; None if the rank is) and dtype."""
    shape = tf.TensorShape(getattr(x, "shape", None))
    dims = tuple(shape.as_list()) if shape.rank is not None else None
    return dims, str(getattr(x, "dtype", type(x).__name__))
