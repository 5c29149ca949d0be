"""experiments/: config parsing, data generation (against exact array
operations), model initialisation at the identity, metrics against
scikit-learn, and a tiny end-to-end smoke run (seconds, not minutes)."""
import glob
import gzip
import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import models
from experiments import stn_classify


# ---------------------------------------------------------------- config

def test_config_flags_and_overrides():
    cfg = config_lib.config_from_args(
        ["--epochs", "3", "--batch-size=16", "seeds=1,2", "variants=baseline,stn_diffeo",
         "coordconv_with_r=true", "train_limit=none", "+clutter=2", "lr=0.01"])
    assert cfg.epochs == 3 and cfg.batch_size == 16
    assert cfg.seeds == [1, 2] and cfg.variants == ["baseline", "stn_diffeo"]
    assert cfg.coordconv_with_r is True and cfg.train_limit is None
    assert cfg.clutter == 2 and cfg.lr == 0.01
    assert config_lib.config_from_args([]).variants == config_lib.DEFAULT_VARIANTS


@pytest.mark.parametrize("argv,words", [
    (["variants=stn,nope"], ["unknown variant", "nope"]),
    (["epochs=0"], ["epochs"]),
    (["epochs=two"], ["epochs", "two"]),
    (["colour=red"], ["unknown option", "colour"]),
    (["noequals"], ["key=value"]),
    (["scale_min=1.5", "scale_max=1.0"], ["scale_min"]),
    (["dataset=cifar"], ["dataset"]),
    (["quiet=maybe"], ["quiet"]),
])
def test_config_errors_name_the_option(argv, words, capsys):
    with pytest.raises(SystemExit):
        config_lib.config_from_args(argv)
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_help_lists_options_and_variants(capsys):
    with pytest.raises(SystemExit) as info:
        stn_classify.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for w in ["--epochs", "--variants", "key=value", "stn_coordconv", "stn_diffeo", "--mnist-path"]:
        assert w in out


# ---------------------------------------------------------------- data

def test_warp_into_canvas_identity_reproduces_source_exactly():
    src = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    out = data_lib.warp_into_canvas(src, np.array([[1.0, 0, 0], [0, 1.0, 0]]), canvas=12, box=12)
    np.testing.assert_allclose(out, src, atol=1e-6)


def test_warp_into_canvas_rotation_and_translation_match_array_ops():
    src = np.zeros((10, 10), np.float32)
    src[2:5, 3:8] = 1.0
    src[6, 1] = 0.5
    # theta maps output -> input; output (x, y) reads input (y, -x): a 90-degree
    # rotation; with x along columns that is np.rot90 clockwise.
    rot = data_lib.warp_into_canvas(src, np.array([[0.0, 1, 0], [-1.0, 0, 0]]), canvas=10, box=10)
    np.testing.assert_allclose(rot, np.rot90(src, k=-1), atol=1e-6)
    # translation of +0.4 normalised = +2 px (half-width 5 px): output x reads input x + 2
    sh = data_lib.warp_into_canvas(src, np.array([[1.0, 0, 0.4], [0, 1.0, 0]]), canvas=10, box=10)
    want = np.zeros_like(src)
    want[:, :8] = src[:, 2:]
    np.testing.assert_allclose(sh, want, atol=1e-6)


def test_warp_into_canvas_upscales_source_into_centred_box():
    # identity theta, 6x6 source into a 12 px box of a 24 px canvas equals a 2x
    # bilinear (half-pixel-centre) resize of the source zero-padded to 12x12
    src = np.random.default_rng(2).random((6, 6)).astype(np.float32)
    out = data_lib.warp_into_canvas(src, np.array([[1.0, 0, 0], [0, 1.0, 0]]), canvas=24, box=12)
    want = tf.image.resize(np.pad(src, 3)[None, ..., None], [24, 24], "bilinear")
    np.testing.assert_allclose(out, want.numpy()[0, ..., 0], atol=1e-5)
    assert out[:4].max() == 0 and out[:, 20:].max() == 0


def test_random_thetas_invert_the_stated_forward_map():
    rng = np.random.default_rng(3)
    th = data_lib.random_thetas(rng, 50, rotation=30, scale=(0.8, 1.1), translation=0.2)
    rng = np.random.default_rng(3)
    a = np.deg2rad(rng.uniform(-30, 30, 50))
    s = rng.uniform(0.8, 1.1, 50)
    d = rng.uniform(-0.2, 0.2, (50, 2))
    u = np.random.default_rng(9).normal(size=(50, 2))
    fwd = s[:, None] * np.stack([np.cos(a) * u[:, 0] - np.sin(a) * u[:, 1],
                                 np.sin(a) * u[:, 0] + np.cos(a) * u[:, 1]], -1) + d
    back = np.einsum("nij,nj->ni", th[:, :, :2], fwd) + th[:, :, 2]
    np.testing.assert_allclose(back, u, atol=1e-10)


