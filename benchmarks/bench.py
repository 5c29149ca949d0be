#!/usr/bin/env python
"""Side-by-side benchmarks: our STN sampler and DSNT against the references.

Run from the repository root::

    python benchmarks/bench.py                 # everything, default shapes
    python benchmarks/bench.py --only stn      # only the sampler (repeat --only for more groups)
    python benchmarks/bench.py --tiny          # tiny shapes, 2 repeats (tests)
    python benchmarks/bench.py --json out.json # also write machine-readable results
    ./run.sh bench [flags]                     # same, inside .venv

Groups (``--only NAME``, repeatable): ``stn``, ``stn-small``, ``volume``,
``warp``, ``velocity``, ``dsnt``, ``dsnt3d``, ``tps``; each is described
below. Every group checks, when it builds a case, that its implementations
compute the same thing: the forward outputs (or losses) of ours and of each
reference on the benchmark's own inputs must agree to a tolerance ("atol
t": |difference| <= t x max(1, max |reference|); "rtol t": <= t x
|reference|), or the script stops with an AssertionError (a benchmark never
compares different work). The exceptions are said where they are (the seed
STN and the documented kornia TPS call compute a different function by
design). For the check, the TF steps of ``volume``, ``warp``, ``velocity``,
``tps`` and ``dsnt3d`` also return their forward output (computed anyway)
and are called once at build time (the first call, which traces and
compiles, is never timed).

What is timed (one "step", forward + backward unless marked forward-only):

STN sampler, (B, H, W, C) images, a random affine ``theta`` near a rotation
(angle in +-30 deg, scale 0.9-1.1, translation +-0.1, plus N(0, 0.02) noise),
output size = input size, bilinear, zeros padding, ``align_corners=False``;
the loss is ``sum(out * cotangent)`` with a fixed random cotangent and the
step returns the gradients with respect to the image and ``theta``:

* ``ours``: ``stn.spatial_transformer_network(img, theta)`` inside a plain
  ``tf.function`` (no flags: the default a user gets).
* ``seed stn``: the seed's ``stn`` package 1.0.1 (``spatial_transformer_network``
  in a ``tf.function``), loaded from ``$SEED_STN_DIR`` (default
  ``.venv/seed-stn``) under another module name. Note it uses the
  ``align_corners=True``-style grid with an off-by-one scale, so it computes
  a slightly different warp; same amount of work.
* ``torch``: PyTorch ``affine_grid`` + ``grid_sample`` on NCHW tensors made
  beforehand (layout conversion excluded) -- the reference of the ratios;
  ``torch +NHWC``: the same but starting from / returning NHWC tensors, the
  permutes (and their gradients) included.
* ``tf ImageProjectiveTransformV3``: TF's native C++ kernel, forward only
  (it has no gradient with respect to the transform). Our normalised
  ``theta`` is converted to its 8-parameter pixel-space form
  ``M = P_in^-1 . theta . P_out`` where ``P`` maps pixel indices to normalised
  ``align_corners=False`` coordinates (pixel i of n at (2 i + 1) / n - 1), so
  it computes the same warp as ``ours`` (bilinear, constant 0 fill).

Check: ``ours`` and ``torch`` give the same forward output (atol 1e-4).

``stn-small``: the same step, the same implementations and the same check
(``stn``'s above), at the small sizes of MNIST-like STN models: B = 64 at
28 x 28, 42 x 42 and 60 x 60 with one channel, and B = 8 at 64 x 64 x 3.
There the per-call overheads (op dispatch, thread wake-up) weigh as much
as the arithmetic.

``volume``, 5-D (trilinear) STN, volumes (B, D, H, W, C), a random 3-D
affine ``theta`` [B, 3, 4] near a rotation (Euler angles in +-15 deg, scale
0.9-1.1, translation +-0.1, plus N(0, 0.02) noise), output size = input
size, zeros padding, ``align_corners=False``; loss ``sum(out * cotangent)``,
gradients to the volume and ``theta``:

* ``ours``: ``stn.spatial_transformer_network(vol, theta)`` (a 5-D input and
  a [B, 3, 4] theta) in a plain ``tf.function``.
* ``ours affine_grid+grid_sample``: ``stn.grid_sample(vol, stn.affine_grid(theta,
  (D, H, W)))``, the two-call form (the grid is materialised).
* ``torch``: ``F.affine_grid`` (size (B, C, D, H, W)) + ``F.grid_sample``
  (bilinear = trilinear on 5-D) on an NCDHW volume made beforehand -- the
  reference.

Check: both of ours equal ``torch``'s forward output (atol 1e-4).

``warp``, a dense displacement field, 2-D: images (B, H, W, C) and a smooth
random displacement [B, H, W, 2] in *pixels* (sum of three random plane
waves per component, amplitude up to 4 pixels, so that the border is
crossed), bilinear, ``padding_mode="border"`` and ``align_corners=False``
(``stn.warp``'s defaults); loss ``sum(out * cotangent)``, gradients to the
image and the displacement:

* ``ours``: ``stn.warp(image, displacement)`` (``units="pixels"``, the
  default) in a plain ``tf.function``.
* ``torch``: ``F.grid_sample(x, identity + displacement * (2 / W, 2 / H),
  padding_mode="border", align_corners=False)`` on NCHW images: the identity
  grid (pixel centres (2 i + 1) / n - 1, the same convention) is built
  beforehand; the pixel -> normalised conversion of the displacement runs
  inside the timed step (it is part of what ``stn.warp`` does). The
  reference.

Check: the forward outputs agree (atol 1e-4).

``velocity``, diffeomorphic integration by scaling and squaring, 3-D: a
smooth random stationary velocity field [B, D, H, W, 3] in pixels (plane
waves, amplitude up to 3 pixels), 7 squarings; loss
``sum(displacement * cotangent)``, gradient to the velocity. No target:
time and memory are reported. (``--tiny`` integrates with 2 squarings.)

* ``ours``: ``stn.integrate_velocity(v, steps=7)`` in a plain ``tf.function``
  (the kernels: ``stn.warp`` staged and XLA-compiled, 7 times).
* ``ours plain``: the same traced under
  ``spatial_convention.use_kernels(False)``: the direct maths of ``stn.py``
  with TensorFlow's autodiff (its own gradients, plain ops).
* ``torch``: the same algorithm, ``field = v / 2^7`` then 7 times ``field +=
  grid_sample(field as NCDHW, identity + field * (2 / W, 2 / H, 2 / D),
  padding_mode="border", align_corners=False)`` (a permute of the field to
  NCDHW and back per step, included; the identity grid made beforehand).
  The reference of the ratios; the second ratio column is against ``ours plain``.

Check: ``ours plain`` and ``torch`` give ``ours``'s displacement (atol 1e-3
pixel: 7 compounding steps).

``tps``, a thin-plate-spline warp: images (B, H, W, C) (case B, H, W, C, L),
an L x L lattice of control points (``stn.control_point_lattice(L)``: 16
points for L = 4) shared by the batch, source points = control points +
N(0, 0.05) per image; bilinear, zeros, ``align_corners=False``; loss
``sum(out * cotangent)``, gradients to the image and the source points. The
control points are an argument of the step (not a graph constant, so that
TF cannot fold the spline's pixel features into a constant: every
implementation builds and solves the spline at every step). No target.

* ``ours``: ``stn.grid_sample(img, stn.tps_grid(control, source, (H, W)))``
  in a plain ``tf.function`` (the spline solved in float64, one system for
  the batch).
* ``ours plain``: the same traced under ``use_kernels(False)`` (the second
  ratio column is against it).
* ``kornia``: ``kornia.geometry.transform.warp_image_tps`` on NCHW images,
  given the coefficients of the same (standard) spline, solved inside the
  step with torch in float64 (``[[K, P], [P^T, 0]] w = [source; 0]``, kernel
  ``0.5 r^2 log r^2`` as kornia's) and cast to float32 as kornia's
  ``get_tps_transform`` does. The reference. ``get_tps_transform`` itself is
  not used here because it computes another spline: it puts the kernels on
  its second point set while imposing the interpolation conditions at the
  first, so for the documented call (``get_tps_transform(control, source)``,
  ``kernel_centers=source``) the warp agrees with the standard TPS only at
  the control points.
* ``kornia get_tps_transform``: that documented pair as a user calls it:
  the same amount of work, a different warp (checked only to send the
  control points to the source points). Skipped without kornia, which is
  not among the project's extras (``pip install kornia``).

Check: ``ours``, ``ours plain`` and ``kornia`` give the same output (atol
1e-4).

DSNT, logits of B x H x W with K points, targets uniform in [-0.8, 0.8],
sigma = 1 pixel (fwhm = 2 sqrt(2 ln 2)); the loss is the coordinate MSE plus
the Jensen-Shannon regulariser, mean over points; the step returns the
gradient with respect to the logits:

* ``ours``: ``dsnt.dsnt`` + ``dsnt.mse_loss`` + ``dsnt.js_reg_loss`` (NHWK
  logits) in a ``tf.function``.
* ``dsntnn``: ``flat_softmax``, ``dsnt``, ``mse_losses`` + ``js_reg_losses``
  (same sigma), ``average_loss`` on torch (NKHW logits) -- the reference.
* ``seed dsnt``: ``benchmarks/seed_dsnt.py``, a TF2 port of the seed's layer
  (Gaussians built one by one in a ``tf.while_loop`` that concatenates) in a
  ``tf.function``. One point per image only, so K points are given to it as
  ``[B * K, H, W, 1]`` (arranged beforehand); its Gaussian centres are in
  [0, 1] units, so it is given ``(t + 1) / 2``. Its loop copies everything
  drawn so far at every step (quadratic in B * K); it is skipped above
  ``--seed-dsnt-max-points`` points.

Check: ``ours`` and ``dsntnn`` give the same coordinates (atol 1e-5) and loss
(rtol 1e-4).

``dsnt3d``, the same step on volumes: logits (B, D, H, W, K), targets
(x, y, z) uniform in [-0.8, 0.8], sigma = 1 voxel:

* ``ours``: ``dsnt.dsnt`` on [B, D, H, W, K] logits + ``dsnt.mse_loss`` +
  ``dsnt.js_reg_loss`` in a ``tf.function``.
* ``dsntnn``: ``flat_softmax``, ``dsnt``, ``mse_losses`` + ``js_reg_losses``,
  ``average_loss`` on [B, K, D, H, W] logits made beforehand -- the
  reference.

Check: same coordinates (atol 1e-5) and loss (rtol 1e-4).

Method: every implementation of a case is built and warmed up (the first call
traces / compiles), then ``--repeats`` rounds time one step of each
implementation in turn, the order rotated every round (interleaved, so a noisy
neighbour hurts all alike). Each timed call comes right after ``--rewarm``
(default 1) untimed calls of the same implementation: the first call after
another framework's step pays for the switch (its thread pool woken from
sleep, the other's OpenMP threads still spinning, caches refilled) -- measured
here, 4.7 -> 7.4 ms for our DSNT step right after dsntnn's and 22 -> 26 ms for
PyTorch's STN step right after ours -- which no training loop pays.
``--rewarm 0`` times the switch as well. Reported: median and minimum seconds,
and the ratio to the reference = median over rounds of (time / reference time
in the same round). TF and PyTorch use the same number of threads
(``--threads``; by default the CPUs this process may use, which is TF's own
default). On a busy machine multi-threaded steps stall whenever one of their
threads is descheduled -- PyTorch's OpenMP barriers by up to 100x on small
steps -- so the script warns when the load average exceeds the CPU count;
``--threads 1`` then gives the fairer comparison of the kernels themselves.

Peak memory (``--memory``, on by default except in ``--tiny``), one
warmed-up step, MiB above what was in use before it (inputs excluded, outputs
included):

* TF rows: the TF allocator's peak, ``tf.config.experimental.reset_memory_stats``
  then ``get_memory_info(dev)["peak"] - ["current"]``, on ``GPU:0`` or
  ``CPU:0`` (TF 2.21 tracks its CPU allocator too; XLA buffers included). It
  counts allocator bytes, rounded up to the allocator's bins.
* torch rows: on GPU ``torch.cuda.max_memory_allocated`` growth; on CPU
  (torch keeps no CPU allocator statistics) the growth of the process's peak
  resident set: freed heap returned to the OS (``malloc_trim``), peak RSS
  reset (``/proc/self/clear_refs``), then ``VmHWM - VmRSS`` from
  ``/proc/self/status``.

The two CPU measures are not identical (allocator bytes vs resident pages), so
compare memory across frameworks only roughly; "n/a" where neither works.
"""

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

