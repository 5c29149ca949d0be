"""Every public function in every execution mode, against its eager result,
and the eager result against an independent reference.

For each public function of stn, dsnt and coordconv (table CASES): the same
call eagerly, inside tf.function with every dimension unknown, in a
tf.compat.v1 graph with placeholders of unknown shape and a Session, and
under jit_compile=True must give the eager numbers, and gradients with
respect to the differentiable inputs must match the eager gradients. The
eager numbers and gradients are in turn anchored to REFERENCES: the same
function written in PyTorch (float64) from PyTorch's own grid_sample /
affine_grid / convolutions, the authors' dsntnn, or the definition, with
the gradients by torch.autograd. Every case must have a reference.
"""
import importlib

import dsntnn
import numpy as np
import pytest
import tensorflow as tf
import torch

import coordconv
import dsnt
import spatial_convention
import stn
from tests.references import torch_add_coords, torch_conv_same, torch_grid, torch_sample, torch_stn

RNG = np.random.default_rng(0)


def f32(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


IMG = f32(2, 7, 9, 3)
THETA6 = (np.eye(2, 3).reshape(1, 6) + 0.2 * f32(2, 6)).astype(np.float32)
THETA8 = np.concatenate([THETA6, 0.05 * f32(2, 2)], axis=1)
GRID = f32(2, 4, 5, 2, low=-1.3, high=1.3)
HEAT = f32(2, 8, 10, 3, low=-2, high=2)
HEAT1 = f32(2, 8, 10, 1, low=-2, high=2)
CENTRES = f32(2, 3, 2, low=-0.8, high=0.8)
FILTERS = f32(3, 3, 5, 4)

# name -> (function of tensors, inputs, indices of inputs to differentiate)
CASES = {
    "stn.spatial_transformer_network": (
        lambda x, t: stn.spatial_transformer_network(x, t, (5, 6)), (IMG, THETA6), (0, 1)),
    "stn.spatial_transformer_network[projective,bicubic,reflection]": (
        lambda x, t: stn.spatial_transformer_network(x, t, interpolation="bicubic",
                                                     padding_mode="reflection",
                                                     align_corners=True),
        (IMG, THETA8), (0, 1)),
    "stn.spatial_transformer_network[nearest,border]": (
        lambda x, t: stn.spatial_transformer_network(x, t, interpolation="nearest",
                                                     padding_mode="border"),
        (IMG, THETA6), (0,)),
    "stn.grid_sample": (lambda x, g: stn.grid_sample(x, g), (IMG, GRID), (0, 1)),
    "stn.affine_grid": (lambda t: stn.affine_grid(t, (3, 4)), (THETA6,), (0,)),
    "stn.affine_grid_generator": (lambda t: stn.affine_grid_generator(3, 4, t), (THETA6,), (0,)),
    "stn.bilinear_sampler": (lambda x, gx, gy: stn.bilinear_sampler(x, gx, gy),
                             (IMG, GRID[..., 0], GRID[..., 1]), (0, 1, 2)),
    "stn.attention_theta": (stn.attention_theta, (f32(2, 3),), (0,)),
    "stn.similarity_theta": (stn.similarity_theta, (f32(2, 4),), (0,)),
    "stn.rotation_theta": (stn.rotation_theta, (f32(2),), (0,)),
    "stn.affine_diffeomorphic_theta": (stn.affine_diffeomorphic_theta, (0.3 * f32(2, 6),), (0,)),
    "stn.projective_theta": (stn.projective_theta, (f32(2, 8),), (0,)),
    # With theta's parameter count unknown, invert/compose cannot know it is
    # affine and return the homogeneous [B, 3, 3] form (documented); here the
    # matrix dims stay known and only the batch is unknown.
    "stn.invert_affine": (stn.invert_affine, (THETA6.reshape(2, 2, 3),), (0,)),
    "stn.compose_affine": (stn.compose_affine, (THETA6.reshape(2, 2, 3), THETA8), (0, 1)),
    "stn.pixel_to_normalized": (lambda c: stn.pixel_to_normalized(c, 7), (f32(3, 4),), (0,)),
    "dsnt.dsnt": (lambda h: dsnt.dsnt(h), (HEAT,), (0,)),
    # One point as [B, H, W]: with [B, H, W, 1] and an unknown channel count
    # the channel axis is kept (documented), so the rank-3 form is used here.
    "dsnt.dsnt[relu,one point]": (lambda h: dsnt.dsnt(h, method="relu"), (HEAT1[..., 0],), (0,)),
    "dsnt.js_reg_loss": (lambda h, c: dsnt.js_reg_loss(dsnt.dsnt(h)[0], c, fwhm=3.0),
                         (HEAT, CENTRES), (0, 1)),
    "dsnt.kl_reg_loss": (lambda h, c: dsnt.kl_reg_loss(dsnt.dsnt(h)[0], c),
                         (HEAT, CENTRES), (0, 1)),
    "dsnt.variance_reg_loss": (lambda h: dsnt.variance_reg_loss(dsnt.dsnt(h)[0], fwhm=2.0),
                               (HEAT,), (0,)),
    "dsnt.euclidean_loss": (dsnt.euclidean_loss, (CENTRES, 0.5 * CENTRES), (0, 1)),
    "dsnt.mse_loss": (dsnt.mse_loss, (CENTRES, 0.5 * CENTRES), (0, 1)),
    "dsnt.make_gauss": (lambda c: dsnt.make_gauss(c, (8, 10), fwhm=2.0), (CENTRES,), (0,)),
    "dsnt.normalized_to_pixel_coordinates": (
        lambda c: dsnt.normalized_to_pixel_coordinates(c, (8, 10)), (CENTRES,), (0,)),
    "stn.affine_theta": (stn.affine_theta, (f32(2, 6),), (0,)),
    "stn.transform_theta[diffeomorphic]": (lambda p: stn.transform_theta("diffeomorphic", p),
                                           (0.3 * f32(2, 6),), (0,)),
    "stn.AffineWarpConstraints.theta": (stn.AffineWarpConstraints.no_shear().theta,
                                        (f32(2, 4),), (0,)),
    "dsnt.normalize_heatmaps": (lambda h: dsnt.normalize_heatmaps(h, "sigmoid"), (HEAT,), (0,)),
    "dsnt.heatmap_coords": (lambda h: dsnt.heatmap_coords(dsnt.normalize_heatmaps(h)), (HEAT,), (0,)),
    "dsnt.l1_loss": (dsnt.l1_loss, (CENTRES, 0.5 * CENTRES), (0, 1)),
    "dsnt.average_loss": (lambda l, m: dsnt.average_loss(l, m), (f32(2, 3), f32(2, 3, low=0, high=1)),
                          (0,)),
    "coordconv.add_coords": (lambda x: coordconv.add_coords(x, with_r=True), (IMG,), (0,)),
    "coordconv.coord_conv1d": (lambda x, w: coordconv.coord_conv1d(x, w),
                               (f32(2, 9, 3), f32(3, 4, 2)), (0, 1)),
    "coordconv.coord_conv3d": (lambda x, w: coordconv.coord_conv3d(x, w, with_r=True),
                               (f32(1, 4, 5, 6, 2), f32(2, 2, 2, 6, 3)), (0, 1)),
    "coordconv.coord_conv2d": (lambda x, w: coordconv.coord_conv2d(x, w), (IMG, FILTERS), (0, 1)),
}


# ---------------------------------------------------------------- references
#
# name -> the case's function on float64 torch tensors (NHWC as ours),
# returning its output or a tuple of outputs in the order of ours.

def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def _homogeneous(theta):
    """[B, 6] / [B, 2, 3] / [B, 8] / [B, 3, 3] -> [B, 3, 3]."""
    b = theta.shape[0]
    flat = theta.reshape(b, -1)
    if flat.shape[1] == 6:
        flat = torch.cat([flat, torch.tensor([[0.0, 0.0, 1.0]], dtype=flat.dtype).expand(b, 3)], 1)
    elif flat.shape[1] == 8:
        flat = torch.cat([flat, torch.ones(b, 1, dtype=flat.dtype)], 1)
    return flat.reshape(b, 3, 3)


def _rows(*entries):
    """Six [B] entries, row-major -> [B, 2, 3]."""
    return torch.stack(entries, -1).reshape(-1, 2, 3)


def _sigma(fwhm):
    return fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def _softmax_heatmaps(h):
    return dsntnn.flat_softmax(_nchw(h).contiguous())


def _ref_similarity(p):
    s, a, tx, ty = p.unbind(-1)
    c, n = s * torch.cos(a), s * torch.sin(a)
    return _rows(c, -n, tx, n, c, ty)


def _ref_expm(p):
    generator = torch.cat([p.reshape(-1, 2, 3), torch.zeros(p.shape[0], 1, 3, dtype=p.dtype)], 1)
    return torch.linalg.matrix_exp(generator)[:, :2]


def _ref_relu_dsnt(h):
    r = torch.relu(h)
    p = r / r.sum(dim=(1, 2), keepdim=True)
    return p, dsntnn.dsnt(p[:, None])[:, 0]


def _ref_sigmoid_heatmaps(h):
    s = torch.sigmoid(h)
    return s / s.sum(dim=(1, 2), keepdim=True)


def _ref_no_shear(p):
    zero = torch.zeros_like(p[:, 0])
    return _rows(p[:, 0], zero, p[:, 1], zero, p[:, 2], p[:, 3])


REFERENCES = {
    "stn.spatial_transformer_network": lambda x, t: torch_stn(x, t, (5, 6)),
    "stn.spatial_transformer_network[projective,bicubic,reflection]": (
        lambda x, t: torch_stn(x, t, interpolation="bicubic", padding_mode="reflection",
                               align_corners=True)),
    "stn.spatial_transformer_network[nearest,border]": (
        lambda x, t: torch_stn(x, t, interpolation="nearest", padding_mode="border")),
    "stn.grid_sample": lambda x, g: torch_sample(x, g, align_corners=False),
    "stn.affine_grid": lambda t: torch_grid(t, 3, 4, False),
    "stn.affine_grid_generator": lambda t: torch_grid(t, 3, 4, False).permute(0, 3, 1, 2),
    "stn.bilinear_sampler": (
        lambda x, gx, gy: torch_sample(x, torch.stack([gx, gy], -1), align_corners=False)),
    "stn.attention_theta": lambda p: _rows(p[:, 0], 0 * p[:, 0], p[:, 1],
                                           0 * p[:, 0], p[:, 0], p[:, 2]),
    "stn.similarity_theta": _ref_similarity,
    "stn.rotation_theta": lambda a: _ref_similarity(
        torch.stack([torch.ones_like(a), a, torch.zeros_like(a), torch.zeros_like(a)], -1)),
    "stn.affine_diffeomorphic_theta": _ref_expm,
    "stn.projective_theta": _homogeneous,
    "stn.invert_affine": lambda t: torch.linalg.inv(_homogeneous(t))[:, :2],
    "stn.compose_affine": lambda a, b: (
        lambda m: m / m[:, 2:, 2:])(_homogeneous(a) @ _homogeneous(b)),
    # pixel i of n has normalised centre (2 i + 1) / n - 1
    "stn.pixel_to_normalized": lambda c: (2.0 * c + 1.0) / 7.0 - 1.0,
    "stn.affine_theta": lambda p: p.reshape(-1, 2, 3),
    "stn.transform_theta[diffeomorphic]": _ref_expm,
    "stn.AffineWarpConstraints.theta": _ref_no_shear,
    "dsnt.dsnt": lambda h: (_nhwc(_softmax_heatmaps(h)), dsntnn.dsnt(_softmax_heatmaps(h))),
    "dsnt.dsnt[relu,one point]": _ref_relu_dsnt,
    "dsnt.js_reg_loss": lambda h, c: dsntnn.average_loss(
        dsntnn.js_reg_losses(_softmax_heatmaps(h), c, _sigma(3.0))),
    "dsnt.kl_reg_loss": lambda h, c: dsntnn.average_loss(
        dsntnn.kl_reg_losses(_softmax_heatmaps(h), c, _sigma(1.0))),
    "dsnt.variance_reg_loss": lambda h: dsntnn.average_loss(
        dsntnn.variance_reg_losses(_softmax_heatmaps(h), _sigma(2.0))),
    "dsnt.euclidean_loss": lambda a, b: dsntnn.average_loss(dsntnn.euclidean_losses(a, b)),
    "dsnt.mse_loss": lambda a, b: dsntnn.average_loss(dsntnn.mse_losses(a, b)),
    "dsnt.l1_loss": lambda a, b: dsntnn.average_loss(dsntnn.l1_losses(a, b)),
    "dsnt.average_loss": dsntnn.average_loss,
    "dsnt.make_gauss": lambda c: _nhwc(dsntnn.make_gauss(c, (8, 10), _sigma(2.0))),
    "dsnt.normalized_to_pixel_coordinates": (
        lambda c: dsntnn.normalized_to_pixel_coordinates(c, (8, 10))),
    "dsnt.normalize_heatmaps": _ref_sigmoid_heatmaps,
    "dsnt.heatmap_coords": lambda h: dsntnn.dsnt(_softmax_heatmaps(h)),
    "coordconv.add_coords": lambda x: torch_add_coords(x, with_r=True),
    "coordconv.coord_conv1d": lambda x, w: torch_conv_same(torch_add_coords(x), w),
    "coordconv.coord_conv2d": lambda x, w: torch_conv_same(torch_add_coords(x), w),
    "coordconv.coord_conv3d": lambda x, w: torch_conv_same(torch_add_coords(x, with_r=True), w),
}


def reference(name):
    """The reference's outputs and the gradients of the cases' loss, float64."""
    fn, inputs, wrt = CASES[name]
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=i in wrt)
               for i, x in enumerate(inputs)]
    out = REFERENCES[name](*tensors)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    sum((o ** 2).sum() for o in outs).backward()
    return [o.detach().numpy() for o in outs], [tensors[i].grad.numpy() for i in wrt]


