"""The STN groups of the benchmarks: ``stn``, ``stn-small``, ``volume``, ``warp``, ``velocity``, ``tps``.

Each group is a function ``(case, rng, env, args) -> (impls, skipped)``
whose docstring is its spec: the inputs, the loss, and what each
implementation is. It builds every implementation's step with the harness's
runner (``env.tf_step`` / ``env.torch_step``, forward + backward, the loss
returned with the gradients) and checks, at build time, that they compute
the same thing (``check_same``). The inputs are made with NumPy from ``rng``
and then placed on the run's devices (``env.tf_tensor``,
``env.torch_tensor``), so every implementation sees the same numbers.
"""

import functools
import importlib.util
import os

import numpy as np

from bench_harness import Impl, check_same

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VELOCITY_STEPS = 7
TINY_VELOCITY_STEPS = 2   # the tiny run only checks the code path


@functools.lru_cache(maxsize=None)
def load_seed_stn():
    """The seed's ``stn`` package (also named ``stn``) under another module name.

    Loaded from ``$SEED_STN_DIR`` (default ``.venv/seed-stn``). Returns
    ``(module, None)``, or ``(None, why)`` where it is not installed.
    """
    root = os.environ.get("SEED_STN_DIR") or os.path.join(ROOT, ".venv", "seed-stn")
    path = os.path.join(root, "stn", "transformer.py")
    if not os.path.exists(path):
        return None, f"seed stn package not found at {path} (./run.sh setup installs it)"
    spec = importlib.util.spec_from_file_location("seed_stn_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, None


def seed_stn_version():
    """What ``machine_info`` reports for the seed STN: its version, or None."""
    return "1.0.1 (loaded from SEED_STN_DIR)" if load_seed_stn()[0] is not None else None


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def random_theta(rng, batch):
    """Affine thetas [B, 2, 3] near a rotation (normalised, output -> input)."""
    angle = rng.uniform(-np.pi / 6, np.pi / 6, batch)
    scale = rng.uniform(0.9, 1.1, batch)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    theta = np.stack([np.stack([c, -s, rng.uniform(-0.1, 0.1, batch)], -1),
                      np.stack([s, c, rng.uniform(-0.1, 0.1, batch)], -1)], 1)
    theta += rng.normal(0.0, 0.02, theta.shape)
    return theta.astype(np.float32)


def random_theta_3d(rng, batch):
    """Affine thetas [B, 3, 4] near a rotation (normalised, output -> input)."""
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


def theta_to_projective_pixels(theta, height, width):
    """[B, 2, 3] normalised theta -> [B, 8] ImageProjectiveTransformV3 transforms.

    The op maps output pixel (x, y) (column, row; pixel centres at integers)
    to input point ``((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)``,
    ``k = c0 x + c1 y + 1``. With ``align_corners=False`` pixel i of n sits at
    normalised (2 i + 1) / n - 1, so M = P^-1 . theta . P with
    P = [[2/W, 0, 1/W - 1], [0, 2/H, 1/H - 1], [0, 0, 1]].
    """
    p = np.array([[2.0 / width, 0, 1.0 / width - 1], [0, 2.0 / height, 1.0 / height - 1],
                  [0, 0, 1]])
    p_inv = np.linalg.inv(p)
    t3 = np.concatenate([theta.astype(np.float64),
                         np.broadcast_to([[[0.0, 0.0, 1.0]]], (theta.shape[0], 1, 3))], 1)
    m = p_inv @ t3 @ p
    m = m / m[:, 2:3, 2:3]
    return m.reshape(-1, 9)[:, :8].astype(np.float32)


def identity_grid(spatial):
    """Normalised ``align_corners=False`` pixel centres, ``[1, *spatial, ndim]`` (x, y[, z]).

    ``spatial`` is (H, W) or (D, H, W); pixel i of n at (2 i + 1) / n - 1.
    """
    axes = [(2.0 * np.arange(n) + 1.0) / n - 1.0 for n in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")          # (y, x) or (z, y, x)
    return np.stack(mesh[::-1], axis=-1)[None].astype(np.float32)


def smooth_field(rng, batch, spatial, amplitude, waves=3):
    """A smooth random field ``[B, *spatial, ndim]``: per component a sum of plane waves.

    Each of ``waves`` waves has 1-3 periods along each axis, a random phase
    and amplitude ``amplitude / waves`` (so |field| <= amplitude, in pixels).
    """
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


def _nchw(array):
    """Channels-last [B, *spatial, C] as channels-first [B, C, *spatial] (a view)."""
    return np.moveaxis(array, -1, 1)


def _nhwc(array):
    """Channels-first [B, C, *spatial] as channels-last [B, *spatial, C] (a view)."""
    return np.moveaxis(array, 1, -1)


def _torch_inputs(env, skipped, image, cotangent, parameters):
    """``(F, image, cotangent, parameters)``: ``torch.nn.functional``, the image
    and cotangent as channels-first torch tensors and the transform's
    parameters as they are, image and parameters with gradients; None, the
    reason added to ``skipped``, where torch is not installed."""
    if env.torch is None:
        skipped.append(("torch", env.torch_missing))
        return None
    return (env.torch.nn.functional, env.torch_tensor(_nchw(image), grad=True),
            env.torch_tensor(_nchw(cotangent)), env.torch_tensor(parameters, grad=True))


# ---------------------------------------------------------------------------
# The groups
# ---------------------------------------------------------------------------

def stn_impls(shape, rng, env, args):
    """``stn``: the STN sampler on (B, H, W, C) images, forward + backward.

    A random affine ``theta`` near a rotation (angle in +-30 deg, scale
    0.9-1.1, translation +-0.1, plus N(0, 0.02) noise), output size = input
    size, bilinear, zeros padding, ``align_corners=False``; the loss is
    ``sum(out * cotangent)`` with a fixed random cotangent and the step
    returns the gradients with respect to the image and ``theta``:

    * ``ours``: ``stn.spatial_transformer_network(img, theta)`` inside a plain
      ``tf.function`` (no flags: the default a user gets).
    * ``seed stn``: the seed's ``stn`` package 1.0.1
      (``spatial_transformer_network`` in a ``tf.function``), loaded from
      ``$SEED_STN_DIR`` (default ``.venv/seed-stn``) under another module
      name. It uses the ``align_corners=True``-style grid with an off-by-one
      scale, so it computes a slightly different warp (not checked); same
      amount of work.
    * ``torch``: PyTorch ``affine_grid`` + ``grid_sample`` on NCHW tensors
      made beforehand (layout conversion excluded) -- the reference of the
      ratios; ``torch +NHWC``: the same but starting from / returning NHWC
      tensors, the permutes (and their gradients) included.
    * ``tf ImageProjectiveTransformV3``: TF's native C++ kernel, forward only
      (it has no gradient with respect to the transform). Our normalised
      ``theta`` is converted to its 8-parameter pixel-space form
      ``M = P_in^-1 . theta . P_out`` where ``P`` maps pixel indices to
      normalised ``align_corners=False`` coordinates (pixel i of n at
      (2 i + 1) / n - 1), so it computes the same warp as ``ours`` (bilinear,
      constant 0 fill; ``theta_to_projective_pixels``).

    Check: ``ours``, ``torch`` and ``torch +NHWC`` give the same forward
    output (atol 1e-4).
    """
    tf, stn = env.tf, env.stn
    b, h, w, c = shape
    img, cot = _normal(rng, shape), _normal(rng, shape)
    theta = random_theta(rng, b)
    impls, skipped = [], []

    tf_args = [env.tf_tensor(img), env.tf_tensor(theta.reshape(b, 6)), env.tf_tensor(cot)]
    ours, ours_out = env.tf_step(env.tf_cotangent_loss(stn.spatial_transformer_network),
                                 tf_args, [0, 1])
    impls.append(Impl("ours", "tf", ours, note="stn.spatial_transformer_network in tf.function"))
    seed, missing = load_seed_stn()
    if seed is not None:
        seed_run, _ = env.tf_step(env.tf_cotangent_loss(seed.spatial_transformer_network),
                                  tf_args, [0, 1])
        impls.append(Impl("seed stn", "tf", seed_run, note="seed stn 1.0.1 in tf.function"))
    else:
        skipped.append(("seed stn", missing))

    torch = env.torch
    if torch is not None:
        F = torch.nn.functional
        x_nchw, x_nhwc = env.torch_tensor(_nchw(img), grad=True), env.torch_tensor(img, grad=True)
        g_nchw, g_nhwc = env.torch_tensor(_nchw(cot)), env.torch_tensor(cot)
        t_t = env.torch_tensor(theta, grad=True)

        def sample(x):
            grid = F.affine_grid(t_t, (b, c, h, w), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)

        def nhwc_forward():
            return sample(x_nhwc.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()

        nchw_run, nchw_out = env.torch_step(
            env.torch_cotangent_loss(lambda: sample(x_nchw), g_nchw), [x_nchw, t_t])
        nhwc_run, nhwc_out = env.torch_step(
            env.torch_cotangent_loss(nhwc_forward, g_nhwc), [x_nhwc, t_t])
        check_same(f"stn {shape}: ours vs torch", ours_out, _nhwc(nchw_out))
        check_same(f"stn {shape}: ours vs torch +NHWC", ours_out, nhwc_out)
        impls.append(Impl("torch", "torch", nchw_run,
                          note="affine_grid + grid_sample, NCHW inputs (layout conversion excluded)"))
        impls.append(Impl("torch +NHWC", "torch", nhwc_run,
                          note="same, NHWC in/out: permutes and their gradients included"))
    else:
        skipped.append(("torch", env.torch_missing))

    def projective(x, m):
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=m, output_shape=tf.constant([h, w], tf.int32),
            fill_value=tf.constant(0.0), interpolation="BILINEAR", fill_mode="CONSTANT")
        return out, out

    native, _ = env.tf_step(
        projective, [tf_args[0], env.tf_tensor(theta_to_projective_pixels(theta, h, w))], [])
    impls.append(Impl("tf ImageProjectiveTransformV3", "tf", native, backward=False,
                      note="forward only: no gradient w.r.t. the transform"))
    return impls, skipped


def stn_small_impls(shape, rng, env, args):
    """``stn-small``: ``stn``'s step at the small sizes of MNIST-like STN models.

    The same step, the same implementations and the same check as
    ``stn_impls``, at B = 64 with 28 x 28, 42 x 42 and 60 x 60 images of one
    channel, and B = 8 at 64 x 64 x 3. There the per-call overheads (op
    dispatch, thread wake-up) weigh as much as the arithmetic.
    """
    return stn_impls(shape, rng, env, args)


def volume_impls(shape, rng, env, args):
    """``volume``: the 5-D (trilinear) STN on volumes (B, D, H, W, C), forward + backward.

    A random 3-D affine ``theta`` [B, 3, 4] near a rotation (Euler angles in
    +-15 deg, scale 0.9-1.1, translation +-0.1, plus N(0, 0.02) noise),
    output size = input size, zeros padding, ``align_corners=False``; loss
    ``sum(out * cotangent)``, gradients to the volume and ``theta``:

    * ``ours``: ``stn.spatial_transformer_network(vol, theta)`` (a 5-D input
      and a [B, 3, 4] theta) in a plain ``tf.function``.
    * ``ours affine_grid+grid_sample``: ``stn.grid_sample(vol,
      stn.affine_grid(theta, (D, H, W)))``, the two-call form (the grid is
      materialised).
    * ``torch``: ``F.affine_grid`` (size (B, C, D, H, W)) + ``F.grid_sample``
      (bilinear = trilinear on 5-D) on an NCDHW volume made beforehand -- the
      reference.

    Check: both of ours equal ``torch``'s forward output (atol 1e-4).
    """
    stn = env.stn
    b, d, h, w, c = shape
    vol, cot = _normal(rng, shape), _normal(rng, shape)
    theta = random_theta_3d(rng, b)
    tf_args = [env.tf_tensor(vol), env.tf_tensor(theta), env.tf_tensor(cot)]
    impls, skipped = [], []

    def two_calls(x, t):
        return stn.grid_sample(x, stn.affine_grid(t, (d, h, w)))

    ours, ours_out = env.tf_step(env.tf_cotangent_loss(stn.spatial_transformer_network),
                                 tf_args, [0, 1])
    two, two_out = env.tf_step(env.tf_cotangent_loss(two_calls), tf_args, [0, 1])
    impls += [Impl("ours", "tf", ours,
                   note="stn.spatial_transformer_network on 5-D, [B, 3, 4] theta, tf.function"),
              Impl("ours affine_grid+grid_sample", "tf", two,
                   note="stn.affine_grid + stn.grid_sample (grid materialised), tf.function")]

    torch_inputs = _torch_inputs(env, skipped, vol, cot, theta)
    if torch_inputs is None:
        return impls, skipped
    F, x_t, g_t, t_t = torch_inputs

    def forward():
        grid = F.affine_grid(t_t, (b, c, d, h, w), align_corners=False)
        return F.grid_sample(x_t, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)

    run, ref = env.torch_step(env.torch_cotangent_loss(forward, g_t), [x_t, t_t])
    check_same("volume: ours vs torch", ours_out, _nhwc(ref))
    check_same("volume: ours affine_grid+grid_sample vs torch", two_out, _nhwc(ref))
    impls.append(Impl("torch", "torch", run,
                      note="F.affine_grid + F.grid_sample, 5-D NCDHW (layout excluded)"))
    return impls, skipped


def warp_impls(shape, rng, env, args):
    """``warp``: a dense displacement field, 2-D, forward + backward.

    Images (B, H, W, C) and a smooth random displacement [B, H, W, 2] in
    *pixels* (sum of three random plane waves per component, amplitude up to
    4 pixels, so that the border is crossed), bilinear,
    ``padding_mode="border"`` and ``align_corners=False`` (``stn.warp``'s
    defaults); loss ``sum(out * cotangent)``, gradients to the image and the
    displacement:

    * ``ours``: ``stn.warp(image, displacement)`` (``units="pixels"``, the
      default) in a plain ``tf.function``.
    * ``torch``: ``F.grid_sample(x, identity + displacement * (2 / W, 2 / H),
      padding_mode="border", align_corners=False)`` on NCHW images: the
      identity grid (pixel centres (2 i + 1) / n - 1, the same convention) is
      built beforehand; the pixel -> normalised conversion of the
      displacement runs inside the timed step (it is part of what
      ``stn.warp`` does). The reference.

    Check: the forward outputs agree (atol 1e-4).
    """
    stn = env.stn
    b, h, w, c = shape
    img, cot = _normal(rng, shape), _normal(rng, shape)
    disp = smooth_field(rng, b, (h, w), amplitude=4.0)           # pixels, (x, y)
    tf_args = [env.tf_tensor(img), env.tf_tensor(disp), env.tf_tensor(cot)]
    impls, skipped = [], []

    # stn.warp's defaults: units="pixels", padding "border", align_corners=False.
    ours, ours_out = env.tf_step(env.tf_cotangent_loss(stn.warp), tf_args, [0, 1])
    impls.append(Impl("ours", "tf", ours,
                      note="stn.warp (pixels, border, align_corners=False) in tf.function"))

    torch_inputs = _torch_inputs(env, skipped, img, cot, disp)
    if torch_inputs is None:
        return impls, skipped
    F, x_t, g_t, u_t = torch_inputs
    ident = env.torch_tensor(identity_grid((h, w)))
    to_norm = env.torch_tensor(np.array([2.0 / w, 2.0 / h], np.float32))

    def forward():
        grid = ident + u_t * to_norm          # pixels -> normalised, inside the step
        return F.grid_sample(x_t, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    run, ref = env.torch_step(env.torch_cotangent_loss(forward, g_t), [x_t, u_t])
    check_same("warp: ours vs torch", ours_out, _nhwc(ref))
    impls.append(Impl("torch", "torch", run,
                      note="F.grid_sample(identity + displacement * 2 / size), border, NCHW"))
    return impls, skipped


def velocity_impls(shape, rng, env, args):
    """``velocity``: diffeomorphic integration by scaling and squaring, 3-D, forward + backward.

    A smooth random stationary velocity field [B, D, H, W, 3] in pixels
    (plane waves, amplitude up to 3 pixels), 7 squarings; loss
    ``sum(displacement * cotangent)``, gradient to the velocity. No target:
    time and memory are reported. (``--tiny`` integrates with 2 squarings.)

    * ``ours``: ``stn.integrate_velocity(v, steps=7)`` in a plain
      ``tf.function`` (the kernels: ``stn.warp`` staged and XLA-compiled, 7
      times).
    * ``ours plain``: the same traced under
      ``spatial_convention.use_kernels(False)``: the direct maths of
      ``stn.py`` with TensorFlow's autodiff (its own gradients, plain ops).
    * ``torch``: the same algorithm, ``field = v / 2^7`` then 7 times ``field
      += grid_sample(field as NCDHW, identity + field * (2 / W, 2 / H, 2 /
      D), padding_mode="border", align_corners=False)`` (a permute of the
      field to NCDHW and back per step, included; the identity grid made
      beforehand). The reference of the ratios; the second ratio column is
      against ``ours plain``.

    Check: ``ours plain`` and ``torch`` give ``ours``'s displacement (atol
    1e-3 pixel: 7 compounding steps).
    """
    stn = env.stn
    steps = TINY_VELOCITY_STEPS if args.tiny else VELOCITY_STEPS
    b, d, h, w, n = shape
    if n != 3:
        raise SystemExit(f"velocity fields are [B, D, H, W, 3]; got {shape}")
    vel = smooth_field(rng, b, (d, h, w), amplitude=3.0)         # pixels, (x, y, z)
    cot = _normal(rng, shape)
    tf_args = [env.tf_tensor(vel), env.tf_tensor(cot)]
    impls, skipped = [], []

    fn = env.tf_cotangent_loss(lambda v: stn.integrate_velocity(v, steps=steps))
    ours_run, ours = env.tf_step(fn, tf_args, [0])
    plain_run, plain = env.tf_step(fn, tf_args, [0], kernels=False)
    impls.append(Impl("ours", "tf", ours_run,
                      note=f"stn.integrate_velocity(v, steps={steps}) in tf.function"))
    impls.append(Impl("ours plain", "tf", plain_run,
                      note="the same traced under use_kernels(False): plain ops, TF autodiff"))
    check_same("velocity: ours plain vs ours", plain, ours, atol=1e-3)

    torch = env.torch
    if torch is None:
        skipped.append(("torch", env.torch_missing))
        return impls, skipped
    F = torch.nn.functional
    v_t, g_t = env.torch_tensor(vel, grad=True), env.torch_tensor(cot)
    ident = env.torch_tensor(identity_grid((d, h, w)))
    to_norm = env.torch_tensor(np.array([2.0 / w, 2.0 / h, 2.0 / d], np.float32))

    def forward():
        field = v_t / 2.0 ** steps
        for _ in range(steps):
            moved = F.grid_sample(field.permute(0, 4, 1, 2, 3), ident + field * to_norm,
                                  mode="bilinear", padding_mode="border", align_corners=False)
            field = field + moved.permute(0, 2, 3, 4, 1)
        return field

    run, ref = env.torch_step(env.torch_cotangent_loss(forward, g_t), [v_t])
    check_same("velocity: torch vs ours", ref, ours, atol=1e-3)
    impls.append(Impl("torch", "torch", run,
                      note=f"scaling and squaring with F.grid_sample ({steps} steps, border)"))
    return impls, skipped


def tps_impls(case, rng, env, args):
    """``tps``: a thin-plate-spline warp, forward + backward.

    Images (B, H, W, C) (case B, H, W, C, L), an L x L lattice of control
    points (``stn.control_point_lattice(L)``: 16 points for L = 4) shared by
    the batch, source points = control points + N(0, 0.05) per image;
    bilinear, zeros, ``align_corners=False``; loss ``sum(out * cotangent)``,
    gradients to the image and the source points. The control points are an
    argument of the step (not a graph constant, so that TF cannot fold the
    spline's pixel features into a constant: every implementation builds and
    solves the spline at every step). No target.

    * ``ours``: ``stn.grid_sample(img, stn.tps_grid(control, source, (H,
      W)))`` in a plain ``tf.function`` (the spline solved in float64, one
      system for the batch).
    * ``ours plain``: the same traced under ``use_kernels(False)`` (the second
      ratio column is against it).
    * ``kornia``: ``kornia.geometry.transform.warp_image_tps`` on NCHW
      images, given the coefficients of the same (standard) spline, solved
      inside the step with torch in float64 (``[[K, P], [P^T, 0]] w =
      [source; 0]``, kernel ``0.5 r^2 log r^2`` as kornia's) and cast to
      float32 as kornia's ``get_tps_transform`` does. The reference.
      ``get_tps_transform`` itself is not used here because it computes
      another spline: it puts the kernels on its second point set while
      imposing the interpolation conditions at the first, so for the
      documented call (``get_tps_transform(control, source)``,
      ``kernel_centers=source``) the warp agrees with the standard TPS only
      at the control points.
    * ``kornia get_tps_transform``: that documented pair as a user calls it:
      the same amount of work, a different warp (checked only to send the
      control points to the source points). Skipped without kornia, which is
      not among the project's extras (``pip install kornia``).

    Check: ``ours``, ``ours plain`` and ``kornia`` give the same output (atol
    1e-4).
    """
    stn = env.stn
    b, h, w, c, lattice = case
    img, cot = _normal(rng, (b, h, w, c)), _normal(rng, (b, h, w, c))
    control = stn.control_point_lattice(lattice).numpy()                     # [N, 2]
    source = (control[None] + rng.normal(0.0, 0.05, (b,) + control.shape)).astype(np.float32)
    # The control points are an argument (not a graph constant TF could fold).
    tf_args = [env.tf_tensor(a) for a in (img, control, source, cot)]
    impls, skipped = [], []

    def ours_fn(x, ctrl, src):
        return stn.grid_sample(x, stn.tps_grid(ctrl, src, (h, w)))

    fn = env.tf_cotangent_loss(ours_fn)
    ours_run, ours = env.tf_step(fn, tf_args, [0, 2])
    plain_run, plain = env.tf_step(fn, tf_args, [0, 2], kernels=False)
    impls.append(Impl("ours", "tf", ours_run, note="stn.tps_grid + stn.grid_sample in tf.function"))
    impls.append(Impl("ours plain", "tf", plain_run,
                      note="the same traced under use_kernels(False)"))
    check_same("tps: ours plain vs ours", plain, ours)

    torch, kornia_tps = env.torch, env.kornia_tps
    if torch is None or kornia_tps is None:
        why = env.torch_missing or env.kornia_missing
        skipped += [("kornia", why), ("kornia get_tps_transform", why)]
        return impls, skipped
    x_t, g_t = env.torch_tensor(_nchw(img), grad=True), env.torch_tensor(_nchw(cot))
    s_t = env.torch_tensor(source, grad=True)
    c_t = env.torch_tensor(control)
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

    kornia_run, ref = env.torch_step(env.torch_cotangent_loss(kornia_forward, g_t), [x_t, s_t])
    documented_run, _ = env.torch_step(env.torch_cotangent_loss(documented_forward, g_t),
                                       [x_t, s_t])
    check_same("tps: ours vs kornia", ours, _nhwc(ref))
    with torch.no_grad():
        # The documented call is another spline: it only interpolates the same points.
        kernel_w, affine_w = kornia_tps.get_tps_transform(c_batch, s_t)
        check_same("tps: kornia get_tps_transform sends the control points to the sources",
                   kornia_tps.warp_points_tps(c_batch, s_t, kernel_w, affine_w).cpu().numpy(),
                   source, atol=1e-4)
    impls.append(Impl("kornia", "torch", kornia_run,
                      note="kornia warp_image_tps, standard spline's weights solved in the step"))
    impls.append(Impl("kornia get_tps_transform", "torch", documented_run,
                      note="kornia's documented get_tps_transform + warp_image_tps: a different "
                           "spline (kernels on the source points), same work"))
    return impls, skipped