STN_SHAPES = [(32, 128, 128, 16), (16, 256, 256, 3), (64, 32, 32, 64)]
DSNT_CASES = [(64, 64, 64, 1), (64, 64, 64, 16), (256, 64, 64, 1), (256, 64, 64, 16)]
TINY_STN_SHAPES = [(3, 12, 10, 2)]
TINY_DSNT_CASES = [(2, 8, 8, 1), (3, 8, 6, 2)]

# The other groups' cases (default, tiny); their layouts are in GROUP_DIMS.
STN_SMALL_SHAPES = [(64, 28, 28, 1), (64, 42, 42, 1), (64, 60, 60, 1), (8, 64, 64, 3)]
TINY_STN_SMALL_SHAPES = [(4, 7, 7, 1)]
VOLUME_SHAPES = [(4, 64, 64, 64, 4)]
TINY_VOLUME_SHAPES = [(1, 5, 6, 7, 2)]
WARP_SHAPES = [(16, 256, 256, 3)]
TINY_WARP_SHAPES = [(2, 9, 11, 2)]
VELOCITY_SHAPES = [(2, 64, 64, 64, 3)]
TINY_VELOCITY_SHAPES = [(1, 5, 6, 7, 3)]
VELOCITY_STEPS = 7
TINY_VELOCITY_STEPS = 2   # the tiny run only checks the code path
DSNT3D_CASES = [(32, 32, 32, 32, 4)]
TINY_DSNT3D_CASES = [(2, 4, 5, 6, 2)]
TPS_CASES = [(32, 64, 64, 3, 4)]
TINY_TPS_CASES = [(2, 10, 12, 2, 3)]

# The order groups run in (also the order of --only's choices).
GROUP_ORDER = ["stn", "stn-small", "volume", "warp", "velocity", "dsnt", "dsnt3d", "tps"]
GROUP_DIMS = {"stn": "B,H,W,C", "stn-small": "B,H,W,C", "volume": "B,D,H,W,C",
              "warp": "B,H,W,C", "velocity": "B,D,H,W,3", "dsnt": "B,H,W,K",
              "dsnt3d": "B,D,H,W,K", "tps": "B,H,W,C,L (L x L control points)"}

