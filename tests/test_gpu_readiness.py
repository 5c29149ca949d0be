"""GPU readiness, checked as far as a CPU machine can.

No GPU has run this code yet. What a CPU machine with TensorFlow's CUDA wheel
can check:

1. Kernels registered: every op in the plain (non-XLA) graph of each public
   function, forward and gradient, nested function bodies included, has a GPU
   kernel registered for its dtypes (``kernels.get_registered_kernels_for_op``),
   with the hand-written kernels on and off. Negative control: float16
   ``TensorScatterAdd`` has no GPU kernel, and the checker says so.
2. No out-of-range index: the sampler's gathers stay inside the image for NaN,
   +-inf, +-1e30 and exact-border coordinates (a CPU gather raises where a GPU
   one would return 0), and XLA agrees.

Determinism is not checkable here: docs/gpu.md says what a GPU run must show.
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import coordconv
import dsnt
import spatial_convention
import stn

FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# Ops that need no GPU kernel of their own, with the reason.
EXEMPT = {
    # Graph plumbing: arguments, results and control edges are not computed by a kernel.
    "Placeholder": "a feed, not a computation",
    "_Arg": "a function argument (FunctionDef body)",
    "_Retval": "a function result (FunctionDef body)",
    "NoOp": "control edge only",
    # Function calls run their body, whose ops are walked themselves.
    "PartitionedCall": "runs a function body; the body's ops are checked",
    "StatefulPartitionedCall": "runs a function body; the body's ops are checked",
    # Shape metadata: TF places these on the host (int32 results in host memory) on a GPU device.
    "Shape": "host-memory int32 metadata",
    "ShapeN": "host-memory int32 metadata",
    "Size": "host-memory int32 metadata",
    "Rank": "host-memory int32 metadata",
}


def _gpu_kernels(op_type):
    """GPU kernels of an op: ``DEFAULT`` ones (IdentityN, which custom gradients use) run on any device."""
    return [k for k in kernels.get_registered_kernels_for_op(op_type).kernel
            if k.device_type in ("GPU", "DEFAULT")]


def _type_attrs(node):
    """{attr name: dtype enum} for a NodeDef's type attributes (lists flattened to several)."""
    out = {}
    for name, value in node.attr.items():
        if value.WhichOneof("value") == "type":
            out[name] = [value.type]
        elif value.WhichOneof("value") == "list" and value.list.type:
            out[name] = list(value.list.type)
    return out


def _has_gpu_kernel(node):
    """True if a GPU KernelDef's type constraints admit the node's dtypes."""
    attrs = _type_attrs(node)
    for kdef in _gpu_kernels(node.op):
        ok = True
        for c in kdef.constraint:
            allowed = set(c.allowed_values.list.type)
            if c.name in attrs and allowed and not set(attrs[c.name]) <= allowed:
                ok = False
                break
        if ok:
            return True
    return False


def _int32_only(node):
    """Shape arithmetic: TensorFlow keeps int32 tensors in host memory and runs
    their ops on the host even on a GPU device, so they need no GPU kernel."""
    dtypes = {t for ts in _type_attrs(node).values() for t in ts}
    return bool(dtypes) and dtypes <= {tf.int32.as_datatype_enum, tf.bool.as_datatype_enum}


def _nodes(graph_def):
    """Every NodeDef in a GraphDef and in all functions of its library (nested bodies included:
    the library holds every function the graph reaches, custom gradients and loop bodies too)."""
    yield from graph_def.node
    for fdef in graph_def.library.function:
        yield from fdef.node_def


def missing_gpu_kernels(graph):
    """Sorted (op type, dtypes) of the graph's ops without a matching GPU kernel."""
    missing = set()
    for node in _nodes(graph.as_graph_def()):
        if node.op in EXEMPT or _has_gpu_kernel(node) or _int32_only(node):
            continue
        dtypes = tuple(sorted({f"{k}={tf.dtypes.as_dtype(t).name}"
                               for k, ts in _type_attrs(node).items() for t in ts}))
        missing.add((node.op, dtypes))
    return sorted(missing)


