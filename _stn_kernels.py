"""Hand-tuned kernels for ``stn``'s sampler: optimisations of the direct maths in ``stn.py``.

``stn.py`` defines the sampler the most direct way: the taps around each
point (the 2^n corners for N-linear interpolation, one pixel for nearest,
16 for bicubic) and their weights, then ``stn._taps``, a masked
``gather_nd`` whose gradient TensorFlow derives. The functions here compute
the same numbers faster and with less memory. ``stn`` uses them unless
``spatial_convention.use_kernels(False)``; ``tests/test_stn_kernels.py``
compares the two, values and gradients, 2-D and 3-D.

* :func:`staged`: coordinates and sampler as two XLA-compiled functions,
  each with a compiled backward that recomputes rather than keeps.
* :func:`taps`: the weighted gather, its gradient written out.
* :func:`linear`: N-linear interpolation read from a zero-padded image
  (no masks), its gradient to the coordinates written out; images of few
  channels are read a whole 2^n-corner window at a time.

Each trick carries a comment saying what it buys; the measurements are in
``docs/performance.md``. This is the only module of the STN with
hand-written gradients. Imports only TensorFlow, NumPy and
``spatial_convention``.
"""

import tensorflow as tf

import spatial_convention

# The image gradient's scatter-add is split into this many independent
# scatters over the batch (see _scatter_add_per_image).
_SCATTER_PARTS = 4

# N-linear interpolation reads an image through its corner windows (see
# _corner_windows) when a window, 2^n x channels values, is at most this
# wide (2-D: up to 3 channels; 3-D: 1); wider ones corner by corner. At the
# widest windows kept, time and memory under XLA's default CPU scheduler
# still gain, while the sequential scheduler's memory loses
# (docs/performance.md, "Corner windows").
_WINDOW_MAX_WIDTH = 12


def staged(pixels, sample, img, arg, pixel_options, sample_options):
    """``sample(img, pixels(img, arg))``, as two compiled functions on purpose.

    Exactness: the sampler gets the coordinates as computed values. Inside
    one XLA computation the coordinate arithmetic would be recomputed in
    every fusion that uses it, and a multiply-add contracted to an FMA in
    one fusion but not in another can put the same coordinate on either
    side of an integer for a corner's index and for its weight: a whole
    pixel wrong (docs/performance.md, "Staged compilation (two compiled
    halves)"). From its inputs on, the sampler only rounds exactly (clamp,
    floor, subtracting the floor), so indices and weights always agree.

    Memory: each has a compiled backward that recomputes what it needs
    from the inputs (see :func:`_rematerialized`).
    """
    coords = _rematerialized(pixels, img, arg, pixel_options)
    return _rematerialized(sample, img, coords, dict(fast=True, **sample_options))


def _rematerialized(fn, img, arg, options):
    """``fn(img, arg, **options)`` compiled, with a compiled backward that recomputes.

    Only the inputs live between the passes: the backward runs ``fn`` again
    under a tape (XLA drops what the gradient does not use). A compiled
    function differentiated the usual way returns everything its backward
    reads as extra outputs, copies of its inputs included. Buys memory at
    some time (docs/performance.md, "Recomputing backward").
    """
    args = [img] + tf.nest.flatten(arg)

    @tf.custom_gradient
    def call(*args):
        out = spatial_convention.compiled(fn, args[0], _pack(arg, args[1:]), **options)

        def grad(*upstream):
            return spatial_convention.compiled(_vjp, list(args), list(upstream), forward=fn,
                                               listed=isinstance(arg, (list, tuple)), **options)

        return out, grad

    return call(*args)


def _pack(like, flat):
    return list(flat) if isinstance(like, (list, tuple)) else flat[0]


