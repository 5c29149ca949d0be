"""Matplotlib figures for the experiments (Agg backend, PNG files)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(cm, path, title):
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=90)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(cm.shape[1]))
    ax.set_yticks(range(cm.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_figure(histories, path, title=""):
    """histories: {label: [per-seed list of epoch dicts]} -> train loss, test NLL, test acc."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=90)
    keys = [("train_loss", "train loss"), ("test_nll", "test NLL"), ("test_accuracy", "test accuracy")]
    for label, runs in histories.items():
        for ax, (k, name) in zip(axes, keys):
            arr = np.array([[e[k] for e in run] for run in runs])
            ep = np.arange(1, arr.shape[1] + 1)
            mean = arr.mean(0)
            line, = ax.plot(ep, mean, label=label)
            if arr.shape[0] > 1:
                ax.fill_between(ep, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("epoch")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def transform_grid_figure(inputs, outputs, path, title="", labels=None):
    """inputs [N, H, W, 1]; outputs {name: [N, H, W, 1]}: one row each."""
    rows = [("input", inputs)] + list(outputs.items())
    n = inputs.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.9), dpi=80,
                             squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.asarray(imgs[c, ..., 0]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0 and labels is not None:
                ax.set_title(str(labels[c]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    fig.savefig(path)
    plt.close(fig)


def confusion_row_figure(cms, titles, path):
    """Several confusion matrices side by side (row-normalised colours, counts)."""
    fig, axes = plt.subplots(1, len(cms), figsize=(3.8 * len(cms), 3.4), dpi=85, squeeze=False)
    for ax, cm, title in zip(axes[0], cms, titles):
        cm = np.asarray(cm)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(cm.shape[1]))
        ax.set_yticks(range(cm.shape[0]))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