needs_cuda = pytest.mark.skipif(not tf.test.is_built_with_cuda(),
                                reason="kernel registrations are inspected only in a CUDA build")


@pytest.fixture
def plain(request, path):
    """Plain TF ops (no XLA), with the hand-written kernels on or off as the test asks."""
    kernels_on = getattr(request, "param", True)
    path(False, kernels_on)
    return kernels_on


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- the public functions, each as (name, builder(dtype, options) -> (fn, inputs)) ---------------

def _img(shape, dtype, seed=0):
    return tf.cast(_rng(seed).normal(size=shape), dtype)


def _grid(shape, dtype, seed=1):
    return tf.cast(_rng(seed).uniform(-1.2, 1.2, size=shape), dtype)


def _theta(b, dtype):
    t = np.tile(np.array([[0.9, 0.2, 0.1], [-0.2, 0.8, -0.05]]), (b, 1, 1))
    return tf.cast(t, dtype)


def _cases():
    """(id, fn, make_inputs(dtype)): fn takes the inputs and returns a tensor to differentiate."""
    cases = []
    for interp, pad in itertools.product(stn.INTERPOLATIONS, stn.PADDING_MODES):
        for nd in (2, 3):
            if nd == 3 and interp == "bicubic":
                continue
            sp = (5, 6) if nd == 2 else (3, 4, 5)
            cases.append((f"grid_sample-{nd}d-{interp}-{pad}",
                          lambda x, g, i=interp, p=pad: stn.grid_sample(x, g, padding_mode=p, interpolation=i),
                          lambda dt, sp=sp, nd=nd: (_img((2, *sp, 3), dt), _grid((2, *sp, nd), dt))))
        cases.append((f"stn-{interp}-{pad}",
                      lambda x, t, i=interp, p=pad: stn.spatial_transformer_network(
                          x, t, padding_mode=p, interpolation=i),
                      lambda dt: (_img((2, 6, 7, 3), dt), _theta(2, dt))))
        cases.append((f"warp-{interp}-{pad}",
                      lambda x, d, i=interp, p=pad: stn.warp(x, d, padding_mode=p, interpolation=i),
                      lambda dt: (_img((2, 6, 7, 3), dt), _img((2, 6, 7, 2), dt, 3))))
    cases += [
        ("affine_grid", lambda t: stn.affine_grid(t, (5, 6)), lambda dt: (_theta(2, dt),)),
        ("bilinear_sampler", lambda x, a, b: stn.bilinear_sampler(x, a, b),
         lambda dt: (_img((2, 5, 6, 3), dt), _grid((2, 5, 6), dt), _grid((2, 5, 6), dt, 2))),
        ("integrate_velocity", lambda v: stn.integrate_velocity(v, steps=3),
         lambda dt: (_img((2, 6, 7, 2), dt),)),
        ("compose_displacements", stn.compose_displacements,
         lambda dt: (_img((2, 6, 7, 2), dt), _img((2, 6, 7, 2), dt, 4))),
        ("jacobian_determinant", stn.jacobian_determinant, lambda dt: (_img((2, 6, 7, 2), dt),)),
        ("resize_displacement", lambda d: stn.resize_displacement(d, (9, 11)),
         lambda dt: (_img((2, 6, 7, 2), dt),)),
        ("tps_grid", lambda c, s: stn.tps_grid(c, s, (6, 7)),
         lambda dt: (tf.cast(stn.control_point_lattice(3), dt)[None],
                     tf.cast(stn.control_point_lattice(3), dt)[None] + _grid((1, 9, 2), dt) * 0.1)),
        ("dsnt", dsnt.dsnt, lambda dt: (_img((2, 6, 7, 3), dt),)),
        ("dsnt-3d", dsnt.dsnt, lambda dt: (_img((2, 4, 6, 7, 3), dt),)),
        ("make_gauss", lambda c: dsnt.make_gauss(c, (6, 7), fwhm=2.0), lambda dt: (_grid((2, 3, 2), dt) * 0.5,)),
        ("js_reg_loss", lambda h, c: dsnt.js_reg_loss(dsnt.normalize_heatmaps(h), c, fwhm=2.0),
         lambda dt: (_img((2, 6, 7, 3), dt), _grid((2, 3, 2), dt) * 0.5)),
        ("kl_reg_loss", lambda h, c: dsnt.kl_reg_loss(dsnt.normalize_heatmaps(h), c, fwhm=2.0),
         lambda dt: (_img((2, 6, 7, 3), dt), _grid((2, 3, 2), dt) * 0.5)),
        ("variance_reg_loss", lambda h: dsnt.variance_reg_loss(dsnt.normalize_heatmaps(h), fwhm=2.0),
         lambda dt: (_img((2, 6, 7, 3), dt),)),
        ("euclidean_loss", dsnt.euclidean_loss, lambda dt: (_grid((2, 3, 2), dt), _grid((2, 3, 2), dt, 5))),
        ("mse_loss", dsnt.mse_loss, lambda dt: (_grid((2, 3, 2), dt), _grid((2, 3, 2), dt, 5))),
        ("l1_loss", dsnt.l1_loss, lambda dt: (_grid((2, 3, 2), dt), _grid((2, 3, 2), dt, 5))),
        ("add_coords", lambda x: coordconv.add_coords(x, with_r=True), lambda dt: (_img((2, 5, 6, 3), dt),)),
        ("coord_conv2d", lambda x, w: coordconv.coord_conv2d(x, w, with_r=True),
         lambda dt: (_img((2, 5, 6, 3), dt), _img((3, 3, 6, 4), dt, 7))),
    ]
    return cases


