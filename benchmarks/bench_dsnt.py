"""The DSNT groups of the benchmarks: ``dsnt`` (2-D heatmaps) and ``dsnt3d`` (volumes).

Each group is a function ``(case, rng, env, args) -> (impls, skipped)``
whose docstring is its spec, built as ``bench_stn.py``'s are: the harness's
step runner for every implementation, a build-time check that ours and the
reference compute the same coordinates and loss.
"""

import numpy as np

from bench_harness import Impl, check_same

SIGMA = 1.0                                       # pixels (voxels)
FWHM = SIGMA * 2.0 * np.sqrt(2.0 * np.log(2.0))   # the same Gaussian, our argument


def _ours(env):
    """``fn`` for ``tf_step``: our DSNT loss, its output the coordinates and the loss."""
    dsnt = env.dsnt

    def fn(x, t):
        hm, coords = dsnt.dsnt(x)
        loss = dsnt.mse_loss(coords, t) + dsnt.js_reg_loss(hm, t, fwhm=FWHM)
        return loss, (coords, loss)
    return fn


def _dsntnn(env, x_t, t_t):
    """``fn`` for ``torch_step``: dsntnn's loss on ``x_t``, the same output as ``_ours``."""
    dsntnn = env.dsntnn

    def fn():
        hm = dsntnn.flat_softmax(x_t)
        coords = dsntnn.dsnt(hm)
        losses = dsntnn.mse_losses(coords, t_t) + dsntnn.js_reg_losses(hm, t_t, sigma_t=SIGMA)
        loss = dsntnn.average_loss(losses)
        return loss, (coords, loss)
    return fn


def _against_dsntnn(env, what, ours_out, logits, targets, impls, skipped):
    """Adds the ``dsntnn`` row (logits made channels-first beforehand) and checks it."""
    if env.torch is None or env.dsntnn is None:
        skipped.append(("dsntnn", env.torch_missing or env.dsntnn_missing))
        return
    x_t = env.torch_tensor(np.moveaxis(logits, -1, 1), grad=True)
    run, (coords_ref, loss_ref) = env.torch_step(
        _dsntnn(env, x_t, env.torch_tensor(targets)), [x_t])
    coords, loss = ours_out
    check_same(f"{what}: ours vs dsntnn coordinates", coords.reshape(coords_ref.shape),
               coords_ref, atol=1e-5)
    check_same(f"{what}: ours vs dsntnn loss", loss, loss_ref, atol=0.0, rtol=1e-4)
    layout = "NKHW" if logits.ndim == 4 else "NKDHW"
    impls.append(Impl("dsntnn", "torch", run,
                      note=f"flat_softmax, dsnt, mse_losses + js_reg_losses, average_loss, {layout}"))


def dsnt_impls(case, rng, env, args):
    """``dsnt``: DSNT on logits of B x H x W with K points, forward + backward.

    Targets uniform in [-0.8, 0.8], sigma = 1 pixel (fwhm = 2 sqrt(2 ln 2));
    the loss is the coordinate MSE plus the Jensen-Shannon regulariser, mean
    over points; the step returns the gradient with respect to the logits:

    * ``ours``: ``dsnt.dsnt`` + ``dsnt.mse_loss`` + ``dsnt.js_reg_loss``
      (NHWK logits) in a ``tf.function``.
    * ``dsntnn``: ``flat_softmax``, ``dsnt``, ``mse_losses`` +
      ``js_reg_losses`` (same sigma), ``average_loss`` on torch (NKHW logits)
      -- the reference.
    * ``seed dsnt``: ``benchmarks/seed_dsnt.py``, a TF2 port of the seed's
      layer (Gaussians built one by one in a ``tf.while_loop`` that
      concatenates) in a ``tf.function``. One point per image only, so K
      points are given to it as ``[B * K, H, W, 1]`` (arranged beforehand);
      its Gaussian centres are in [0, 1] units, so it is given ``(t + 1) /
      2``. Its loop copies everything drawn so far at every step (quadratic
      in B * K); it is skipped above ``--seed-dsnt-max-points`` points.

    Check: ``ours`` and ``dsntnn`` give the same coordinates (atol 1e-5) and
    loss (rtol 1e-4).
    """
    tf = env.tf
    b, h, w, k = case
    logits = rng.standard_normal((b, h, w, k)).astype(np.float32)
    targets = rng.uniform(-0.8, 0.8, (b, k, 2)).astype(np.float32)
    impls, skipped = [], []

    ours, ours_out = env.tf_step(
        _ours(env), [env.tf_tensor(logits), env.tf_tensor(targets[:, 0] if k == 1 else targets)],
        [0])
    impls.append(Impl("ours", "tf", ours, note="dsnt.dsnt + mse_loss + js_reg_loss in tf.function"))
    _against_dsntnn(env, f"dsnt {case}", ours_out, logits, targets, impls, skipped)

    points = b * k
    if points <= args.seed_dsnt_max_points:
        import seed_dsnt

        def seed_fn(x, t, centres):
            hm, coords = seed_dsnt.dsnt(x)
            loss = (tf.reduce_mean(tf.square(coords - t))
                    + seed_dsnt.js_reg_loss(hm, centres, fwhm=FWHM))
            return loss, loss

        ts = targets.reshape(b * k, 2)
        seed_args = [env.tf_tensor(np.moveaxis(logits, -1, 1).reshape(b * k, h, w, 1)),
                     env.tf_tensor(ts), env.tf_tensor((ts + 1.0) / 2.0)]
        seed_run, _ = env.tf_step(seed_fn, seed_args, [0])
        impls.append(Impl("seed dsnt", "tf", seed_run,
                          note="TF2 port of the seed (while_loop Gaussians), K folded into B"))
    else:
        skipped.append(("seed dsnt", f"B*K = {points} points > --seed-dsnt-max-points "
                                     f"{args.seed_dsnt_max_points} (its while_loop copies "
                                     f"quadratically)"))
    return impls, skipped


def dsnt3d_impls(case, rng, env, args):
    """``dsnt3d``: ``dsnt``'s step on volumes, forward + backward.

    Logits (B, D, H, W, K), targets (x, y, z) uniform in [-0.8, 0.8], sigma =
    1 voxel:

    * ``ours``: ``dsnt.dsnt`` on [B, D, H, W, K] logits + ``dsnt.mse_loss`` +
      ``dsnt.js_reg_loss`` in a ``tf.function``.
    * ``dsntnn``: ``flat_softmax``, ``dsnt``, ``mse_losses`` +
      ``js_reg_losses``, ``average_loss`` on [B, K, D, H, W] logits made
      beforehand -- the reference.

    Check: same coordinates (atol 1e-5) and loss (rtol 1e-4).
    """
    b, d, h, w, k = case
    logits = rng.standard_normal(case).astype(np.float32)
    targets = rng.uniform(-0.8, 0.8, (b, k, 3)).astype(np.float32)
    impls, skipped = [], []
    ours, ours_out = env.tf_step(_ours(env), [env.tf_tensor(logits), env.tf_tensor(targets)], [0])
    impls.append(Impl("ours", "tf", ours,
                      note="dsnt.dsnt [B,D,H,W,K] + mse_loss + js_reg_loss in tf.function"))
    _against_dsntnn(env, "dsnt3d", ours_out, logits, targets, impls, skipped)
    return impls, skipped