def flat(result):
    return [np.asarray(r) for r in tf.nest.flatten(result)]


_EAGER = {}


def eager_result(name):
    """``eager`` of a case, computed once per process (every mode compares with it)."""
    if name not in _EAGER:
        _EAGER[name] = eager(*CASES[name])
    return _EAGER[name]


def eager(fn, inputs, wrt):
    tensors = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn(*tensors)
        loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) ** 2) for o in tf.nest.flatten(out))
    grads = tape.gradient(loss, [tensors[i] for i in wrt])
    return flat(out), [np.asarray(g) for g in grads]


def traced(fn, wrt):
    def with_grads(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(list(tensors))
            out = fn(*tensors)
            loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) ** 2) for o in tf.nest.flatten(out))
        return out, tape.gradient(loss, [tensors[i] for i in wrt])
    return with_grads


KEEP_STATIC = {"stn.invert_affine": 2, "stn.compose_affine": 2}  # trailing dims kept


def unknown_shape(x, keep=0):
    """``x``'s shape with every dimension unknown but the last ``keep``."""
    shape = [None] * np.ndim(x)
    if keep:
        shape[-keep:] = np.shape(x)[-keep:]
    return shape


def in_tf_function(fn, inputs, wrt, keep=0):
    """Outputs and gradients of ``fn`` traced with unknown shapes (``unknown_shape``)."""
    traced_fn = tf.function(traced(fn, wrt),
                            input_signature=[tf.TensorSpec(unknown_shape(x, keep), tf.float32)
                                             for x in inputs])
    out, grads = traced_fn(*inputs)
    return flat(out), [np.asarray(g) for g in grads]