CASES = _cases()
CASE_IDS = [c[0] for c in CASES]
FAST_IDS = {"grid_sample-2d-bilinear-zeros", "grid_sample-3d-nearest-reflection",
            "grid_sample-2d-bicubic-border", "stn-bilinear-zeros", "warp-bilinear-border",
            "warp-nearest-zeros"} | {c for c in CASE_IDS if not c.startswith(("grid_sample", "stn-", "warp-"))}


def _traced(fn, inputs):
    """The graph of fn's output and its gradient wrt every input, traced (not run)."""
    def step(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
            total = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tf.nest.flatten(y)])
        return y, tape.gradient(total, xs)
    specs = [tf.TensorSpec(x.shape, x.dtype) for x in inputs]
    return tf.function(step).get_concrete_function(*specs).graph


def _params(fast):
    """The fast cases (every function, a few sampler modes) or the rest, in every float dtype."""
    return [pytest.param(fn, make, dt, id=f"{name}-{dt.name}")
            for (name, fn, make), dt in itertools.product(CASES, FLOATS)
            if (name in FAST_IDS) == fast]


def _check_kernels(fn, make, dtype):
    return missing_gpu_kernels(_traced(fn, make(dtype)))


@needs_cuda
@pytest.mark.parametrize("plain", [True, False], ids=["kernels", "no-kernels"], indirect=True)
@pytest.mark.parametrize("fn,make,dtype", _params(fast=True))
def test_gpu_kernels_registered(plain, fn, make, dtype):
    assert _check_kernels(fn, make, dtype) == []


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("plain", [True, False], ids=["kernels", "no-kernels"], indirect=True)
@pytest.mark.parametrize("fn,make,dtype", _params(fast=False))
def test_gpu_kernels_registered_every_mode(plain, fn, make, dtype):
    assert _check_kernels(fn, make, dtype) == []