# The targets: (group, shape, implementation, reference, bound, how)
#   how "le": time(impl) / time(ref) <= bound;  "speedup": time(ref) / time(impl) >= bound
TARGETS = [
    ("stn", (32, 128, 128, 16), "ours", "torch", 0.6, "le"),
    ("stn", (16, 256, 256, 3), "ours", "torch", 0.8, "le"),
    ("stn", (32, 128, 128, 16), "ours", "seed stn", 1.5, "speedup"),
    ("stn", (16, 256, 256, 3), "ours", "seed stn", 1.5, "speedup"),
    ("dsnt", (256, 64, 64, 1), "ours", "dsntnn", 0.5, "le"),
    ("dsnt", (256, 64, 64, 16), "ours", "dsntnn", 0.5, "le"),
    ("stn-small", (64, 28, 28, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (64, 42, 42, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (64, 60, 60, 1), "ours", "torch", 1.0, "le"),
    ("stn-small", (8, 64, 64, 3), "ours", "torch", 1.0, "le"),
    ("volume", (4, 64, 64, 64, 4), "ours", "torch", 1.0, "le"),
    ("warp", (16, 256, 256, 3), "ours", "torch", 1.0, "le"),
    ("dsnt3d", (32, 32, 32, 32, 4), "ours", "dsntnn", 0.5, "le"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time our STN sampler, warps, TPS and DSNT (forward + backward) side by "
                    "side with the seed implementations, PyTorch, kornia and dsntnn.",
        epilog="Ratios are the claim, not absolute times: run on a quiet machine, "
               "or read the ratios (interleaved, paired per round).")
    p.add_argument("--only", choices=GROUP_ORDER, action="append", metavar="GROUP",
                   help="run only this group (repeatable): " + ", ".join(GROUP_ORDER)
                        + " (the module docstring says what each times)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes, 2 repeats, 1 warm-up, no memory probe (for the test suite)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per case (default 15; 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls per implementation first (default 3; 1 with --tiny)")
    p.add_argument("--rewarm", type=int, default=1,
                   help="untimed calls of an implementation right before each of its timed "
                        "calls (default 1), so that no timing includes the switch from another "
                        "framework; 0 times the switch as well")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for TF (intra- and inter-op) and torch (default: the CPUs this "
                        "process may use, TF's own default); --threads 1 compares single-threaded "
                        "kernels, far less sensitive to a busy machine")
    p.add_argument("--memory", dest="memory", action="store_true", default=None,
                   help="measure peak memory per step (default on, off with --tiny)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--seed-dsnt-max-points", type=int, default=1024,
                   help="skip the seed DSNT port above this many points B*K (its while_loop "
                        "is quadratic; default 1024)")
    p.add_argument("--stn-shapes", default=None,
                   help="override STN shapes, e.g. '32x128x128x16,16x256x256x3'")
    p.add_argument("--dsnt-cases", default=None,
                   help="override DSNT cases B x H x W x K, e.g. '256x64x64x1'")
    p.add_argument("--json", metavar="PATH", help="write results as JSON to PATH")
    p.add_argument("--seed", type=int, default=0, help="random seed for the inputs")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 15
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.memory is None:
        args.memory = not args.tiny
    if args.repeats < 1 or args.warmup < 0 or args.rewarm < 0:
        p.error("--repeats must be >= 1, --warmup and --rewarm >= 0")
    return args


def _parse_shapes(text, n=4):
    shapes = []
    for part in text.split(","):
        dims = tuple(int(d) for d in part.lower().split("x"))
        if len(dims) != n or min(dims) < 1:
            raise SystemExit(f"bad shape {part!r}: expected {n} positive sizes like 2x8x8x3")
        shapes.append(dims)
    return shapes


# ---------------------------------------------------------------------------
# Machine description and memory probes
# ---------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssProbe:
    """Peak-RSS growth over one call, via /proc/self/clear_refs (Linux >= 4.0)."""

    def __init__(self):
        self.ok = False
        try:
            import ctypes
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.ok = _proc_status_kib("VmHWM") is not None
        except OSError:
            self.ok = False

    def measure(self, fn):
        if not self.ok:
            return None
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        fn()
        peak = _proc_status_kib("VmHWM")
        if before is None or peak is None:
            return None
        return max(peak - before, 0) / 1024.0


class MemoryProbe:
    """Peak memory of one warmed-up step, per framework (see the module docstring)."""

    def __init__(self, tf, torch, gpu):
        self.tf, self.torch, self.gpu = tf, torch, gpu
        self.tf_device = "GPU:0" if gpu else "CPU:0"
        self.rss = RssProbe()
        try:
            tf.config.experimental.reset_memory_stats(self.tf_device)
            tf.config.experimental.get_memory_info(self.tf_device)
            self.tf_ok = True
        except (ValueError, RuntimeError, AttributeError):
            self.tf_ok = False
        self.torch_cuda = torch is not None and torch.cuda.is_available()

    def methods(self):
        tf_m = (f"TF rows: TF allocator peak on {self.tf_device} during the step above its "
                f"current use before (reset_memory_stats + get_memory_info)"
                if self.tf_ok else
                "TF rows: peak-RSS growth (see torch)" if self.rss.ok else "TF rows: n/a")
        if self.torch_cuda:
            t_m = "torch rows: torch.cuda.max_memory_allocated growth during the step"
        elif self.rss.ok:
            t_m = ("torch rows: growth of the process peak RSS during the step (malloc_trim, "
                   "VmHWM reset via /proc/self/clear_refs, VmHWM - VmRSS before)")
        else:
            t_m = "torch rows: n/a"
        return tf_m + "; " + t_m + "; MiB, one warmed-up step, inputs excluded"

    def measure(self, fn, framework):
        gc.collect()
        if framework == "torch":
            if self.torch_cuda:
                t = self.torch
                t.cuda.synchronize()
                t.cuda.reset_peak_memory_stats()
                base = t.cuda.memory_allocated()
                fn()
                return (t.cuda.max_memory_allocated() - base) / 2**20
            return self.rss.measure(fn)
        if not self.tf_ok:
            return self.rss.measure(fn)
        exp = self.tf.config.experimental
        exp.reset_memory_stats(self.tf_device)
        base = exp.get_memory_info(self.tf_device)["current"]
        fn()
        return (exp.get_memory_info(self.tf_device)["peak"] - base) / 2**20


# ---------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------

class Impl:
    """One implementation of one case: ``step()`` runs forward + backward and waits."""

    def __init__(self, name, framework, step, backward=True, note=""):
        self.name, self.framework, self.step = name, framework, step
        self.backward, self.note = backward, note


def load_seed_stn():
    """The seed's ``stn`` package (also named ``stn``), under another module name."""
    root = os.environ.get("SEED_STN_DIR") or os.path.join(ROOT, ".venv", "seed-stn")
    path = os.path.join(root, "stn", "transformer.py")
    if not os.path.exists(path):
        return None, f"seed stn package not found at {path} (./run.sh setup installs it)"
    spec = importlib.util.spec_from_file_location("seed_stn_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, None


def random_theta(rng, batch):
    """Affine thetas [B, 2, 3] near a rotation (normalised, output -> input)."""
    import numpy as np
    angle = rng.uniform(-np.pi / 6, np.pi / 6, batch)
    scale = rng.uniform(0.9, 1.1, batch)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    theta = np.stack([np.stack([c, -s, rng.uniform(-0.1, 0.1, batch)], -1),
                      np.stack([s, c, rng.uniform(-0.1, 0.1, batch)], -1)], 1)
    theta += rng.normal(0.0, 0.02, theta.shape)
    return theta.astype(np.float32)


def theta_to_projective_pixels(theta, height, width):
    """[B, 2, 3] normalised theta -> [B, 8] ImageProjectiveTransformV3 transforms.

    The op maps output pixel (x, y) (column, row; pixel centres at integers)
    to input point ``((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)``,
    ``k = c0 x + c1 y + 1``. With ``align_corners=False`` pixel i of n sits at
    normalised (2 i + 1) / n - 1, so M = P^-1 . theta . P with
    P = [[2/W, 0, 1/W - 1], [0, 2/H, 1/H - 1], [0, 0, 1]].
    """
    import numpy as np
    p = np.array([[2.0 / width, 0, 1.0 / width - 1], [0, 2.0 / height, 1.0 / height - 1],
                  [0, 0, 1]])
    p_inv = np.linalg.inv(p)
    t3 = np.concatenate([theta.astype(np.float64),
                         np.broadcast_to([[[0.0, 0.0, 1.0]]], (theta.shape[0], 1, 3))], 1)
    m = p_inv @ t3 @ p
    m = m / m[:, 2:3, 2:3]
    return m.reshape(-1, 9)[:, :8].astype(np.float32)


def stn_impls(shape, rng, env):
    import numpy as np
    tf = env["tf"]
    b, h, w, c = shape
    img = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    theta = random_theta(rng, b)
    impls, skipped = [], []

    img_tf, cot_tf = tf.constant(img), tf.constant(cot)
    theta6_tf = tf.constant(theta.reshape(b, 6))

    def tf_step(transformer):
        # The loss is returned too, as a training step reports it: a step
        # returning only the gradients lets TensorFlow prune a forward pass
        # whose output its backward does not read (ours recomputes), which
        # no model can do (the layers downstream need the output).
        @tf.function
        def step(x, t, g):
            with tf.GradientTape() as tape:
                tape.watch([x, t])
                loss = tf.reduce_sum(transformer(x, t) * g)
            return [loss] + tape.gradient(loss, [x, t])

        def run():
            results = step(img_tf, theta6_tf, cot_tf)
            results[-1].numpy()  # wait for the step (asynchronous devices)
            return results
        return run

    impls.append(Impl("ours", "tf", tf_step(env["stn"].spatial_transformer_network),
                      note="stn.spatial_transformer_network in tf.function"))
    if env["seed_stn"] is not None:
        impls.append(Impl("seed stn", "tf", tf_step(env["seed_stn"].spatial_transformer_network),
                          note="seed stn 1.0.1 in tf.function"))
    else:
        skipped.append(("seed stn", env["seed_stn_missing"]))

    torch = env["torch"]
    if torch is not None:
        F = torch.nn.functional
        dev = env["torch_device"]
        x_nchw = torch.tensor(img.transpose(0, 3, 1, 2).copy(), device=dev, requires_grad=True)
        g_nchw = torch.tensor(cot.transpose(0, 3, 1, 2).copy(), device=dev)
        x_nhwc = torch.tensor(img, device=dev, requires_grad=True)
        g_nhwc = torch.tensor(cot, device=dev)
        t_t = torch.tensor(theta, device=dev, requires_grad=True)
        size = (b, c, h, w)

        def torch_nchw():
            grid = F.affine_grid(t_t, size, align_corners=False)
            out = F.grid_sample(x_nchw, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
            grads = torch.autograd.grad((out * g_nchw).sum(), [x_nchw, t_t])
            env["torch_sync"]()
            return grads

        def torch_nhwc():
            x = x_nhwc.permute(0, 3, 1, 2).contiguous()
            grid = F.affine_grid(t_t, size, align_corners=False)
            out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False).permute(0, 2, 3, 1).contiguous()
            grads = torch.autograd.grad((out * g_nhwc).sum(), [x_nhwc, t_t])
            env["torch_sync"]()
            return grads

        with torch.no_grad():
            ref = F.grid_sample(x_nchw, F.affine_grid(t_t, size, align_corners=False),
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        check_same(f"stn {shape}: ours vs torch",
                   env["stn"].spatial_transformer_network(img_tf, theta6_tf).numpy(),
                   ref.permute(0, 2, 3, 1).cpu().numpy())
        impls.append(Impl("torch", "torch", torch_nchw,
                          note="affine_grid + grid_sample, NCHW inputs (layout conversion excluded)"))
        impls.append(Impl("torch +NHWC", "torch", torch_nhwc,
                          note="same, NHWC in/out: permutes and their gradients included"))
    else:
        skipped.append(("torch", env["torch_missing"]))

    transforms = tf.constant(theta_to_projective_pixels(theta, h, w))
    out_shape = tf.constant([h, w], tf.int32)

    @tf.function
    def projective(x, t):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=t, output_shape=out_shape, fill_value=tf.constant(0.0),
            interpolation="BILINEAR", fill_mode="CONSTANT")

    def native():
        out = projective(img_tf, transforms)
        out.numpy()
        return out

    impls.append(Impl("tf ImageProjectiveTransformV3", "tf", native, backward=False,
                      note="forward only: no gradient w.r.t. the transform"))
    return impls, skipped


def dsnt_impls(case, rng, env, max_seed_points):
    import numpy as np
    tf = env["tf"]
    b, h, w, k = case
    logits = rng.standard_normal((b, h, w, k)).astype(np.float32)
    targets = rng.uniform(-0.8, 0.8, (b, k, 2)).astype(np.float32)
    sigma = 1.0
    fwhm = sigma * 2.0 * np.sqrt(2.0 * np.log(2.0))
    impls, skipped = [], []

    dsnt = env["dsnt"]
    x_tf = tf.constant(logits)
    t_tf = tf.constant(targets[:, 0] if k == 1 else targets)

    @tf.function
    def ours_step(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            hm, coords = dsnt.dsnt(x)
            loss = dsnt.mse_loss(coords, t) + dsnt.js_reg_loss(hm, t, fwhm=fwhm)
        return loss, tape.gradient(loss, x)

    def ours():
        out = ours_step(x_tf, t_tf)
        out[0].numpy()
        return out

    impls.append(Impl("ours", "tf", ours, note="dsnt.dsnt + mse_loss + js_reg_loss in tf.function"))

    torch, dsntnn = env["torch"], env["dsntnn"]
    if torch is not None and dsntnn is not None:
        dev = env["torch_device"]
        x_t = torch.tensor(logits.transpose(0, 3, 1, 2).copy(), device=dev, requires_grad=True)
        t_t = torch.tensor(targets, device=dev)

        def dsntnn_step():
            hm = dsntnn.flat_softmax(x_t)
            coords = dsntnn.dsnt(hm)
            losses = dsntnn.mse_losses(coords, t_t) + dsntnn.js_reg_losses(hm, t_t, sigma_t=sigma)
            loss = dsntnn.average_loss(losses)
            (grad,) = torch.autograd.grad(loss, [x_t])
            env["torch_sync"]()
            return loss, grad

        with torch.no_grad():
            hm_ref = dsntnn.flat_softmax(x_t)
            coords_ref = dsntnn.dsnt(hm_ref)
            loss_ref = dsntnn.average_loss(dsntnn.mse_losses(coords_ref, t_t)
                                           + dsntnn.js_reg_losses(hm_ref, t_t, sigma_t=sigma))
        hm, coords = dsnt.dsnt(x_tf)
        loss = dsnt.mse_loss(coords, t_tf) + dsnt.js_reg_loss(hm, t_tf, fwhm=fwhm)
        check_same(f"dsnt {case}: ours vs dsntnn coordinates",
                   coords.numpy().reshape(coords_ref.shape), coords_ref.cpu().numpy(), atol=1e-5)
        check_same(f"dsnt {case}: ours vs dsntnn loss", loss.numpy(), loss_ref.cpu().numpy(),
                   atol=0.0, rtol=1e-4)
        impls.append(Impl("dsntnn", "torch", dsntnn_step,
                          note="flat_softmax, dsnt, mse_losses + js_reg_losses, average_loss"))
    else:
        skipped.append(("dsntnn", env["torch_missing"] or env["dsntnn_missing"]))

    points = b * k
    if points <= max_seed_points:
        seed = env["seed_dsnt"]
        xs_tf = tf.constant(logits.transpose(0, 3, 1, 2).reshape(b * k, h, w, 1))
        ts = targets.reshape(b * k, 2)
        ts_tf, centres_tf = tf.constant(ts), tf.constant((ts + 1.0) / 2.0)

        @tf.function
        def seed_step(x, t, centres):
            with tf.GradientTape() as tape:
                tape.watch(x)
                hm, coords = seed.dsnt(x)
                loss = (tf.reduce_mean(tf.square(coords - t))
                        + seed.js_reg_loss(hm, centres, fwhm=fwhm))
            return loss, tape.gradient(loss, x)

        def seed_run():
            out = seed_step(xs_tf, ts_tf, centres_tf)
            out[0].numpy()
            return out

        impls.append(Impl("seed dsnt", "tf", seed_run,
                          note="TF2 port of the seed (while_loop Gaussians), K folded into B"))
    else:
        skipped.append(("seed dsnt", f"B*K = {points} points > --seed-dsnt-max-points "
                                     f"{max_seed_points} (its while_loop copies quadratically)"))
    return impls, skipped


# ---------------------------------------------------------------------------
# Build-time checks and helpers of the other groups
# ---------------------------------------------------------------------------

def check_same(what, ours, ref, atol=1e-4, rtol=0.0, scale=None):
    """Asserts two forward results agree: |ours - ref| <= atol * scale + rtol * |ref|.

    ``scale`` defaults to max(1, max |ref|). Raised at build time, so that a
    benchmark never times two implementations computing different things.
    """
    import numpy as np
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{what}: shapes differ, {ours.shape} vs {ref.shape}")
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    err = np.abs(ours - ref)
    bound = atol * scale + rtol * np.abs(ref)
    if not np.all(err <= bound):
        raise AssertionError(f"{what}: the implementations compute different things "
                             f"(max |difference| {err.max():.3g}, tolerance {atol * scale:.3g} "
                             f"+ {rtol} x |reference|)")


class _Kernels:
    """``with _Kernels(env, False):`` runs and traces under ``use_kernels(False)``, then restores."""

    def __init__(self, env, enabled):
        self.sc, self.enabled = env["spatial_convention"], enabled

    def __enter__(self):
        self.old = self.sc.kernels_enabled()
        self.sc.use_kernels(self.enabled)

    def __exit__(self, *exc):
        self.sc.use_kernels(self.old)


def tf_grad_runner(env, fn, args, wrt, kernels=True):
    """A step: ``out = fn(*args[:-1])``, ``sum(out * args[-1])`` and its gradients to ``args[wrt]``.

    Traced once here, into a concrete function (``kernels=False`` traces it
    with the direct maths), so no later call can retrace under another
    setting; called once here (the first, compiling call, never timed).
    Returns ``(run, out)``: the step, and ``out`` from that call as NumPy for
    the build-time check (the step returns it: it is computed anyway).
    """
    tf = env["tf"]

    @tf.function
    def step(*xs):
        with tf.GradientTape() as tape:
            tape.watch([xs[i] for i in wrt])
            out = fn(*xs[:-1])
            loss = tf.reduce_sum(out * xs[-1])
        return [out] + tape.gradient(loss, [xs[i] for i in wrt])

    with _Kernels(env, kernels):
        concrete = step.get_concrete_function(*args)

    def run():
        results = concrete(*args)
        results[-1].numpy()  # wait for the step (asynchronous devices)
        return results
    return run, run()[0].numpy()


def identity_grid(spatial):
    """Normalised ``align_corners=False`` pixel centres, ``[1, *spatial, ndim]`` (x, y[, z]).

    ``spatial`` is (H, W) or (D, H, W); pixel i of n at (2 i + 1) / n - 1.
    """
    import numpy as np
    axes = [(2.0 * np.arange(n) + 1.0) / n - 1.0 for n in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")          # (y, x) or (z, y, x)
    return np.stack(mesh[::-1], axis=-1)[None].astype(np.float32)


def smooth_field(rng, batch, spatial, amplitude, waves=3):
    """A smooth random field ``[B, *spatial, ndim]``: per component a sum of plane waves.

    Each of ``waves`` waves has 1-3 periods along each axis, a random phase
    and amplitude ``amplitude / waves`` (so |field| <= amplitude, in pixels).
    """
    import numpy as np
    ndim = len(spatial)
    pos = np.meshgrid(*[np.arange(n) / n for n in spatial], indexing="ij")
    out = np.zeros((batch, *spatial, ndim))
    for b in range(batch):
        for comp in range(ndim):
            for _ in range(waves):
                k = rng.integers(1, 4, ndim) * rng.choice([-1, 1], ndim)
                phase = rng.uniform(0.0, 2.0 * np.pi)
                out[b, ..., comp] += (amplitude / waves) * np.sin(
                    2.0 * np.pi * sum(ki * p for ki, p in zip(k, pos)) + phase)
    return out.astype(np.float32)


def random_theta_3d(rng, batch):
    """Affine thetas [B, 3, 4] near a rotation (normalised, output -> input)."""
    import numpy as np
    thetas = []
    for _ in range(batch):
        ax, ay, az = rng.uniform(-np.pi / 12, np.pi / 12, 3)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        linear = rng.uniform(0.9, 1.1) * rz @ ry @ rx
        thetas.append(np.concatenate([linear, rng.uniform(-0.1, 0.1, (3, 1))], 1))
    theta = np.stack(thetas) + rng.normal(0.0, 0.02, (batch, 3, 4))
    return theta.astype(np.float32)


def _torch_missing(env, impl, skipped):
    skipped.append((impl, env["torch_missing"]))


# ---------------------------------------------------------------------------
# The other groups
# ---------------------------------------------------------------------------

def volume_impls(shape, rng, env):
    import numpy as np
    tf, stn = env["tf"], env["stn"]
    b, d, h, w, c = shape
    vol = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    theta = random_theta_3d(rng, b)
    args = [tf.constant(vol), tf.constant(theta), tf.constant(cot)]
    impls, skipped = [], []

    def stn_call(x, t):
        return stn.spatial_transformer_network(x, t)

    def two_calls(x, t):
        return stn.grid_sample(x, stn.affine_grid(t, (d, h, w)))

    ours, ours_out = tf_grad_runner(env, stn_call, args, [0, 1])
    two, two_out = tf_grad_runner(env, two_calls, args, [0, 1])
    impls.append(Impl("ours", "tf", ours,
                      note="stn.spatial_transformer_network on 5-D, [B, 3, 4] theta, tf.function"))
    impls.append(Impl("ours affine_grid+grid_sample", "tf", two,
                      note="stn.affine_grid + stn.grid_sample (grid materialised), tf.function"))

    torch = env["torch"]
    if torch is None:
        _torch_missing(env, "torch", skipped)
        return impls, skipped
    F = torch.nn.functional
    dev = env["torch_device"]
    x_t = torch.tensor(vol.transpose(0, 4, 1, 2, 3).copy(), device=dev, requires_grad=True)
    g_t = torch.tensor(cot.transpose(0, 4, 1, 2, 3).copy(), device=dev)
    t_t = torch.tensor(theta, device=dev, requires_grad=True)
    size = (b, c, d, h, w)

    def forward():
        grid = F.affine_grid(t_t, size, align_corners=False)
        return F.grid_sample(x_t, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    def torch_step():
        grads = torch.autograd.grad((forward() * g_t).sum(), [x_t, t_t])
        env["torch_sync"]()
        return grads

    with torch.no_grad():
        ref = forward().permute(0, 2, 3, 4, 1).cpu().numpy()
    check_same("volume: ours vs torch", ours_out, ref)
    check_same("volume: ours affine_grid+grid_sample vs torch", two_out, ref)
    impls.append(Impl("torch", "torch", torch_step,
                      note="F.affine_grid + F.grid_sample, 5-D NCDHW (layout excluded)"))
    return impls, skipped


def warp_impls(shape, rng, env):
    import numpy as np
    tf, stn = env["tf"], env["stn"]
    b, h, w, c = shape
    img = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(shape).astype(np.float32)
    disp = smooth_field(rng, b, (h, w), amplitude=4.0)           # pixels, (x, y)
    args = [tf.constant(img), tf.constant(disp), tf.constant(cot)]
    impls, skipped = [], []

    def ours_fn(x, u):
        return stn.warp(x, u)          # units="pixels", padding "border", align_corners=False

    ours, ours_out = tf_grad_runner(env, ours_fn, args, [0, 1])
    impls.append(Impl("ours", "tf", ours,
                      note="stn.warp (pixels, border, align_corners=False) in tf.function"))

    torch = env["torch"]
    if torch is None:
        _torch_missing(env, "torch", skipped)
        return impls, skipped
    F = torch.nn.functional
    dev = env["torch_device"]
    x_t = torch.tensor(img.transpose(0, 3, 1, 2).copy(), device=dev, requires_grad=True)
    g_t = torch.tensor(cot.transpose(0, 3, 1, 2).copy(), device=dev)
    u_t = torch.tensor(disp, device=dev, requires_grad=True)
    ident = torch.tensor(identity_grid((h, w)), device=dev)
    to_norm = torch.tensor([2.0 / w, 2.0 / h], device=dev)

    def forward():
        grid = ident + u_t * to_norm          # pixels -> normalised, inside the step
        return F.grid_sample(x_t, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def torch_step():
        grads = torch.autograd.grad((forward() * g_t).sum(), [x_t, u_t])
        env["torch_sync"]()
        return grads

    with torch.no_grad():
        ref = forward().permute(0, 2, 3, 1).cpu().numpy()
    check_same("warp: ours vs torch", ours_out, ref)
    impls.append(Impl("torch", "torch", torch_step,
                      note="F.grid_sample(identity + displacement * 2 / size), border, NCHW"))
    return impls, skipped


def velocity_impls(shape, rng, env, steps=VELOCITY_STEPS):
    import numpy as np
    tf, stn = env["tf"], env["stn"]
    b, d, h, w, n = shape
    if n != 3:
        raise SystemExit(f"velocity fields are [B, D, H, W, 3]; got {shape}")
    vel = smooth_field(rng, b, (d, h, w), amplitude=3.0)         # pixels, (x, y, z)
    cot = rng.standard_normal(shape).astype(np.float32)
    args = [tf.constant(vel), tf.constant(cot)]
    impls, skipped = [], []

    def ours_fn(v):
        return stn.integrate_velocity(v, steps=steps)

    ours_run, ours = tf_grad_runner(env, ours_fn, args, [0])
    plain_run, plain = tf_grad_runner(env, ours_fn, args, [0], kernels=False)
    impls.append(Impl("ours", "tf", ours_run,
                      note=f"stn.integrate_velocity(v, steps={steps}) in tf.function"))
    impls.append(Impl("ours plain", "tf", plain_run,
                      note="the same traced under use_kernels(False): plain ops, TF autodiff"))
    check_same("velocity: ours plain vs ours", plain, ours, atol=1e-3)

    torch = env["torch"]
    if torch is None:
        _torch_missing(env, "torch", skipped)
        return impls, skipped
    F = torch.nn.functional
    dev = env["torch_device"]
    v_t = torch.tensor(vel, device=dev, requires_grad=True)
    g_t = torch.tensor(cot, device=dev)
    ident = torch.tensor(identity_grid((d, h, w)), device=dev)
    to_norm = torch.tensor([2.0 / w, 2.0 / h, 2.0 / d], device=dev)

    def forward():
        field = v_t / 2.0 ** steps
        for _ in range(steps):
            moved = F.grid_sample(field.permute(0, 4, 1, 2, 3), ident + field * to_norm,
                                  mode="bilinear", padding_mode="border", align_corners=False)
            field = field + moved.permute(0, 2, 3, 4, 1)
        return field

    def torch_step():
        grads = torch.autograd.grad((forward() * g_t).sum(), [v_t])
        env["torch_sync"]()
        return grads

    with torch.no_grad():
        check_same("velocity: torch vs ours", forward().cpu().numpy(), ours, atol=1e-3)
    impls.append(Impl("torch", "torch", torch_step,
                      note=f"scaling and squaring with F.grid_sample ({steps} steps, border)"))
    return impls, skipped


def dsnt3d_impls(case, rng, env):
    import numpy as np
    tf, dsnt = env["tf"], env["dsnt"]
    b, d, h, w, k = case
    logits = rng.standard_normal(case).astype(np.float32)
    targets = rng.uniform(-0.8, 0.8, (b, k, 3)).astype(np.float32)
    sigma = 1.0
    fwhm = sigma * 2.0 * np.sqrt(2.0 * np.log(2.0))
    impls, skipped = [], []
    x_tf, t_tf = tf.constant(logits), tf.constant(targets)

    def ours_loss(x, t):
        hm, coords = dsnt.dsnt(x)
        return coords, dsnt.mse_loss(coords, t) + dsnt.js_reg_loss(hm, t, fwhm=fwhm)

    @tf.function
    def ours_step(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            coords, loss = ours_loss(x, t)
        return loss, tape.gradient(loss, x), coords

    def ours():
        out = ours_step(x_tf, t_tf)
        out[0].numpy()
        return out

    loss, _, coords = (t.numpy() for t in ours())   # the first (tracing) call, for the check
    impls.append(Impl("ours", "tf", ours,
                      note="dsnt.dsnt [B,D,H,W,K] + mse_loss + js_reg_loss in tf.function"))

    torch, dsntnn = env["torch"], env["dsntnn"]
    if torch is None or dsntnn is None:
        skipped.append(("dsntnn", env["torch_missing"] or env["dsntnn_missing"]))
        return impls, skipped
    dev = env["torch_device"]
    x_t = torch.tensor(logits.transpose(0, 4, 1, 2, 3).copy(), device=dev, requires_grad=True)
    t_t = torch.tensor(targets, device=dev)

    def forward():
        hm = dsntnn.flat_softmax(x_t)
        coords = dsntnn.dsnt(hm)
        losses = dsntnn.mse_losses(coords, t_t) + dsntnn.js_reg_losses(hm, t_t, sigma_t=sigma)
        return coords, dsntnn.average_loss(losses)

    def dsntnn_step():
        _, loss = forward()
        (grad,) = torch.autograd.grad(loss, [x_t])
        env["torch_sync"]()
        return loss, grad

    with torch.no_grad():
        coords_ref, loss_ref = (t.cpu().numpy() for t in forward())
    check_same("dsnt3d: ours vs dsntnn coordinates", coords, coords_ref, atol=1e-5)
    check_same("dsnt3d: ours vs dsntnn loss", loss, loss_ref, atol=0.0, rtol=1e-4)
    impls.append(Impl("dsntnn", "torch", dsntnn_step,
                      note="flat_softmax, dsnt, mse_losses + js_reg_losses, average_loss, NKDHW"))
    return impls, skipped


def tps_impls(case, rng, env):
    import numpy as np
    tf, stn = env["tf"], env["stn"]
    b, h, w, c, lattice = case
    img = rng.standard_normal((b, h, w, c)).astype(np.float32)
    cot = rng.standard_normal((b, h, w, c)).astype(np.float32)
    control = stn.control_point_lattice(lattice).numpy()                     # [N, 2]
    source = (control[None] + rng.normal(0.0, 0.05, (b,) + control.shape)).astype(np.float32)
    # The control points are an argument (not a graph constant TF could fold).
    args = [tf.constant(img), tf.constant(control), tf.constant(source), tf.constant(cot)]
    impls, skipped = [], []

    def ours_fn(x, ctrl, src):
        return stn.grid_sample(x, stn.tps_grid(ctrl, src, (h, w)))

    ours_run, ours = tf_grad_runner(env, ours_fn, args, [0, 2])
    plain_run, plain = tf_grad_runner(env, ours_fn, args, [0, 2], kernels=False)
    impls.append(Impl("ours", "tf", ours_run, note="stn.tps_grid + stn.grid_sample in tf.function"))
    impls.append(Impl("ours plain", "tf", plain_run,
                      note="the same traced under use_kernels(False)"))
    check_same("tps: ours plain vs ours", plain, ours)

    torch, kornia_tps = env["torch"], env["kornia_tps"]
    if torch is None or kornia_tps is None:
        why = env["torch_missing"] or env["kornia_missing"]
        skipped += [("kornia", why), ("kornia get_tps_transform", why)]
        return impls, skipped
    dev = env["torch_device"]
    x_t = torch.tensor(img.transpose(0, 3, 1, 2).copy(), device=dev, requires_grad=True)
    g_t = torch.tensor(cot.transpose(0, 3, 1, 2).copy(), device=dev)
    s_t = torch.tensor(source, device=dev, requires_grad=True)
    c_t = torch.tensor(control, device=dev)
    c_batch = c_t[None].expand(b, -1, -1).contiguous()
    n = control.shape[0]

    def standard_spline(ctrl, src):
        """Kernel and affine weights of the standard TPS sending ctrl to src (float64 solve)."""
        c64 = ctrl.double()
        r2 = ((c64[:, None] - c64[None]) ** 2).sum(-1)
        safe = torch.where(r2 > 0, r2, torch.ones_like(r2))
        kmat = torch.where(r2 > 0, 0.5 * r2 * safe.log(), torch.zeros_like(r2))
        p = torch.cat([torch.ones_like(c64[:, :1]), c64], -1)                 # [N, 3]
        system = torch.cat([torch.cat([kmat, p], -1),
                            torch.cat([p.t(), torch.zeros_like(p[:3])], -1)], 0)
        rhs = torch.cat([src.double(), torch.zeros_like(src[:, :3]).double()], 1)  # [B, N+3, 2]
        stacked = rhs.permute(1, 0, 2).reshape(n + 3, -1)                  # one system, 2B rhs
        weights = torch.linalg.solve(system, stacked).reshape(n + 3, b, 2).permute(1, 0, 2)
        weights = weights.to(src.dtype)
        return weights[:, :n], weights[:, n:]

    def kornia_forward():
        kernel_w, affine_w = standard_spline(c_t, s_t)
        return kornia_tps.warp_image_tps(x_t, c_batch, kernel_w, affine_w, align_corners=False)

    def documented_forward():
        kernel_w, affine_w = kornia_tps.get_tps_transform(c_batch, s_t)
        return kornia_tps.warp_image_tps(x_t, s_t, kernel_w, affine_w, align_corners=False)

    def torch_runner(forward):
        def run():
            grads = torch.autograd.grad((forward() * g_t).sum(), [x_t, s_t])
            env["torch_sync"]()
            return grads
        return run

    with torch.no_grad():
        check_same("tps: ours vs kornia", ours,
                   kornia_forward().permute(0, 2, 3, 1).cpu().numpy())
        # The documented call is another spline: it only interpolates the same points.
        kernel_w, affine_w = kornia_tps.get_tps_transform(c_batch, s_t)
        check_same("tps: kornia get_tps_transform sends the control points to the sources",
                   kornia_tps.warp_points_tps(c_batch, s_t, kernel_w, affine_w).cpu().numpy(),
                   source, atol=1e-4)
    impls.append(Impl("kornia", "torch", torch_runner(kornia_forward),
                      note="kornia warp_image_tps, standard spline's weights solved in the step"))
    impls.append(Impl("kornia get_tps_transform", "torch", torch_runner(documented_forward),
                      note="kornia's documented get_tps_transform + warp_image_tps: a different "
                           "spline (kernels on the source points), same work"))
    return impls, skipped


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

def time_case(impls, repeats, warmup, rewarm):
    for impl in impls:
        for _ in range(max(warmup, 1)):  # at least once: tracing is never timed
            impl.step()
    times = {impl.name: [] for impl in impls}
    n = len(impls)
    for r in range(repeats):
        for i in range(n):
            impl = impls[(i + r) % n]
            for _ in range(rewarm):
                impl.step()
            t0 = time.perf_counter()
            impl.step()
            times[impl.name].append(time.perf_counter() - t0)
    return times


def paired_ratio(num, den):
    return statistics.median(a / b for a, b in zip(num, den))


def run_group(group, cases, build, reference, args, env, probe, second=None):
    """Builds (and checks), times and prints each case of one group.

    ``reference``: the implementation of the "x ref" ratios; ``second``: that
    of the second ratio column (the seed's for stn / dsnt, ``ours plain`` for
    velocity and tps), if any.
    """
    results = []
    for case in cases:
        rng = env["np"].random.default_rng(args.seed)
        impls, skipped = build(case, rng)
        times = time_case(impls, args.repeats, args.warmup, args.rewarm)
        ref = reference if reference in times else None
        rows = []
        for impl in impls:
            t = times[impl.name]
            mem = None
            if probe is not None:
                mem = probe.measure(impl.step, impl.framework)
            rows.append({
                "impl": impl.name,
                "framework": impl.framework,
                "backward": impl.backward,
                "note": impl.note,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "times_s": t,
                "ratio_vs_reference": paired_ratio(t, times[ref]) if ref else None,
                "ratio_vs_second": (paired_ratio(t, times[second])
                                    if second in times else None),
                # the same for the seed's groups (the key older JSON readers use)
                "ratio_vs_seed": (paired_ratio(t, times[second])
                                  if second in times and second.startswith("seed") else None),
                "peak_mem_mib": mem,
            })
        results.append({"group": group, "dims": GROUP_DIMS[group], "shape": list(case),
                        "reference": ref, "second_reference": second,
                        "rows": rows,
                        "skipped": [{"impl": n, "reason": why} for n, why in skipped]})
        print_case(results[-1])
        del impls
        gc.collect()
    return results


def _fmt(x, spec, none="n/a"):
    return none if x is None else format(x, spec)


def print_case(res):
    dims = GROUP_DIMS[res["group"]]
    shape = ",".join(str(d) for d in res["shape"])
    print(f"\n{res['group'].upper()}  {dims} = {shape}   (reference: {res['reference'] or 'none'})")
    second = res["second_reference"] or "-"
    print(f"  {'implementation':40s} {'median ms':>10s} {'min ms':>9s} {'x ref':>7s} "
          f"{'x ' + second if second != '-' else '':>13s} {'peak MiB':>9s}")
    for row in res["rows"]:
        name = row["impl"] + ("" if row["backward"] else " (fwd only)")
        print(f"  {name:40s} {row['median_s'] * 1e3:10.2f} {row['min_s'] * 1e3:9.2f} "
              f"{_fmt(row['ratio_vs_reference'], '7.2f'):>7s} "
              f"{_fmt(row['ratio_vs_second'], '13.2f'):>13s} "
              f"{_fmt(row['peak_mem_mib'], '9.1f'):>9s}")
    for s in res["skipped"]:
        print(f"  {s['impl']:40s} skipped: {s['reason']}")
    sys.stdout.flush()


def check_targets(results):
    checks = []
    for group, shape, impl, ref, bound, how in TARGETS:
        res = next((r for r in results if r["group"] == group and tuple(r["shape"]) == shape), None)
        if res is None:
            continue
        rows = {row["impl"]: row for row in res["rows"]}
        if impl not in rows or ref not in rows:
            checks.append({"target": f"{group} {shape} {impl} vs {ref}", "holds": None,
                           "value": None, "bound": bound, "how": how})
            continue
        r_impl = rows[impl]
        # paired ratio impl / ref
        ratio = paired_ratio(r_impl["times_s"], rows[ref]["times_s"])
        if how == "le":
            text = f"{group} {shape}: {impl} / {ref} = {ratio:.2f}x (target <= {bound}x)"
            holds = ratio <= bound
            value = ratio
        else:
            value = 1.0 / ratio
            text = f"{group} {shape}: {impl} is {value:.2f}x faster than {ref} (target >= {bound}x)"
            holds = value >= bound
        checks.append({"target": text, "holds": holds, "value": value, "bound": bound,
                       "how": how})
    return checks


def machine_info(env):
    tf, torch = env["tf"], env["torch"]
    info = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "threads": env["threads"],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_devices": [d.name for d in tf.config.list_logical_devices()],
        "tf_gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "torch": getattr(torch, "__version__", None),
        "torch_device": env["torch_device"],
        "dsntnn": getattr(env["dsntnn"], "__version__", None) if env["dsntnn"] else None,
        "seed_stn": "1.0.1 (loaded from SEED_STN_DIR)" if env["seed_stn"] else None,
        "kornia": env["kornia_version"],
        "jit_env": {v: os.environ.get(v, "(unset: default)") for v in ("SPATIAL_JIT", "STN_JIT")},
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    return info


def machine_line(info):
    dev = "GPU " + ", ".join(info["tf_gpus"]) if info["tf_gpus"] else "CPU"
    la = info["load_average_start"]
    load = f"; load average {la[0]:.2f}" if la else ""
    return (f"machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs "
            f"({info['usable_cpus']} usable), {info['threads']} threads for TF and torch; "
            f"device {dev}; {info['platform']}; Python {info['python']}; "
            f"TensorFlow {info['tensorflow']}; PyTorch {info['torch'] or 'not installed'} "
            f"({info['torch_device'] or '-'}); dsntnn {info['dsntnn'] or 'not installed'}; "
            f"seed stn {info['seed_stn'] or 'not installed'}; "
            f"kornia {info.get('kornia') or 'not installed'}{load}")


def setup_env(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import numpy as np
    import tensorflow as tf

    threads = args.threads or _usable_cpus()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    env = {"np": np, "tf": tf, "threads": threads}
    import stn
    import dsnt
    import seed_dsnt
    import spatial_convention
    env.update(stn=stn, dsnt=dsnt, seed_dsnt=seed_dsnt, spatial_convention=spatial_convention)
    env["seed_stn"], env["seed_stn_missing"] = load_seed_stn()

    env["torch"] = env["dsntnn"] = None
    env["torch_missing"] = env["dsntnn_missing"] = None
    env["torch_device"] = None
    env["torch_sync"] = lambda: None
    try:
        import torch
        torch.set_num_threads(threads)
        env["torch"] = torch
        if torch.cuda.is_available():
            env["torch_device"] = "cuda"
            env["torch_sync"] = torch.cuda.synchronize
        else:
            env["torch_device"] = "cpu"
    except ImportError as e:
        env["torch_missing"] = f"torch not installed ({e})"
    try:
        import dsntnn
        env["dsntnn"] = dsntnn
        if not hasattr(dsntnn, "__version__"):
            try:
                from importlib.metadata import version
                dsntnn.__version__ = version("dsntnn")
            except Exception:  # noqa: BLE001 - version is only reported
                dsntnn.__version__ = "unknown"
    except ImportError as e:
        env["dsntnn_missing"] = f"dsntnn not installed ({e})"
    env["kornia_tps"] = env["kornia_version"] = env["kornia_missing"] = None
    if env["torch"] is not None:
        try:
            import kornia
            import kornia.geometry.transform as kornia_tps
            env["kornia_tps"], env["kornia_version"] = kornia_tps, kornia.__version__
        except ImportError as e:
            env["kornia_missing"] = (f"kornia not installed ({e}); not among the project's "
                                     f"extras: pip install kornia")
    return env


def main(argv=None):
    args = parse_args(argv)
    env = setup_env(args)
    tf = env["tf"]
    info = machine_info(env)
    print(machine_line(info))
    mode = "tiny" if args.tiny else "full"
    print(f"mode {mode}: {args.repeats} timed rounds after {args.warmup} warm-up call(s) per "
          f"implementation, interleaved, each timed call after {args.rewarm} untimed one(s) of "
          f"the same implementation; times are forward + backward per step unless "
          f"'fwd only'; 'x ref' = median of per-round ratios to the reference")

    la = info["load_average_start"]
    if la and la[0] > info["usable_cpus"] - 0.5 and env["threads"] > 1:
        print(f"warning: load average {la[0]:.2f} with {info['usable_cpus']} usable CPUs: the "
              f"machine is busy, and multi-threaded steps stall whenever one of their threads "
              f"is descheduled (PyTorch's OpenMP barriers worst of all, up to 100x on small "
              f"steps). Compare with --threads 1 as well.")
    probe = MemoryProbe(tf, env["torch"], bool(info["tf_gpus"])) if args.memory else None
    memory_method = probe.methods() if probe is not None else "n/a (not measured)"
    print(f"peak memory: {memory_method}")

    stn_shapes = (_parse_shapes(args.stn_shapes) if args.stn_shapes
                  else TINY_STN_SHAPES if args.tiny else STN_SHAPES)
    dsnt_cases = (_parse_shapes(args.dsnt_cases) if args.dsnt_cases
                  else TINY_DSNT_CASES if args.tiny else DSNT_CASES)

    tiny = args.tiny
    groups = {  # name: (cases, build(case, rng), reference, second ratio column)
        "stn": (stn_shapes, lambda s, rng: stn_impls(s, rng, env), "torch", "seed stn"),
        "stn-small": (TINY_STN_SMALL_SHAPES if tiny else STN_SMALL_SHAPES,
                      lambda s, rng: stn_impls(s, rng, env), "torch", "seed stn"),
        "volume": (TINY_VOLUME_SHAPES if tiny else VOLUME_SHAPES,
                   lambda s, rng: volume_impls(s, rng, env), "torch", None),
        "warp": (TINY_WARP_SHAPES if tiny else WARP_SHAPES,
                 lambda s, rng: warp_impls(s, rng, env), "torch", None),
        "velocity": (TINY_VELOCITY_SHAPES if tiny else VELOCITY_SHAPES,
                     lambda s, rng: velocity_impls(
                         s, rng, env, steps=TINY_VELOCITY_STEPS if tiny else VELOCITY_STEPS),
                     "torch", "ours plain"),
        "dsnt": (dsnt_cases, lambda c, rng: dsnt_impls(c, rng, env, args.seed_dsnt_max_points),
                 "dsntnn", "seed dsnt"),
        "dsnt3d": (TINY_DSNT3D_CASES if tiny else DSNT3D_CASES,
                   lambda c, rng: dsnt3d_impls(c, rng, env), "dsntnn", None),
        "tps": (TINY_TPS_CASES if tiny else TPS_CASES,
                lambda c, rng: tps_impls(c, rng, env), "kornia", "ours plain"),
    }
    assert list(groups) == GROUP_ORDER

    results = []
    t_start = time.time()
    for name in GROUP_ORDER:
        if args.only and name not in args.only:
            continue
        cases, build, reference, second = groups[name]
        results += run_group(name, cases, build, reference, args, env, probe, second=second)

    checks = check_targets(results)
    if checks:
        print("\nissue targets (default call, forward + backward):")
        for c in checks:
            verdict = {True: "HOLDS", False: "MISSED", None: "not measured"}[c["holds"]]
            print(f"  [{verdict}] {c['target']}")
    print(f"\ntotal wall time {time.time() - t_start:.1f} s")
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = os.getloadavg()
        print("load average at the end: " + ", ".join(f"{v:.2f}" for v in info["load_average_end"]))

    if args.json:
        payload = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   "mode": mode, "repeats": args.repeats, "warmup": args.warmup,
                   "rewarm": args.rewarm,
                   "machine": info, "machine_line": machine_line(info),
                   "memory_method": memory_method, "cases": results, "targets": checks}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