def in_tf1_graph(fn, inputs, wrt, keep=0):
    """Outputs and gradients of ``fn`` in a TF1 graph of placeholders with unknown shapes,
    run in a Session."""
    with tf.Graph().as_default():
        placeholders = [tf.compat.v1.placeholder(tf.float32, unknown_shape(x, keep))
                        for x in inputs]
        out = fn(*placeholders)
        loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) ** 2) for o in tf.nest.flatten(out))
        grads = tf.compat.v1.gradients(loss, [placeholders[i] for i in wrt])
        with tf.compat.v1.Session() as sess:
            got_out, got_grads = sess.run([tf.nest.flatten(out), grads],
                                          dict(zip(placeholders, inputs)))
    return [np.asarray(o) for o in got_out], got_grads


def under_jit(fn, inputs, wrt):
    """Outputs and gradients of ``fn`` in a ``tf.function(jit_compile=True)``."""
    out, grads = tf.function(traced(fn, wrt), jit_compile=True)(*inputs)
    return flat(out), [np.asarray(g) for g in grads]


def check(got, want, atol=2e-5):
    got_out, got_grads = got
    want_out, want_grads = want
    assert len(got_out) == len(want_out)
    for g, w in zip(got_out, want_out):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)
    for g, w in zip(got_grads, want_grads):
        assert g is not None
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-3, atol=1e-3)


