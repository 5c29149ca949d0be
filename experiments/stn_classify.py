"""Train and compare a plain CNN and CNN + spatial transformer variants on
distorted digits (seeds 002-004): affine STN, STN with CoordConv in the
localisation network, STN with the affine diffeomorphic (expm) transform, and
optionally attention / projective transforms.

    python -m experiments.stn_classify --help
    python -m experiments.stn_classify                       # 4 variants, seed 0
    python -m experiments.stn_classify seeds=0,1,2 out=experiments/runs/compare
    python -m experiments.stn_classify dataset=mnist mnist_path=~/.keras/datasets/mnist.npz

Data: scikit-learn's bundled 8x8 digits, upscaled into a 32x32 canvas and
randomly rotated / scaled / translated (optional clutter); or real MNIST from
a local file. Never downloads.

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
import sonnet as snt  # noqa: E402
import tensorflow as tf  # noqa: E402

from experiments import data as data_lib
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


def evaluate(model, x, y, batch_size=256):
    """Mean NLL, accuracy, predictions over (x, y), batched."""
    logits = []
    for i in range(0, len(x), batch_size):
        logits.append(model(tf.constant(x[i:i + batch_size])).numpy())
    logits = np.concatenate(logits).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    nll = float(-logp[np.arange(len(y)), y].mean())
    pred = logp.argmax(1)
    return nll, float((pred == y).mean()), pred


def theta_stats(model, x, batch_size=256):
    """Statistics of the predicted transforms on `x` (STN models only).

    det = determinant of theta's linear 2x2 part (for a projective theta, of
    its top-left 2x2 block): < 1 zooms in, > 1 zooms out, <= 0 means a
    reflected or collapsed warp.
    """
    thetas = []
    for i in range(0, len(x), batch_size):
        th = model.theta(tf.constant(x[i:i + batch_size])).numpy()
        thetas.append(th.reshape(len(th), -1, 3))
    th = np.concatenate(thetas).astype(np.float64)
    det = th[:, 0, 0] * th[:, 1, 1] - th[:, 0, 1] * th[:, 1, 0]
    return dict(det_min=float(det.min()), det_median=float(np.median(det)),
                det_max=float(det.max()), det_nonpositive=int((det <= 0).sum()),
                translation_abs_mean=float(np.abs(th[:, :2, 2]).mean()))


def confusion_matrix(y, pred, k=NUM_CLASSES):
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def train_one(cfg, variant, seed, ds, run_dir):
    """Trains one model; returns its result dict (and writes run_dir files)."""
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    model = models.build_model(variant, cfg, NUM_CLASSES)
    x_tr, y_tr, x_te, y_te = ds["x_train"], ds["y_train"], ds["x_test"], ds["y_test"]
    model(tf.constant(x_tr[:1]))   # create variables eagerly, deterministic order
    opt = snt.optimizers.Adam(cfg.lr)
    spec = tf.TensorSpec([None] + list(x_tr.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int64)])
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    writer = None
    if cfg.tensorboard:
        writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))
    grid_x = x_te[:GRID_N]
    n_batches = int(np.ceil(len(x_tr) / cfg.batch_size))
    history, step, t0 = [], 0, time.time()
    label = f"{variant} seed {seed}"
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(x_tr))
        losses = []
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = float(train_step(tf.constant(x_tr[idx]), tf.constant(y_tr[idx])))
            if not np.isfinite(loss):
                raise FloatingPointError(f"{label}: loss became {loss} at epoch {epoch}")
            losses.append(loss)
            step += 1
            if writer is not None and step % cfg.log_every == 0:
                with writer.as_default():
                    tb.scalar("train/step_loss", loss, step=step)
            _progress(cfg, f"{label} epoch {epoch}/{cfg.epochs}", b + 1, n_batches)
        test_nll, test_acc, _ = evaluate(model, x_te, y_te)
        rec = dict(epoch=epoch, train_loss=float(np.mean(losses)), test_nll=test_nll,
                   test_accuracy=test_acc, seconds=time.time() - t0)
        history.append(rec)
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
        _log(cfg, f"{label} epoch {epoch:2d}/{cfg.epochs}: train loss {rec['train_loss']:.4f}  "
                  f"test NLL {test_nll:.4f}  test acc {100 * test_acc:.2f}%  "
                  f"({rec['seconds']:.0f} s)")
    if writer is not None:
        writer.flush()
        writer.close()
    test_nll, test_acc, pred = evaluate(model, x_te, y_te)
    cm = confusion_matrix(y_te, pred)
    result = dict(variant=variant, seed=seed, test_accuracy=test_acc, test_nll=test_nll,
                  params=count_params(model), train_seconds=time.time() - t0,
                  history=history, confusion=cm.tolist())
    if isinstance(model, models.STNClassifier):
        result["theta_test"] = theta_stats(model, x_te)
    warped = model.transform_images(tf.constant(grid_x)).numpy()
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    if cfg.figures:
        from experiments import plots
        plots.confusion_figure(cm, os.path.join(run_dir, "confusion.png"),
                               f"{label}: acc {100 * test_acc:.1f}%")
        plots.curves_figure({label: [history]}, os.path.join(run_dir, "curves.png"))
        if isinstance(model, models.STNClassifier):
            plots.transform_grid_figure(grid_x, {variant: np.clip(warped, 0, 1)},
                                        os.path.join(run_dir, "transforms.png"),
                                        labels=y_te[:GRID_N])
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
    out = cfg.out or os.path.join("experiments", "runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    _log(cfg, f"building data set ({cfg.dataset}) ...")
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
    _log(cfg, f"devices: {', '.join(devices)}; writing to {out}")
    results, warped_by_variant = [], {}
    for variant in cfg.variants:
        for seed in cfg.seeds:
            run_dir = os.path.join(out, variant, f"seed{seed}")
            os.makedirs(run_dir, exist_ok=True)
            res, warped = train_one(cfg, variant, seed, ds, run_dir)
            results.append(res)
            if seed == cfg.seeds[0] and VARIANTS[variant][0] is not None:
                warped_by_variant[variant] = np.clip(warped, 0, 1)
    summary = summarise(results, cfg.variants)
    table = summary_table(summary)
    doc = dict(
        config=dataclasses.asdict(cfg), data=info, summary=summary, runs=results,
        environment=dict(python=platform.python_version(), tensorflow=tf.__version__,
                         numpy=np.__version__, devices=devices,
                         command=" ".join(["python -m experiments.stn_classify"] +
                                          list(argv if argv is not None else sys.argv[1:])),
                         code=code),
        total_seconds=time.time() - t0)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(f"`{doc['environment']['command']}`\n\n{table}\n")
    if cfg.figures:
        from experiments import plots
        plots.curves_figure({v: [r["history"] for r in results if r["variant"] == v]
                             for v in cfg.variants},
                            os.path.join(out, "curves.png"),
                            "mean over seeds (band: min-max)" if len(cfg.seeds) > 1 else "")
        if warped_by_variant:
            plots.transform_grid_figure(ds["x_test"][:GRID_N], warped_by_variant,
                                        os.path.join(out, "transforms.png"),
                                        labels=ds["y_test"][:GRID_N])
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