@needs_cuda
def test_checker_flags_float16_tensor_scatter_add():
    """The negative control: TF registers TensorScatterAdd on GPU for float32/64, complex and int64
    only (checked with get_registered_kernels_for_op), so float16 must be flagged, float32 not."""
    def scatter(x):
        return tf.tensor_scatter_nd_add(x, [[0], [2]], tf.ones((2,), x.dtype))
    for dtype, expected in ((tf.float16, True), (tf.bfloat16, True), (tf.float32, False)):
        graph = tf.function(scatter).get_concrete_function(tf.TensorSpec((4,), dtype)).graph
        flagged = [op for op, _ in missing_gpu_kernels(graph)]
        assert ("TensorScatterAdd" in flagged) == expected, (dtype, flagged)


# --- no out-of-range index -----------------------------------------------------------------------
# A CPU gather raises on an index outside the tensor; a GPU gather returns 0 and XLA clamps, both
# silently. So the plain path, run eagerly on this CPU, proves the indices in range for the grids
# below, and XLA must agree with it (a clamped read would differ).

EXTREMES = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, -1.0, 1.0, 0.0, 1.0000001, -1.0000001],
                    np.float32)


def _extreme_grid(ndim):
    """Every pair (2-D) or triple (3-D) of the extreme values, one per output pixel."""
    pairs = np.array(list(itertools.product(EXTREMES, repeat=ndim)), np.float32)
    return pairs.reshape((1, len(pairs)) + (1,) * (ndim - 1) + (ndim,))


def _sample_and_grads(img, grid, **options):
    with tf.GradientTape() as tape:
        tape.watch([img, grid])
        out = stn.grid_sample(img, grid, **options)
    grads = tape.gradient(tf.reduce_sum(tf.where(tf.math.is_nan(out), 0.0, out)), [img, grid],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)   # nearest: no grid path
    return [out] + grads


@pytest.mark.parametrize("kernels_on", [True, False], ids=["kernels", "direct"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_extreme_coordinates_index_inside_the_image(path, kernels_on, ndim):
    img = tf.constant(_rng().uniform(0.5, 1.5, (1,) + (3, 4, 5)[3 - ndim:] + (2,)), tf.float32)
    grid = tf.constant(_extreme_grid(ndim))
    for interpolation, padding_mode in itertools.product(stn.INTERPOLATIONS, stn.PADDING_MODES):
        if ndim == 3 and interpolation == "bicubic":
            continue
        options = dict(interpolation=interpolation, padding_mode=padding_mode)
        path(False, kernels_on)
        plain = [t.numpy() for t in _sample_and_grads(img, grid, **options)]   # raises if out of range
        path(True, kernels_on)
        xla = [t.numpy() for t in _sample_and_grads(img, grid, **options)]
        for name, a, b in zip(["value", "image gradient", "grid gradient"], plain, xla):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True,
                                       err_msg=f"{name}, {options}")


def test_a_cpu_gather_raises_on_an_out_of_range_index():
    """The premise of the test above: on this CPU, eagerly, a bad index is an error, not a 0."""
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.gather(tf.zeros([3]), [3])
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.gather_nd(tf.zeros([2, 3]), [[0, -1]])


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_batches_sample_nothing_alike_with_and_without_xla(path, ndim):
    """A batch of 0 images (or 0 output points): right shapes, no error, XLA and plain alike."""
    spatial = (3, 4, 5)[3 - ndim:]
    for img_shape, grid_shape in (((0,) + spatial + (2,), (0,) + spatial + (ndim,)),
                                  ((1,) + spatial + (2,), (1, 0) + (1,) * (ndim - 1) + (ndim,))):
        img = tf.ones(img_shape)
        grid = tf.zeros(grid_shape)
        results = []
        for jit in (False, True):
            path(jit, True)
            out, d_img, d_grid = _sample_and_grads(img, grid)
            assert out.shape == grid_shape[:-1] + (2,), (jit, out.shape)
            assert d_img.shape == img_shape and d_grid.shape == grid_shape, jit
            results.append([t.numpy() for t in (out, d_img, d_grid)])
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)


