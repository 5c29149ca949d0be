"""Mutants of the spatial transformer: sampler, padding, grids, transforms,
dense fields, thin-plate splines; 2-D and 3-D.

The sampler exists twice: the direct maths in ``stn.py`` (``_linear_taps``,
``_taps``: taps and weights, autodiff) and the hand-tuned kernels in
``_stn_kernels.py`` (``linear``, ``taps``: written-out gradients), used by
default. Where both implement a behaviour, both get the mutant: ``stn-*``
for the kernel (what every test runs), ``stn-direct-*`` for the direct
maths, which only runs under ``spatial_convention.use_kernels(False)``:
only ``test_stn_kernels.py::test_kernels_match_the_direct_sampler`` turns
the kernels off, so the direct mutants run that test first. Padding
(``_apply_padding``), the nearest and bicubic taps and the coordinates are
shared by both paths.

FILES includes any private top-level module (``_*.py``) so that a snippet
still resolves when code moves between ``stn.py`` and its kernels.
"""
from . import Mutant

FILES = ("stn.py", "_*.py")
ARGS = ("-k", "not (test_compat and dsnt)")   # of test_compat, the stn and coordconv cases
TESTS = ["tests/test_stn.py", "tests/test_stn_snt.py", "tests/test_compat.py",
         "tests/test_properties.py", "tests/test_stn_volumes.py", "tests/test_stn_kernels.py",
         "tests/test_dense_fields.py", "tests/test_tps.py"]

# pytest 9 runs a file's tests in file order even when one of them is also
# named as a node id, so a mutant's fastest killer goes first as a file.
DIRECT = ("tests/test_stn_kernels.py::test_kernels_match_the_direct_sampler",
          *[t for t in TESTS if t != "tests/test_stn_kernels.py"])


def first(*tests):
    """The group's tests with ``tests`` (the fast killers) moved to the front."""
    return (*tests, *[t for t in TESTS if t not in tests])


VOLUMES = first("tests/test_stn_volumes.py")
FIELDS = first("tests/test_dense_fields.py")
TPS = first("tests/test_tps.py")

