"""What each transform family makes of the same distorted inputs.

    python -m experiments.draw_transforms --out experiments/figures/mnist5k_transforms.png \
        experiments/runs/mnist5k_R/seed0 experiments/runs/mnist5k_RTS/seed0 ...

For each output directory of `experiments.stn_classify` (one distortion
each), rebuilds its test set from the recorded config (the data depend only
on data_seed), restores every STN variant's final checkpoint and draws one
block per distortion: the first test inputs, then each variant's output for
those same inputs. Directories of the same distortion (e.g. separate runs of
different variants on the same data) share one block; their inputs must be
identical.
"""
import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def transformed(out_dir, n, seed=None):
    """(distortion, inputs [n, S, S, 1], labels, {variant: outputs}) for one run dir."""
    import tensorflow as tf
    from experiments import config as config_lib
    from experiments import data as data_lib
    from experiments import models
    with open(os.path.join(out_dir, "results.json")) as f:
        doc = json.load(f)
    cfg = config_lib.Config(**doc["config"])
    seed = cfg.seeds[0] if seed is None else seed
    ds = data_lib.build_dataset(cfg)
    idx = data_lib.spread_over_classes(ds["y_test"], n)
    x, y = ds["x_test"][idx], ds["y_test"][idx]
    outputs = {}
    for variant in cfg.variants:
        if config_lib.VARIANTS[variant][0] is None:
            continue
        model = models.build_model(variant, cfg, data_lib.NUM_CLASSES)
        model(tf.constant(x[:1]))
        latest = tf.train.latest_checkpoint(os.path.join(out_dir, variant, f"seed{seed}", "ckpt"))
        if latest is None:
            raise FileNotFoundError(f"no checkpoint for {variant} seed {seed} in {out_dir}")
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
        outputs[variant] = np.clip(model.transform_images(tf.constant(x)).numpy(), 0, 1)
    return cfg.distortion, x, y, outputs


def figure(blocks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sum(1 + len(b[3]) for b in blocks)
    n = blocks[0][1].shape[0]
    fig, axes = plt.subplots(rows, n, figsize=(n * 0.62, rows * 0.66), dpi=80, squeeze=False)
    r = 0
    for distortion, x, y, outputs in blocks:
        for name, imgs in [(f"{distortion}: input", x)] + list(outputs.items()):
            for c in range(n):
                ax = axes[r, c]
                ax.imshow(imgs[c, ..., 0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
            r += 1
    fig.tight_layout(pad=0.15)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="stn_classify output directories")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("-n", type=int, default=10, help="test images per block")
    p.add_argument("--seed", type=int, default=None, help="model seed (default: the first run)")
    args = p.parse_args(argv)
    blocks = {}
    for d in args.dirs:
        distortion, x, y, outputs = transformed(d, args.n, args.seed)
        if distortion in blocks:
            if not np.array_equal(blocks[distortion][1], x):
                raise ValueError(f"{d}: its {distortion} test inputs differ from an earlier "
                                 "directory's (different data config?)")
            blocks[distortion][3].update(outputs)
        else:
            blocks[distortion] = (distortion, x, y, dict(outputs))
    figure(list(blocks.values()), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