# --- every dtype lowers under XLA --------------------------------------------------------------

def _lowers(fn, *args):
    """The HLO of ``fn`` and of its gradient, compiled with XLA (raises where a dtype does not lower)."""
    def step(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = fn(*xs)
        return out, tape.gradient(tf.reduce_sum(tf.cast(out, tf.float32)), xs,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.function(step, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


LOWERED = {
    "grid_sample": (lambda x, g: stn.grid_sample(x, g), lambda d: [tf.ones([1, 5, 6, 2], d),
                                                                   tf.zeros([1, 3, 4, 2], d)]),
    "grid_sample_3d": (lambda x, g: stn.grid_sample(x, g),
                       lambda d: [tf.ones([1, 3, 5, 6, 2], d), tf.zeros([1, 2, 3, 4, 3], d)]),
    "spatial_transformer_network": (lambda x, t: stn.spatial_transformer_network(x, t),
                                    lambda d: [tf.ones([1, 5, 6, 2], d), tf.eye(2, 3, [1], d)]),
    "warp": (lambda x, u: stn.warp(x, u), lambda d: [tf.ones([1, 5, 6, 2], d),
                                                     tf.zeros([1, 5, 6, 2], d)]),
    "dsnt": (lambda h: dsnt.dsnt(h)[1], lambda d: [tf.zeros([1, 5, 6, 2], d)]),
    "coord_channels": (lambda x: coordconv.add_coords(x), lambda d: [tf.zeros([1, 5, 6, 2], d)]),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("name", sorted(LOWERED))
def test_every_float_dtype_lowers_under_xla(name, dtype):
    fn, make = LOWERED[name]
    hlo = _lowers(fn, *make(dtype))
    hlo_type = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}[dtype.name]
    assert f"{hlo_type}[" in hlo, f"{name}: no {dtype.name} value in its HLO"


# --- determinism -------------------------------------------------------------------------------

_DETERMINISM_SCRIPT = r"""
import numpy as np, tensorflow as tf
tf.config.experimental.enable_op_determinism()
import dsnt, stn
rng = np.random.default_rng(0)
def grads(fn, *xs):
    xs = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        loss = tf.reduce_sum(fn(*xs) * 1.37)
    return [g.numpy() for g in tape.gradient(loss, xs, unconnected_gradients="zero")]
cases = []
for interpolation in ("bilinear", "nearest", "bicubic"):
    cases.append((lambda x, g, i=interpolation: stn.grid_sample(x, g, interpolation=i),
                  rng.normal(size=(2, 9, 11, 3)), rng.uniform(-1.2, 1.2, (2, 7, 8, 2))))
cases.append((lambda x, g: stn.grid_sample(x, g), rng.normal(size=(2, 5, 6, 7, 2)),
              rng.uniform(-1.2, 1.2, (2, 4, 5, 6, 3))))
cases.append((stn.spatial_transformer_network, rng.normal(size=(2, 9, 11, 3)),
              np.tile(np.array([[[0.9, 0.3, 0.1], [-0.2, 1.1, 0.0]]]), (2, 1, 1))))
cases.append((stn.warp, rng.normal(size=(2, 9, 11, 3)), rng.normal(size=(2, 9, 11, 2))))
cases.append((lambda h: dsnt.dsnt(h)[1], rng.normal(size=(2, 9, 11, 3))))
for fn, *xs in cases:
    xs = [x.astype(np.float32) for x in xs]
    first, second = grads(fn, *xs), grads(fn, *xs)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()
        assert np.isfinite(a).all()
print("repeatable", len(cases))
"""


def test_gradients_are_bitwise_repeatable_under_op_determinism():
    """``enable_op_determinism`` is process-wide, so this runs in a fresh interpreter: no op
    raises under it, and two calls give the same gradient bits (on CPU; docs/gpu.md)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "repeatable 7" in run.stdout