def _vjp(args, upstream, *, forward, listed, **options):
    """Gradients of ``forward(args[0], args[1:], **options)`` to all args, given ``upstream``.

    Each argument is its own tensor here: the same tensor passed twice (a
    field warping itself, as in ``stn.integrate_velocity``) would otherwise
    get the whole gradient at both places, counted twice by the caller.
    """
    args = [tf.identity(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = forward(args[0], list(args[1:]) if listed else args[1], **options)
    return tape.gradient(tf.nest.flatten(out), args, output_gradients=upstream,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


# --------------------------------------------------------------------------
# Flat pixel rows
# --------------------------------------------------------------------------

def _sizes(img):
    """Spatial sizes of ``img`` [B, *spatial, C] in (x, y[, z]) order."""
    return spatial_convention.shape_list(img)[-2:0:-1]


def _batch_index(like):
    """``[B, 1, ..., 1]`` batch indices broadcasting against ``like``."""
    return tf.reshape(tf.range(tf.shape(like)[0]), [-1] + [1] * (like.shape.rank - 1))


def _flat_rows(batch, positions, sizes):
    """Row of pixel (b, positions) of an image viewed as ``[B * prod(sizes), C]``.

    ``positions`` and ``sizes`` are listed (x, y[, z]); the image's layout
    is (z, y, x), x fastest.
    """
    row = batch
    for p, n in zip(reversed(positions), reversed(sizes)):
        row = row * n + p
    return row


def _clip_int(i, low, high):
    return tf.minimum(tf.maximum(i, low), high)


def _pixel_rows(img):
    """``[B, *spatial, C]`` -> ``[B * prod(spatial), C]`` (C static when known)."""
    c = img.shape[-1] if img.shape[-1] is not None else tf.shape(img)[-1]
    return tf.reshape(img, [-1, c])


# --------------------------------------------------------------------------
# The weighted gather and its gradient
# --------------------------------------------------------------------------

def _tap_sum(gathered, weights):
    """``sum_k weights[..., k] * gathered[..., k, :]``, ``[B, ..., C]``.

    Unrolled over the K taps: XLA compiles it to one loop, where a
    reduction over the tap axis was much slower (docs/performance.md,
    "Unrolled tap sum").
    """
    out = gathered[..., 0, :] * weights[..., 0:1]
    for k in range(1, weights.shape[-1]):
        out += gathered[..., k, :] * weights[..., k:k + 1]
    return out


def _weighted_sum(img, rows, weights):
    """``sum_k weights[..., k] * img[rows[..., k]]``, ``[B, ..., C]``."""
    return _tap_sum(tf.gather(_pixel_rows(img), rows), weights)   # gathered [B, ..., K, C]


def _scatter_add_per_image(weights, values, rows, shape):
    """Scatter-add of ``weights[..., k] * values`` at flat ``rows[..., k]``, to ``shape``.

    Done as ``_SCATTER_PARTS`` independent scatters over slices of the
    batch (each image's rows stay inside its own block): XLA runs a scatter
    as one serial loop on CPU but runs independent ones side by side. Each
    part forms its own updates, so no slice of a large tensor is copied
    (docs/performance.md, "Scatter split over the batch").

    Rows of 4k + 3 channels get one zero channel for the scatter: XLA's CPU
    scatter takes less time for 4 channels than for 3 (and 8 than 7);
    padding other counts lost time (docs/performance.md, "A zero channel
    for 4k + 3 channels").
    """
    batch = shape[0]
    per_image = tf.reduce_prod(shape[1:-1])
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


def _weighted_sum_grad(img, rows, weights, g):
    """Gradients of :func:`_weighted_sum` to img and weights, upstream ``g``.

    The taps are gathered again, one at a time, each dotted with ``g`` as
    it is read: nothing of size ``[B, ..., K, C]`` is formed.
    """
    d_img = _scatter_add_per_image(weights, g, rows, tf.shape(img))
    pixels = _pixel_rows(img)
    d_weights = [tf.reduce_sum(tf.gather(pixels, rows[..., k]) * g, axis=-1)
                 for k in range(rows.shape[-1])]
    return d_img, tf.stack(d_weights, axis=-1)


def taps(img, positions, weights):
    """``stn._taps`` with its gradient written out: taps outside the image read 0.

    Args:
      img: ``[B, *spatial, C]``.
      positions: per axis (x, y[, z]), int32 ``[B, ..., K]`` tap positions.
      weights: ``[B, ..., K]`` (float).

    Returns:
      ``[B, ..., C]`` in img's dtype.
    """
    sizes = _sizes(img)
    valid = tf.reduce_all(tf.stack([(p >= 0) & (p < n) for p, n in zip(positions, sizes)]), 0)
    clipped = [_clip_int(p, 0, n - 1) for p, n in zip(positions, sizes)]
    rows = _flat_rows(_batch_index(positions[0]), clipped, sizes)
    weights = tf.cast(weights, img.dtype)
    # 0 * w rather than 0: a NaN weight (NaN coordinate) stays NaN.
    weights = tf.where(valid, weights, 0.0 * weights)

    @tf.custom_gradient
    def gather(img, weights):
        def grad(g):
            return _weighted_sum_grad(img, rows, weights, g)

        return _weighted_sum(img, rows, weights), grad

    return gather(img, weights)


# --------------------------------------------------------------------------
# N-linear interpolation
# --------------------------------------------------------------------------

def _corner_windows(padded, n):
    """``[B, *(s + 3), C]`` -> ``[B, *(s + 2), 2^n C]``: each cell's 2^n corners side by side.

    Position ``p`` of the result holds the pixels at ``p + offset`` for the
    corners of ``spatial_convention.cell_corners``, in that order, C channels each.

    What it buys: one gather of 2^n C values per output point instead of
    2^n gathers of C, and in the gradient one scatter row instead of 2^n.
    XLA's CPU gather and scatter pay per row, so the fewer the channels the
    more it saves; building the 2^n-times-larger image costs about what it
    saves at 16 values and more beyond, hence ``_WINDOW_MAX_WIDTH``
    (docs/performance.md, "Corner windows").
    """
    sizes = _sizes(padded)
    windows = []
    for offset in spatial_convention.cell_corners(n):
        cell = [slice(o, o + s - 1) for o, s in zip(offset, sizes)]
        windows.append(padded[tuple([slice(None)] + cell[::-1] + [slice(None)])])
    return tf.concat(windows, axis=-1)


def _corner_windows_grad(d_windows, n):
    """The adjoint of :func:`_corner_windows`: each corner's share added back at its pixel."""
    c = d_windows.shape[-1] // 2 ** n
    d_padded = 0
    for k, offset in enumerate(spatial_convention.cell_corners(n)):
        pads = [[0, 0]] + [[o, 1 - o] for o in offset[::-1]] + [[0, 0]]
        d_padded += tf.pad(d_windows[..., k * c:(k + 1) * c], pads)
    return d_padded


def _window_taps(windows, rows, taps):
    """The windows at ``rows`` ``[B, ...]``, split into their taps: ``[B, ..., taps, C]``."""
    gathered = tf.gather(_pixel_rows(windows), rows)   # [B, ..., taps * C]
    return tf.reshape(gathered, tf.concat([tf.shape(rows), [taps, windows.shape[-1] // taps]], 0))


def _window_sum(windows, rows, weights):
    """``sum_k weights[..., k] * corner k of windows[rows]``, ``[B, ..., C]``."""
    return _tap_sum(_window_taps(windows, rows, weights.shape[-1]), weights)


def _window_sum_grad(windows, rows, weights, g):
    """Gradients of :func:`_window_sum` to windows and weights, upstream ``g``.

    One scatter, not split over the batch as :func:`_scatter_add_per_image`
    is: with rows this wide the split bought nothing (docs/performance.md,
    "Corner windows").
    """
    width = windows.shape[-1]
    updates = weights[..., None] * g[..., None, :]      # [B, ..., taps, C]
    updates = tf.reshape(updates, tf.concat([tf.shape(rows), [width]], 0))
    d_rows = tf.math.unsorted_segment_sum(updates, rows, tf.size(windows) // width)
    gathered = _window_taps(windows, rows, weights.shape[-1])
    d_weights = tf.reduce_sum(gathered * g[..., None, :], axis=-1)
    return tf.reshape(d_rows, tf.shape(windows)), d_weights


def linear(img, coords):
    """``stn``'s N-linear interpolation at pixel coordinates, zero outside.

    The same numbers as ``stn._taps(img, *stn._linear_taps(coords, sizes))``;
    the gradients are written out.

    * The image is padded with zeros (1 pixel before, 2 after each spatial
      axis) and coordinates are clamped to [-1, n]: every corner is then
      inside the padded image, so there are no masks, and no value changes
      (outside that band all corners are padding).
    * The corners' weights are built by broadcasting over a last axis of
      2^n, not by stacking: XLA's CPU concatenation costs more than a
      broadcast (docs/performance.md, "Broadcast corner weights").
    * The gradient to the coordinates is written out: autodiff of the
      weights kept several more ``[B, ...]`` tensors, and copies of the
      weights and of the padded image, between the passes
      (docs/performance.md, "Written-out gradients").
    * Images of few (static) channels are read through their corner
      windows (:func:`_corner_windows`): one row of 2^n C values per point
      instead of 2^n rows of C.

    Args:
      img: ``[B, *spatial, C]``.
      coords: per axis (x, y[, z]), ``[B, *out]`` pixel coordinates (pixel
        ``i`` centred at ``i``) in a float dtype.

    Returns:
      ``[B, *out, C]`` in img's dtype.
    """
    n = len(coords)
    dtype = coords[0].dtype
    sizes = _sizes(img)
    windowed = img.shape[-1] is not None and 2 ** n * img.shape[-1] <= _WINDOW_MAX_WIDTH
    # Corners with x fastest, as stn._linear_taps lists them; masks[a][k] is
    # 1 where corner k is on the upper side along axis a.
    masks = [tf.constant([c[a] for c in spatial_convention.cell_corners(n)], dtype) for a in range(n)]
    padded_sizes = [s + 3 for s in sizes]
    if not windowed:   # each corner's row offset in the padded image
        strides = [1]
        for s in padded_sizes[:-1]:
            strides.append(strides[-1] * s)
        offsets = sum(tf.cast(masks[a], tf.int32) * strides[a] for a in range(n))

    @tf.custom_gradient
    def sample(img, *coords):
        upper = [tf.cast(s, dtype) for s in sizes]
        clamped = [tf.clip_by_value(c, -1.0, u) for c, u in zip(coords, upper)]
        lower = [tf.floor(c) for c in clamped]
        fractions = [c - f for c, f in zip(clamped, lower)]
        # Per axis, (1 - f or f) for each corner.
        factors = [(1.0 - m) + (2.0 * m - 1.0) * f[..., None] for m, f in zip(masks, fractions)]
        product = factors[0]
        for f in factors[1:]:
            product = product * f
        weights = tf.cast(product, img.dtype)
        # +1: position in the padded image. The integer clip only matters for
        # NaN coordinates, whose integer cast is undefined: never read outside.
        base = [_clip_int(tf.cast(f, tf.int32) + 1, 0, s + 1) for f, s in zip(lower, sizes)]
        batch = _batch_index(coords[0])
        padded = tf.pad(img, [[0, 0]] + [[1, 2]] * n + [[0, 0]])
        if windowed:
            source = _corner_windows(padded, n)
            rows = _flat_rows(batch, base, [s + 2 for s in sizes])
            read, read_grad = _window_sum, _window_sum_grad
        else:
            source = padded
            rows = _flat_rows(batch, base, padded_sizes)[..., None] + offsets
            read, read_grad = _weighted_sum, _weighted_sum_grad

        def grad(g):
            d_source, d_weights = read_grad(source, rows, weights, g)
            d_padded = _corner_windows_grad(d_source, n) if windowed else d_source
            d_weights = tf.cast(d_weights, dtype)
            d_coords = []
            for a in range(n):
                # d weight_k / d f_a = (2 m_a - 1) * prod over the other axes.
                others = 2.0 * masks[a] - 1.0
                for b in range(n):
                    if b != a:
                        others = others * factors[b]
                d = tf.reduce_sum(d_weights * others, axis=-1)
                # clip_by_value's gradient: none strictly outside [-1, n].
                outside = (coords[a] < -1.0) | (coords[a] > upper[a])
                d_coords.append(tf.where(outside, tf.zeros_like(d), d))
            inner = tuple([slice(None)] + [slice(1, s + 1) for s in reversed(sizes)]
                          + [slice(None)])
            return [d_padded[inner]] + d_coords

        return read(source, rows, weights), grad

    return sample(img, *coords)