def test_every_case_has_a_reference():
    assert sorted(REFERENCES) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_matches_the_reference(name):
    """float32 against float64: values and gradients to float32 round-off
    relative to each output's scale (heatmap entries are O(0.01), summed
    gradients O(10)). Measured: at most 1e-6 of the scale (the bicubic
    projective warp), so 1e-5 of it; a convention or sign bug costs O(1)."""
    (got_out, got_grads), (want_out, want_grads) = eager_result(name), reference(name)
    assert [np.shape(g) for g in got_out] == [np.shape(w) for w in want_out]
    for i, (g, w) in enumerate(zip(got_out + got_grads, want_out + want_grads)):
        what = f"output {i}" if i < len(got_out) else f"gradient {i - len(got_out)}"
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tf_function_with_every_dim_unknown(name):
    check(in_tf_function(*CASES[name], KEEP_STATIC.get(name, 0)), eager_result(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tf1_graph_with_every_dim_unknown(name):
    check(in_tf1_graph(*CASES[name], KEEP_STATIC.get(name, 0)), eager_result(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_compile(name):
    check(under_jit(*CASES[name]), eager_result(name))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64])
def test_dtypes_are_kept_by_every_layer(dtype):
    x = tf.cast(IMG, dtype)
    assert stn.spatial_transformer_network(x, tf.cast(THETA6, dtype)).dtype == dtype
    assert stn.grid_sample(x, tf.cast(GRID, dtype)).dtype == dtype
    heat, coords = dsnt.dsnt(tf.cast(HEAT, dtype))
    assert heat.dtype == dtype and coords.dtype == dtype
    assert dsnt.js_reg_loss(heat, tf.cast(CENTRES, dtype)).dtype == dtype
    assert coordconv.add_coords(x).dtype == dtype


@pytest.mark.parametrize("env,want", [({}, True), ({"SPATIAL_JIT": "0"}, False),
                                      ({"STN_JIT": "off"}, False),
                                      ({"SPATIAL_JIT": "1", "STN_JIT": "0"}, True)])
def test_one_jit_switch_from_the_environment(monkeypatch, env, want):
    """SPATIAL_JIT (or the older STN_JIT) sets the one switch that stn's
    sampler and dsnt's divergence share; set_jit changes it for both."""
    for var in ("SPATIAL_JIT", "STN_JIT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    try:
        importlib.reload(spatial_convention)
        assert spatial_convention.jit_enabled() is want
        stn.set_jit(not want)
        assert spatial_convention.jit_enabled() is (not want)
        dsnt.set_jit(want)
        assert spatial_convention.jit_enabled() is want
    finally:
        monkeypatch.undo()
        importlib.reload(spatial_convention)


def test_set_jit_wants_a_bool():
    with pytest.raises(TypeError, match="enabled must be True or False"):
        stn.set_jit("no")


def test_compiled_functions_see_every_static_size_after_other_sizes(jit):
    """The compiled sampler's code sees each call's static sizes even after other
    sizes ran in the process (a function retraced with shapes generalised to None
    made the sampler take its general path for every later size: 2x slower at
    64 x 60 x 60 x 1), and a batch unknown to the caller stays unknown."""
    seen = []

    def record(x):
        seen.append(x.shape.as_list())
        return 2.0 * x

    shapes = ([2, 5, 6, 16], [3, 7, 4, 3], [1, 4, 4, 64], [2, 5, 6, 1], [2, 5, 6, 16])
    for shape in shapes:
        x = tf.ones(shape)
        np.testing.assert_array_equal(spatial_convention.compiled(record, x), 2.0 * x)
    # Compiled: traced once per size, the repeat reuses its trace; plain ops: every call.
    assert seen == list(shapes[:4] if spatial_convention.jit_enabled() else shapes)

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 1])])
    def unknown_batch(x):
        return spatial_convention.compiled(record, x)

    unknown_batch(tf.ones([2, 4, 4, 1]))
    assert seen[-1] == [None, 4, 4, 1]