def test_warp_into_canvas_uses_the_stn_convention():
    """The generator's theta means what the STN's theta means: warping the
    same image by the same theta with scipy and with stn agrees."""
    import stn
    rng = np.random.default_rng(1)
    img = np.zeros((20, 20), np.float32)
    img[4:16, 6:14] = rng.random((12, 8))
    th = data_lib.random_thetas(rng, 4, rotation=40, scale=(0.8, 1.2), translation=0.2)
    ours = np.stack([data_lib.warp_into_canvas(img, t, canvas=20, box=20) for t in th])
    theirs = stn.spatial_transformer_network(
        tf.constant(np.broadcast_to(img[None, ..., None], (4, 20, 20, 1))),
        tf.constant(th, tf.float32)).numpy()[..., 0]
    np.testing.assert_allclose(ours, np.clip(theirs, 0, 1), atol=1e-4)


def test_build_dataset_shapes_split_and_determinism():
    cfg = config_lib.Config(train_copies=2, test_copies=1, clutter=2, image_size=24)
    a = data_lib.build_dataset(cfg)
    b = data_lib.build_dataset(cfg)
    n_test = a["info"]["source_test"]
    assert a["info"]["source_train"] + n_test == 1797
    assert a["x_train"].shape == (2 * a["info"]["source_train"], 24, 24, 1)
    assert a["x_test"].shape == (n_test, 24, 24, 1)
    assert a["x_train"].dtype == np.float32
    assert 0.0 <= a["x_train"].min() and a["x_train"].max() <= 1.0
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    np.testing.assert_array_equal(a["y_test"], b["y_test"])
    # stratified: every class in both splits, roughly 30 % held out
    assert set(a["y_test"]) == set(range(10))
    assert abs(n_test / 1797 - 0.3) < 0.01


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_load_mnist_npz_and_idx(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ytr = np.arange(5, dtype=np.uint8)
    xte = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    yte = np.array([7, 8, 9], np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    idx = tmp_path / "idx"
    idx.mkdir()
    for name, arr in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        _write_idx(str(idx / (name + ".gz")), arr)
    for p in (tmp_path / "mnist.npz", idx):
        (a, b), (c, d) = data_lib.load_mnist(str(p))
        np.testing.assert_allclose(a, xtr / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(b, ytr)
        np.testing.assert_allclose(c, xte / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(d, yte)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        data_lib.load_mnist(str(tmp_path / "absent.npz"))
    # the whole pipeline on the MNIST file: digits at native size in a 42 px canvas
    cfg = config_lib.Config(dataset="mnist", mnist_path=str(tmp_path / "mnist.npz"),
                            image_size=42, rotation=0, scale_min=1, scale_max=1,
                            translation=0, train_copies=2, test_copies=1)
    ds = data_lib.build_dataset(cfg)
    assert ds["x_train"].shape == (10, 42, 42, 1) and ds["x_test"].shape == (3, 42, 42, 1)
    assert ds["info"]["digit_box"] == 28
    np.testing.assert_allclose(ds["x_test"][:, 7:35, 7:35, 0], xte / 255.0, atol=1e-5)
    np.testing.assert_array_equal(ds["y_train"], np.tile(ytr, 2))


# ---------------------------------------------------------------- models / metrics

_FAMILY_CASES = list(config_lib.FAMILIES)


@pytest.mark.parametrize("stem", _FAMILY_CASES)
@pytest.mark.parametrize("coordconv", [False, True])
def test_stn_models_start_at_identity(stem, coordconv):
    """Every variant's localisation net starts at its family's identity, and
    the warp it makes then returns the input."""
    import stn
    transform, options = config_lib.FAMILIES[stem]
    family = stn.transform_family(transform, 2, **options)
    tf.random.set_seed(0)
    variant = stem + ("_coordconv" if coordconv else "")
    m = models.build_model(variant, config_lib.Config())
    assert m.loc.conv1.__class__.__name__ == ("CoordConv2D" if coordconv else "Conv2D")
    x = tf.random.uniform([3, 32, 32, 1], seed=1)
    m(x)
    theta = m.theta(x).numpy()
    want = {"affine": [[1, 0, 0], [0, 1, 0]], "diffeomorphic": [[1, 0, 0], [0, 1, 0]],
            "attention": [[1, 0, 0], [0, 1, 0]],
            "projective": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}.get(transform)
    if want is not None:
        np.testing.assert_allclose(theta, np.tile(want, (3, 1, 1)), atol=1e-6)
    else:   # TPS: theta is the source control points, [B, N, 2], identity = the lattice
        assert theta.shape == (3, 16, 2) and family.num_params == 32
        np.testing.assert_allclose(theta.reshape(3, -1),
                                   np.tile(family.identity_params, (3, 1)), atol=1e-6)
    np.testing.assert_allclose(m.transform_images(x).numpy(), x.numpy(), atol=1e-5)


def test_variants_cover_every_family_with_and_without_coordconv():
    assert set(config_lib.VARIANTS) == {"baseline"} | {
        stem + cc for stem in config_lib.FAMILIES for cc in ("", "_coordconv")}
    assert config_lib.FAMILIES["stn_tps"] == ("tps", {"control_points": 4})


def test_evaluate_matches_sklearn_log_loss():
    from sklearn.metrics import accuracy_score, log_loss

    class Fixed:
        def __init__(self, logits):
            self.logits = logits

        def __call__(self, x):
            return tf.constant(self.logits[int(x[0, 0, 0, 0]):][:len(x)])

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 10)) * 3
    y = rng.integers(0, 10, 300)
    x = np.zeros((300, 1, 1, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(300)
    nll, acc, pred = stn_classify.evaluate(Fixed(logits), x, y, batch_size=64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert nll == pytest.approx(log_loss(y, p, labels=range(10)), rel=1e-9)
    assert acc == pytest.approx(accuracy_score(y, logits.argmax(1)))
    cm = stn_classify.confusion_matrix(y, pred)
    assert cm.sum() == 300 and np.trace(cm) == int(round(acc * 300))


def test_summarise_mean_and_sample_std():
    results = [dict(variant="a", test_accuracy=acc, test_nll=nll, params=5, train_seconds=1.0)
               for acc, nll in [(0.9, 0.3), (0.8, 0.5), (0.7, 0.4)]]
    s = stn_classify.summarise(results, ["a"])["a"]
    assert s["acc_mean"] == pytest.approx(0.8) and s["acc_std"] == pytest.approx(0.1)
    assert s["nll_mean"] == pytest.approx(0.4) and s["nll_std"] == pytest.approx(0.1)
    assert "80.00 ± 10.00" in stn_classify.summary_table({"a": s})


# ---------------------------------------------------------------- smoke run

def _tb_scalars(run_dir, tag):
    vals = {}
    for path in glob.glob(os.path.join(run_dir, "tb", "events.*")):
        for ev in tf.compat.v1.train.summary_iterator(path):
            for v in ev.summary.value:
                if v.tag == tag:
                    vals[ev.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") \
                        else v.simple_value
    return vals


@pytest.mark.slow
def test_smoke_run_all_default_variants(tmp_path):
    argv = ["epochs=1", "train_limit=60", "test_limit=30", "train_copies=1", "test_copies=1",
            "batch_size=32", "image_size=24", "seeds=0", "log_every=1", f"out={tmp_path}",
            "quiet=true"]
    cfg = config_lib.config_from_args(argv)
    doc = stn_classify.run(cfg, argv)
    with open(tmp_path / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk["summary"] == json.loads(json.dumps(doc["summary"]))
    assert [r["variant"] for r in on_disk["runs"]] == config_lib.DEFAULT_VARIANTS
    for r in on_disk["runs"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["test_nll"])
        assert np.sum(r["confusion"]) == 30
        assert np.trace(r["confusion"]) == int(round(r["test_accuracy"] * 30))
        run_dir = tmp_path / r["variant"] / "seed0"
        assert (run_dir / "confusion.png").stat().st_size > 1000
        assert (run_dir / "curves.png").exists()
        # TensorBoard events hold the same numbers as the JSON
        acc = _tb_scalars(str(run_dir), "epoch/test_accuracy")
        assert acc[1] == pytest.approx(r["history"][0]["test_accuracy"], rel=1e-6)
        assert len(_tb_scalars(str(run_dir), "train/step_loss")) == 2    # 60 / 32 -> 2 steps
    for name in ("curves.png", "transforms.png", "summary.md"):
        assert (tmp_path / name).exists()
    # predicted-transform statistics for the STN runs only
    assert "theta_test" not in on_disk["runs"][0]
    for r in on_disk["runs"][1:]:
        t = r["theta_test"]
        assert t["det_min"] <= t["det_median"] <= t["det_max"] and t["det_nonpositive"] >= 0
    # the markdown report reads the same file
    from experiments import report
    md = report.report(str(tmp_path))
    assert "| stn_coordconv |" in md and "seed 0 acc / NLL" in md and "det median" in md
    # CoordConv localisation net: 2 extra input channels in each of 2 convs
    p = {r["variant"]: r["params"] for r in on_disk["runs"]}
    assert p["stn_coordconv"] - p["stn"] == 2 * 7 * 7 * 8 + 2 * 5 * 5 * 10
    assert p["stn_diffeo"] == p["stn"]


@pytest.mark.slow
def test_smoke_run_is_reproducible(tmp_path):
    argv = ["epochs=1", "train_limit=40", "test_limit=20", "train_copies=1", "test_copies=1",
            "batch_size=16", "image_size=20", "variants=stn_coordconv", "figures=false",
            "tensorboard=false", "quiet=true"]
    from tensorflow.python.framework import config as tf_config
    determinism_before = tf_config.is_op_determinism_enabled()
    a = stn_classify.run(config_lib.config_from_args(argv + [f"out={tmp_path / 'a'}"]))
    b = stn_classify.run(config_lib.config_from_args(argv + [f"out={tmp_path / 'b'}"]))
    assert a["runs"][0]["history"][0]["train_loss"] == b["runs"][0]["history"][0]["train_loss"]
    assert a["runs"][0]["test_nll"] == b["runs"][0]["test_nll"]
    # the run restored the process-wide determinism setting it found
    from tensorflow.python.framework import config as tf_config
    assert tf_config.is_op_determinism_enabled() == determinism_before


def test_theta_stats_against_numpy():
    class Fixed:
        def theta(self, x):
            n = x.shape[0]
            a = tf.reshape(tf.cast(x[:, 0, 0, 0], tf.float64), [n, 1])
            # [[a, 1, 0.5], [0, 2, -0.5]] -> det = 2a
            return tf.reshape(tf.concat([a, tf.ones_like(a), 0.5 * tf.ones_like(a),
                                         tf.zeros_like(a), 2 * tf.ones_like(a),
                                         -0.5 * tf.ones_like(a)], 1), [n, 2, 3])

    x = np.zeros((5, 2, 2, 1), np.float32)
    x[:, 0, 0, 0] = [-1.0, 0.0, 0.5, 1.0, 3.0]
    s = stn_classify.theta_stats(Fixed(), x, batch_size=2)
    assert s == dict(det_min=-2.0, det_median=1.0, det_max=6.0, det_nonpositive=2,
                     translation_abs_mean=0.5)


# ---------------------------------------------------------------- mnist5k and the STN paper's distortions

def test_load_mnist5k_is_mlxtends_balanced_5000():
    x, y = data_lib.load_mnist5k()
    assert x.shape == (5000, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [500] * 10)
    tr, te = data_lib.stratified_split(np.random.default_rng(0), y, 0.2)
    assert len(tr) == 4000 and len(te) == 1000 and not set(tr) & set(te)
    np.testing.assert_array_equal(np.bincount(y[te]), [100] * 10)


@pytest.mark.parametrize("name", ["R", "RTS", "cluttered"])
def test_paper_affine_distortions_match_scipy(name):
    """R / RTS / cluttered warps (made with stn) equal scipy's affine_transform
    of the same distortion, digit at native size in the larger canvas."""
    r = data_lib.DISTORTIONS[name]
    rng = np.random.default_rng(4)
    src = np.zeros((3, 28, 28), np.float32)
    src[:, 6:22, 9:19] = rng.random((3, 16, 10))
    theta = data_lib.random_thetas(np.random.default_rng(5), 3, r.get("rotation", 0.0),
                                   r.get("scale", (1.0, 1.0)), r.get("translation", 0.0))
    ours, theta_src = data_lib.paper_distort(np.random.default_rng(5), src,
                                             name if name != "cluttered" else "RTS")
    if name != "cluttered":
        np.testing.assert_allclose(theta_src, theta * r["canvas"] / r["box"], rtol=1e-12)
        want = np.stack([data_lib.warp_into_canvas(s, t, r["canvas"], r["box"])
                         for s, t in zip(src, theta)])
        np.testing.assert_allclose(ours, want, atol=2e-5)
    else:   # without clutter: a translation of the native-size digit in a 60 px canvas
        sampled = data_lib._sample(src, theta=theta * 60 / 28, canvas=60)
        want = np.stack([data_lib.warp_into_canvas(s, t, 60, 28) for s, t in zip(src, theta)])
        np.testing.assert_allclose(sampled, want, atol=2e-5)


def test_corner_homographies_send_moved_corners_to_the_frame():
    h = data_lib.corner_homographies(np.random.default_rng(1), 6, sigma=0.1, scale=0.75)
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    moved = 0.75 * corners[None] + np.random.default_rng(1).normal(0.0, 0.1, (6, 4, 2))
    hom = np.einsum("nij,nkj->nki", h, np.concatenate([moved, np.ones((6, 4, 1))], -1))
    np.testing.assert_allclose(hom[..., :2] / hom[..., 2:], np.tile(corners, (6, 1, 1)),
                               atol=1e-12)
    assert np.all(h[:, 2, 2] == 1.0)


def test_elastic_grids_identity_at_zero_and_linear_in_alpha():
    ident = data_lib.elastic_grids(np.random.default_rng(0), 2, 12, alpha=0.0, sigma=3.0)
    c = (2.0 * np.arange(12) + 1) / 12 - 1
    np.testing.assert_allclose(ident[0, ..., 0], np.tile(c, (12, 1)), atol=1e-15)
    np.testing.assert_allclose(ident[0, ..., 1], np.tile(c[:, None], (1, 12)), atol=1e-15)
    src = np.random.default_rng(1).random((2, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(data_lib._sample(src, grid=ident), src, atol=1e-6)
    a = data_lib.elastic_grids(np.random.default_rng(7), 2, 12, alpha=3.0, sigma=3.0) - ident
    b = data_lib.elastic_grids(np.random.default_rng(7), 2, 12, alpha=6.0, sigma=3.0) - ident
    np.testing.assert_allclose(b, 2 * a, atol=1e-12)
    assert 0 < np.abs(a).max() * 6 < 3.0    # px: normalised * size / 2


def test_source_clutter_pastes_count_fragments_of_size():
    pool = np.ones((3, 28, 28), np.float32)
    out = data_lib.add_source_clutter(np.random.default_rng(0), np.zeros((4, 60, 60), np.float32),
                                      pool, count=1, size=8)
    assert [int(o.sum()) for o in out] == [64] * 4
    out = data_lib.add_source_clutter(np.random.default_rng(0), np.zeros((4, 60, 60), np.float32),
                                      pool, count=4, size=8)
    assert all(64 <= o.sum() <= 256 for o in out) and out.max() == 1.0


def test_build_mnist5k_dataset_with_paper_distortions():
    for name, size in [("R", 28), ("P", 28), ("E", 28), ("RTS", 42), ("cluttered", 60)]:
        cfg = config_lib.config_from_args(["dataset=mnist5k", f"distortion={name}",
                                           "train_limit=20", "test_limit=10",
                                           "train_copies=2", "test_copies=1"])
        assert cfg.canvas_size() == size
        ds = data_lib.build_dataset(cfg)
        assert ds["x_train"].shape == (40, size, size, 1) and ds["x_test"].shape == (10, size, size, 1)
        assert ds["info"]["split"].startswith("stratified 4000 / 1000 of 5000")
        assert ds["info"]["recipe"] == data_lib.DISTORTIONS[name]
        assert 0.0 <= ds["x_train"].min() and ds["x_train"].max() <= 1.0
        # the two copies of a digit are distorted differently
        assert not np.allclose(ds["x_train"][:20], ds["x_train"][20:])
        np.testing.assert_array_equal(ds["y_train"][:20], ds["y_train"][20:])


@pytest.mark.parametrize("argv,words", [
    (["distortion=RTS", "image_size=32"], ["image_size is fixed at 42", "RTS"]),
    (["distortion=Z"], ["distortion must be one of", "Z"]),
    (["dataset=mnist6k"], ["dataset must be one of", "mnist5k"]),
])
def test_distortion_config_errors(argv, words, capsys):
    with pytest.raises(SystemExit):
        config_lib.config_from_args(argv)
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def _fake_results(path, distortion, runs):
    os.makedirs(path, exist_ok=True)
    doc = dict(config=dict(dataset="mnist5k", distortion=distortion),
               runs=[dict(variant=v, seed=s, test_accuracy=acc, train_seconds=10.0 + s)
                     for v, s, acc in runs])
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(doc, f)
    return str(path)


def test_table1_layout_means_and_paper_numbers(tmp_path):
    from experiments import report
    dirs = [_fake_results(tmp_path / f"R{s}", "R", [("baseline", s, acc), ("stn", s, acc2)])
            for s, (acc, acc2) in enumerate([(0.98, 0.99), (0.97, 0.985), (0.96, 0.98)])]
    dirs.append(_fake_results(tmp_path / "C", "cluttered", [("stn_projective", 0, 0.9)]))
    md = report.table1(dirs).split("\n")
    assert md[0] == "| model | R: ours | R: paper | cluttered: ours | cluttered: paper |"
    assert md[2] == "| CNN (baseline) | 3.00 ± 1.00 (3 seeds) | 1.2 |  | 3.5 |"
    assert md[3] == "| ST-CNN affine | 1.50 ± 0.50 (3 seeds) | 0.7 |  | 1.7 |"
    assert md[4] == "| ST-CNN projective |  | 0.8 | 10.00 (1 seed) |  |"
    with pytest.raises(ValueError, match="appears twice"):
        report.table1(dirs + [dirs[0]])
    details = report.table1_details(dirs)
    assert "| R | baseline | 2.0 | 3.0 | 4.0 | 11 |" in details
    from scipy import stats
    p = stats.ttest_ind([1.0, 1.5, 2.0], [2.0, 3.0, 4.0], equal_var=False).pvalue
    assert f"R: stn vs baseline -1.50 points, p = {p:.2g}." in details
    assert "cluttered" not in details.split("Welch")[1]    # one model only: no comparison


def test_smoke_mnist5k_run_and_transform_figure(tmp_path):
    argv = ["dataset=mnist5k", "distortion=RTS", "epochs=1", "train_limit=40", "test_limit=12",
            "train_copies=1", "test_copies=1", "batch_size=20", "variants=baseline,stn_projective",
            "figures=false", "tensorboard=false", "quiet=true", f"out={tmp_path}"]
    doc = stn_classify.run(config_lib.config_from_args(argv), argv)
    assert doc["data"]["image_size"] == 42 and doc["data"]["distortion"] == "RTS"
    assert (tmp_path / "stn_projective" / "seed0" / "ckpt" / "checkpoint").exists()
    from experiments import draw_transforms
    distortion, x, y, outputs = draw_transforms.transformed(str(tmp_path), 4)
    assert distortion == "RTS" and list(outputs) == ["stn_projective"]
    # the restored model reproduces the run's own outputs on those inputs
    model = models.build_model("stn_projective", config_lib.config_from_args(argv))
    model(tf.constant(x[:1]))
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "stn_projective" / "seed0" / "ckpt"))
    tf.train.Checkpoint(model=model).restore(ckpt).expect_partial()
    np.testing.assert_allclose(outputs["stn_projective"],
                               np.clip(model.transform_images(tf.constant(x)).numpy(), 0, 1))
    draw_transforms.figure([(distortion, x, y, outputs)], str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 1000


@pytest.mark.parametrize("variant", [
    "stn_tps", pytest.param("stn_tps_coordconv", marks=pytest.mark.slow)])
def test_smoke_tps_variant(variant, tmp_path):
    argv = ["epochs=1", "train_limit=40", "test_limit=16", "train_copies=1", "test_copies=1",
            "batch_size=20", "image_size=24", f"variants={variant}", "figures=false",
            "tensorboard=false", "quiet=true", f"out={tmp_path}"]
    doc = stn_classify.run(config_lib.config_from_args(argv), argv)
    r = doc["runs"][0]
    assert np.isfinite(r["test_nll"]) and "theta_test" not in r
    p_affine = models.build_model("stn", config_lib.Config())
    p_tps = models.build_model(variant.replace("_coordconv", ""), config_lib.Config())
    x = tf.zeros([1, 24, 24, 1])
    p_affine(x)
    p_tps(x)
    # the TPS localisation head predicts 2 x 16 numbers instead of 6
    assert stn_classify.count_params(p_tps) - stn_classify.count_params(p_affine) == (32 - 6) * 33


def test_spread_over_classes_takes_classes_in_turn():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert data_lib.spread_over_classes(labels, 5).tolist() == [0, 3, 5, 1, 4]
    assert data_lib.spread_over_classes(labels, 10).tolist() == [0, 3, 5, 1, 4, 2]