MUTANTS = [
    # --- padding: PyTorch's border rule for the gradient, reflection (shared)
    Mutant("stn-border-grad-lower",
           "inside = tf.logical_and(coord > 0.0, coord < upper)",
           "inside = tf.logical_and(coord >= 0.0, coord < upper)",
           "border/reflection: a coordinate exactly on the lower border gets a gradient"),
    Mutant("stn-border-grad-upper",
           "inside = tf.logical_and(coord > 0.0, coord < upper)",
           "inside = tf.logical_and(coord > 0.0, coord <= upper)",
           "border/reflection: a coordinate exactly on the upper border gets a gradient"),
    Mutant("stn-reflect-offset",
           "low, span = tf.constant(-0.5, dtype), n",
           "low, span = tf.constant(0.5, dtype), n",
           "reflection (align_corners=False): mirror line at +0.5 instead of -0.5 px"),
    Mutant("stn-reflect-span",
           "low, span = tf.zeros([], dtype), n - 1.0",
           "low, span = tf.zeros([], dtype), n",
           "reflection (align_corners=True): span n instead of n - 1"),
    Mutant("stn-reflect-parity",
           "odd = tf.equal(tf.math.floormod(flips, 2.0), 1.0)",
           "odd = tf.equal(tf.math.floormod(flips, 2.0), 0.0)",
           "reflection: even and odd folds swapped"),
    Mutant("stn-reflect-convention",
           "_clip_with_border_grad(_reflect(coord, size, align_corners), size)",
           "_clip_with_border_grad(_reflect(coord, size, not align_corners), size)",
           "reflection lines of the other align_corners convention"),
    # --- N-linear interpolation, kernel (_stn_kernels.linear)
    Mutant("stn-bilinear-corner-rows",
           "strides.append(strides[-1] * s)",
           "strides.append(strides[-1] * (s - 1))",
           "N-linear kernel: row stride of the padded image off by one (upper-y corners "
           "read the wrong pixel)"),
    Mutant("stn-bilinear-pad-offset",
           "base = [_clip_int(tf.cast(f, tf.int32) + 1, 0, s + 1)",
           "base = [_clip_int(tf.cast(f, tf.int32), 0, s + 1)",
           "N-linear kernel: corner index misses the one-pixel pad offset (every axis)"),
    Mutant("stn-bilinear-clamp-xy",
           "clamped = [tf.clip_by_value(c, -1.0, u) for c, u in zip(coords, upper)]",
           "clamped = [tf.clip_by_value(c, -1.0, u) for c, u in zip(coords, upper[::-1])]",
           "N-linear kernel: coordinates clamped to the sizes in layout order (x to the height)"),
    Mutant("stn-bilinear-weight-xy",
           "for m, f in zip(masks, fractions)]",
           "for m, f in zip(masks, fractions[::-1])]",
           "N-linear kernel: each axis weighted by the fraction of the mirrored axis "
           "(x by y's in 2-D, x by z's in 3-D)"),
    Mutant("stn-bilinear-grad-fraction",
           "others = others * factors[b]",
           "others = others * factors[a]",
           "N-linear kernel gradient: d/dx weighted by x's own factor instead of the "
           "other axes'"),
    Mutant("stn-bilinear-grad-sign",
           "others = 2.0 * masks[a] - 1.0",
           "others = 1.0 - 2.0 * masks[a]",
           "N-linear kernel gradient: d weight / d fraction with the wrong sign"),
    Mutant("stn-bilinear-grad-mask-xy",
           "outside = (coords[a] < -1.0) | (coords[a] > upper[a])",
           "outside = (coords[a] < -1.0) | (coords[a] > upper[n - 1 - a])",
           "N-linear kernel gradient: x's clamp mask uses the height"),
    Mutant("stn-bilinear-grad-mask-closed",
           "outside = (coords[a] < -1.0) | (coords[a] > upper[a])",
           "outside = (coords[a] <= -1.0) | (coords[a] >= upper[a])",
           "N-linear kernel gradient (zeros): no gradient exactly at pixel -1 / n"),
    Mutant("stn-trilinear-z-stride",
           "strides.append(strides[-1] * s)",
           "strides.append(s)",
           "trilinear kernel: the upper-z corners step by the padded height instead of "
           "height x width (right in 2-D)",
           tests=VOLUMES),
    # --- N-linear kernel, narrow images read through corner windows
    # (_stn_kernels._corner_windows; wide images take the rows above)
    Mutant("stn-window-cell-offset",
           "cell = [slice(o, o + s - 1) for o, s in zip(offset, sizes)]",
           "cell = [slice(0, s - 1) for o, s in zip(offset, sizes)]",
           "corner windows: every corner reads the cell's first pixel"),
    Mutant("stn-window-rows-size",
           "rows = _flat_rows(batch, base, [s + 2 for s in sizes])",
           "rows = _flat_rows(batch, base, [s + 3 for s in sizes])",
           "corner windows: rows counted in the padded image's sizes, not the windows'"),
    Mutant("stn-window-grad-side",
           "pads = [[0, 0]] + [[o, 1 - o] for o in offset[::-1]] + [[0, 0]]",
           "pads = [[0, 0]] + [[1 - o, o] for o in offset[::-1]] + [[0, 0]]",
           "corner windows' adjoint: each corner's gradient lands on the opposite side "
           "of the cell"),
    Mutant("stn-window-grad-axes",
           "pads = [[0, 0]] + [[o, 1 - o] for o in offset[::-1]] + [[0, 0]]",
           "pads = [[0, 0]] + [[o, 1 - o] for o in offset] + [[0, 0]]",
           "corner windows' adjoint: corner offsets read (z, y, x) instead of (x, y, z): "
           "the x and y shares swapped"),
    # --- the kernels' staged, compiled backward (_stn_kernels._rematerialized)
    Mutant("stn-staged-backward-upstream",
           "return tape.gradient(tf.nest.flatten(out), args, output_gradients=upstream,",
           "return tape.gradient(tf.nest.flatten(out), args,",
           "staged backward: the recomputed gradient ignores the upstream gradient (ones)"),
    Mutant("stn-vjp-shared-argument",
           "    args = [tf.identity(a) for a in args]\n",
           "    args = list(args)\n",
           "staged backward: a tensor passed twice (a field warping itself, as in "
           "integrate_velocity) gets its whole gradient at both places (the bug fixed in "
           "1d721f5)",
           tests=FIELDS),
    Mutant("stn-weights-grad-tap-index",
           "tf.gather(pixels, rows[..., k]) * g, axis=-1)",
           "tf.gather(pixels, rows[..., 0]) * g, axis=-1)",
           "weighted-gather gradient to the weights: every tap reads tap 0's pixel"),
    # --- N-linear interpolation, direct maths (stn._linear_taps)
    Mutant("stn-direct-linear-clamp-xy",
           "tf.cast(n, c.dtype)) for c, n in zip(coords, sizes)]",
           "tf.cast(n, c.dtype)) for c, n in zip(coords, sizes[::-1])]",
           "N-linear taps (direct): coordinates clamped to the sizes in layout order",
           tests=DIRECT),
    Mutant("stn-direct-linear-weight-xy",
           "weight *= fractions[axis] if upper else 1.0 - fractions[axis]",
           "weight *= fractions[-1 - axis] if upper else 1.0 - fractions[-1 - axis]",
           "N-linear taps (direct): each axis weighted by the fraction of the mirrored axis",
           tests=DIRECT),
    # --- the weighted gather, kernel (_stn_kernels.taps, nearest and bicubic)
    Mutant("stn-scatter-offset",
           "rows[start:stop] - start * per_image",
           "rows[start:stop]",
           "image gradient: scatter rows not shifted to the batch slice"),
    Mutant("stn-taps-valid-upper",
           "valid = tf.reduce_all(tf.stack([(p >= 0) & (p < n)",
           "valid = tf.reduce_all(tf.stack([(p >= 0) & (p <= n)",
           "taps kernel: a tap at position n (any axis) counts as inside"),
    Mutant("stn-taps-clip-xy",
           "clipped = [_clip_int(p, 0, n - 1) for p, n in zip(positions, sizes)]",
           "clipped = [_clip_int(p, 0, n - 1) for p, n in zip(positions, sizes[::-1])]",
           "taps kernel: x clipped to the height, y to the width"),
    Mutant("stn-taps-outside-weight",
           "weights = tf.where(valid, weights, 0.0 * weights)",
           "weights = tf.where(valid, weights, weights)",
           "taps kernel: outside taps read the clipped edge pixel instead of 0"),
    # --- the weighted gather, direct maths (stn._taps)
    Mutant("stn-direct-taps-valid-upper",
           "inside = tf.reduce_all(tf.stack([(p >= 0) & (p < n)",
           "inside = tf.reduce_all(tf.stack([(p >= 0) & (p <= n)",
           "taps (direct): a tap at position n (any axis) counts as inside",
           tests=DIRECT),
    Mutant("stn-direct-taps-clip-xy",
           "for p, n in zip(reversed(positions), reversed(sizes))]",
           "for p, n in zip(reversed(positions), sizes)]",
           "taps (direct): gather indices clipped to the sizes in the wrong order",
           tests=DIRECT),
    Mutant("stn-direct-taps-outside-weight",
           "weights = tf.where(inside, weights, 0.0 * weights)",
           "weights = tf.where(inside, weights, weights)",
           "taps (direct): outside taps read the clipped edge pixel instead of 0",
           tests=DIRECT),
    # --- nearest and bicubic taps (shared)
    Mutant("stn-nearest-round-half-up",
           "_int_position(tf.round(tf.stop_gradient(c)))",
           "_int_position(tf.floor(tf.stop_gradient(c) + 0.5))",
           "nearest: rounds half up instead of half to even"),
    Mutant("stn-cubic-constant",
           "_CUBIC_A = -0.75",
           "_CUBIC_A = -0.5",
           "bicubic: Keys' A = -0.5 instead of PyTorch's -0.75"),
    Mutant("stn-cubic-far-sign",
           "near(t), near(1.0 - t), far(2.0 - t)]",
           "near(t), near(1.0 - t), far(t - 2.0)]",
           "bicubic: last tap weight evaluated at a negative distance"),
    Mutant("stn-cubic-tap-offsets",
           "tf.constant([-1.0, 0.0, 1.0, 2.0], coord.dtype)",
           "tf.constant([0.0, 1.0, 2.0, 3.0], coord.dtype)",
           "bicubic: taps start at floor instead of floor - 1"),
    Mutant("stn-cubic-reflect-period",
           "period = 2.0 * (n - 1.0) if align_corners else 2.0 * n",
           "period = 2.0 * n if align_corners else 2.0 * (n - 1.0)",
           "bicubic reflection: fold period of the other convention"),
    # --- grids and transforms
    Mutant("stn-grid-x-size",
           "for axis, size in enumerate(_sizes_xyz(img))]",
           "for axis, size in enumerate(spatial_convention.shape_list(img)[1:-1])]",
           "grid_sample: grid components unnormalised by the sizes in layout order "
           "(x by the height)"),
    Mutant("stn-grid-convention",
           "img, _grid_pixels, grid, pixel_options=dict(align_corners=sampling[\"align_corners\"]),",
           "img, _grid_pixels, grid, pixel_options=dict(align_corners=False),",
           "grid_sample: the grid unnormalised in the default convention whatever "
           "align_corners (it only reaches the reflection lines)"),
    Mutant("stn-transform-scale-xy",
           "total += t[:, r, c] * tf.math.divide_no_nan(scale, out_half[c]) * offsets[c]",
           "total += t[:, r, c] * tf.math.divide_no_nan(in_half[c], out_half[c]) * offsets[c]",
           "affine: theta[r, c] scaled by input axis c's half extent instead of axis r's "
           "(theta[0, 1] by the height)"),
    Mutant("stn-transform-offset-xy",
           "tf.range(size, dtype=dtype) - centre(size, dtype), shape))",
           "tf.range(size, dtype=dtype) - centre(sizes[n - 1 - axis], dtype), shape))",
           "affine/warp: output offsets from the centre of the mirrored axis (x from the "
           "height's)"),
    Mutant("stn-transform-out-half-xy",
           "out_half = [half_extent(s, align_corners, dtype) for s in out_sizes]",
           "out_half = [half_extent(s, align_corners, dtype) for s in reversed(out_sizes)]",
           "affine: output half extents in layout order (x's from the height)"),
    Mutant("stn-transform-in-centre-xy",
           "in_centre = [centre(s, dtype) for s in sizes]",
           "in_centre = [centre(s, dtype) for s in reversed(sizes)]",
           "affine: input centres in layout order ((x, y) swapped)"),
    Mutant("stn-affine-grid-3d-z-column",
           "for c in range(1, n):",
           "for c in range(1, 2):",
           "3-D affine grid: theta's z column left out (a 2-D leftover; right in 2-D)",
           tests=VOLUMES),
    Mutant("stn-projective-h22",
           "tf.reshape(tf.concat([theta, tf.ones_like(theta[:, :1])], 1),",
           "tf.reshape(tf.concat([theta, tf.zeros_like(theta[:, :1])], 1),",
           "projective [B, 8] / [B, 15]: h22 = 0 instead of 1"),
    Mutant("stn-sampler-xy",
           "grid = tf.stack([tf.cast(x, dtype), tf.cast(y, dtype)], axis=-1)",
           "grid = tf.stack([tf.cast(y, dtype), tf.cast(x, dtype)], axis=-1)",
           "bilinear_sampler: x and y swapped"),
    Mutant("stn-similarity-sign",
           "tf.stack([c, -s, s, c], axis=-1)",
           "tf.stack([c, s, -s, c], axis=-1)",
           "similarity/rotation (2-D): rotation by -angle"),
    Mutant("stn-skew-sign",
           "tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1)",
           "tf.stack([zero, z, -y, -z, zero, x, y, -x, zero], axis=-1)",
           "similarity/rotation (3-D): cross-product matrix transposed, rotation by -angle",
           tests=VOLUMES),
    Mutant("stn-attention-translation-xy",
           "return _matrix(scale, params[:, 1:])",
           "return _matrix(scale, params[:, :0:-1])",
           "attention: translation read in reverse order ((ty, tx) for (tx, ty))"),
    Mutant("stn-expm-taylor",
           "for k in range(_EXPM_TAYLOR_DEGREE, 0, -1):",
           "for k in range(_EXPM_TAYLOR_DEGREE, 1, -1):",
           "expm: Taylor series misses its k = 1 step"),
    Mutant("stn-expm-scaling-sign",
           "scaled = a * tf.pow(tf.constant(2.0, dtype), -s)",
           "scaled = a * tf.pow(tf.constant(2.0, dtype), s)",
           "expm: scaled up instead of down before squaring"),
    Mutant("stn-compose-order",
           "product = tf.matmul(a, tf.cast(b, a.dtype))",
           "product = tf.matmul(tf.cast(b, a.dtype), a)",
           "compose_affine: product in the wrong order"),
    Mutant("stn-invert-projective-normalise",
           "return inverse / inverse[:, -1:, -1:]",
           "return inverse",
           "invert_affine (projective): result not normalised to h22 = 1"),
    # --- dense displacement fields
    Mutant("stn-warp-normalized-units",
           "d = d * in_half",
           "d = d / in_half",
           "warp (units='normalized'): displacement divided by the half extent instead of "
           "multiplied (pixels <-> normalised inverted)",
           tests=FIELDS),
    Mutant("stn-pixels-per-unit-size-order",
           "sizes = _sizes_xyz(field) if size is None else list(size)[::-1]",
           "sizes = _sizes_xyz(field) if size is None else list(size)",
           "displacement_to_normalized/_pixels: an explicit size (height, width) read "
           "as (x, y)",
           tests=FIELDS),
    Mutant("stn-integrate-velocity-scaling",
           "/ (2.0 ** steps)",
           "/ (2.0 ** (steps - 1))",
           "integrate_velocity: velocity scaled by 2^-(steps - 1) instead of 2^-steps "
           "(integrates 2 v)",
           tests=FIELDS),
    Mutant("stn-jacobian-axis-order",
           "_gradient(components[a], n - c)",
           "_gradient(components[a], c + 1)",
           "jacobian_determinant: coordinate c differentiated along tensor axis c + 1 "
           "(layout order: x along the height)",
           tests=FIELDS),
    Mutant("stn-jacobian-3d-cofactor-sign",
           "- j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])",
           "+ j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])",
           "jacobian_determinant (3-D): wrong sign of the second cofactor",
           tests=FIELDS),
    Mutant("stn-gradient-end-spacing",
           "spacing = tf.reshape(tf.cast(after - before, f.dtype), shape)",
           "spacing = tf.reshape(tf.cast(2 * tf.ones_like(i), f.dtype), shape)",
           "jacobian_determinant: one-sided differences at the borders divided by 2",
           tests=FIELDS),
    # --- thin-plate splines
    Mutant("stn-tps-kernel-distance",
           "radial = _tps_kernel(tf.reduce_sum(tf.square(d), axis=-1))",
           "radial = _tps_kernel(tf.norm(d, axis=-1))",
           "tps: the kernel U(r^2) = r^2 log r^2 is given r, not r^2 (U = r log r)",
           tests=TPS),
    Mutant("stn-tps-kernel-log",
           "squared_distance * tf.math.log(safe)",
           "tf.math.log(safe)",
           "tps: kernel log r^2 instead of r^2 log r^2",
           tests=TPS),
    # --- the Sonnet shell
    Mutant("stn_snt-default-convention",
           'align_corners: bool = False, padding_mode: stn.PaddingMode = "zeros",',
           'align_corners: bool = True, padding_mode: stn.PaddingMode = "zeros",',
           "SpatialTransformer: default align_corners=True",
           files=("stn_snt.py",), tests=first("tests/test_stn_snt.py")),
]
