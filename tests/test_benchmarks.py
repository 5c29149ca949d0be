"""benchmarks/: the script runs (tiny mode) and its references are faithful.

* ``benchmarks/bench.py --tiny --json`` runs in a subprocess, as a user runs
  it, and its table / JSON has every row with finite positive times, for
  every group (each group's build-time check that ours and its references
  compute the same thing runs there too); ``--only`` selects groups.
* The TF2 port of the seed's DSNT (``benchmarks/seed_dsnt.py``) gives the
  same heatmaps and coordinates as our ``dsnt.dsnt`` on a batch of 2, and the
  same JS loss once its [0, 1] centre units are accounted for.
* The theta -> ImageProjectiveTransformV3 conversion used as the native
  timing reference computes the same warp as ours.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dsnt
import stn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench.py")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seed_dsnt = _load("bench_seed_dsnt", os.path.join(ROOT, "benchmarks", "seed_dsnt.py"))
bench = _load("bench_module", BENCH)
harness, stn_groups = bench.bench_harness, bench.bench_stn   # imported by bench.py


def _optional(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def _seed_stn_present():
    root = os.environ.get("SEED_STN_DIR") or os.path.join(ROOT, ".venv", "seed-stn")
    return os.path.exists(os.path.join(root, "stn", "transformer.py"))


def test_help():
    out = subprocess.run([sys.executable, BENCH, "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--tiny", "--only", "--json", "--repeats", "--threads", "--memory"):
        assert flag in out.stdout
    for group in bench.GROUP_ORDER:
        assert group in out.stdout


def test_every_target_names_a_default_case():
    """check_targets reports a target only if its group and shape are run by default."""
    default = {"stn": bench.STN_SHAPES, "stn-small": bench.STN_SMALL_SHAPES,
               "volume": bench.VOLUME_SHAPES, "warp": bench.WARP_SHAPES,
               "dsnt": bench.DSNT_CASES, "dsnt3d": bench.DSNT3D_CASES}
    for group, shape, _, _, _, _ in bench.TARGETS:
        assert shape in default[group], (group, shape)


def test_only_runs_the_chosen_groups(tmp_path, capsys):
    assert bench.parse_args(["--only", "warp", "--only", "tps"]).only == ["warp", "tps"]
    assert bench.parse_args([]).only is None
    path = tmp_path / "bench.json"
    bench.main(["--tiny", "--only", "dsnt3d", "--json", str(path)])
    capsys.readouterr()
    data = json.loads(path.read_text())
    assert [c["group"] for c in data["cases"]] == ["dsnt3d"] * len(bench.TINY_DSNT3D_CASES)


def test_build_time_check_catches_different_work():
    harness.check_same("same", np.ones(3), np.ones(3) + 1e-6)
    with pytest.raises(AssertionError, match="different things"):
        harness.check_same("different", np.ones(3), np.ones(3) + 1e-2)
    with pytest.raises(AssertionError, match="shapes differ"):
        harness.check_same("shapes", np.ones(3), np.ones(4))


def test_identity_grid_is_the_convention():
    grid = stn_groups.identity_grid((3, 4))
    want = stn.affine_grid(stn.identity_theta(1), (3, 4)).numpy()
    np.testing.assert_allclose(grid, want, atol=1e-7)
    grid3 = stn_groups.identity_grid((2, 3, 4))
    want3 = stn.affine_grid(stn.identity_theta(1, ndim=3), (2, 3, 4)).numpy()
    np.testing.assert_allclose(grid3, want3, atol=1e-7)


def test_tiny_run_has_every_row(tmp_path):
    path = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, BENCH, "--tiny", "--memory", "--json", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "machine:" in out.stdout
    data = json.loads(path.read_text())
    assert data["mode"] == "tiny"

    have_torch = _optional("torch")
    have_dsntnn = have_torch and _optional("dsntnn")
    have_kornia = have_torch and _optional("kornia")
    stn_rows = ({"ours", "tf ImageProjectiveTransformV3"}
                | ({"seed stn"} if _seed_stn_present() else set())
                | ({"torch", "torch +NHWC"} if have_torch else set()))
    want = {
        "stn": stn_rows,
        "stn-small": stn_rows,
        "volume": {"ours", "ours affine_grid+grid_sample"} | ({"torch"} if have_torch else set()),
        "warp": {"ours"} | ({"torch"} if have_torch else set()),
        "velocity": {"ours", "ours plain"} | ({"torch"} if have_torch else set()),
        "dsnt": {"ours", "seed dsnt"} | ({"dsntnn"} if have_dsntnn else set()),
        "dsnt3d": {"ours"} | ({"dsntnn"} if have_dsntnn else set()),
        "tps": {"ours", "ours plain"}
        | ({"kornia", "kornia get_tps_transform"} if have_kornia else set()),
    }
    tiny_cases = {"stn": bench.TINY_STN_SHAPES, "stn-small": bench.TINY_STN_SMALL_SHAPES,
                  "volume": bench.TINY_VOLUME_SHAPES, "warp": bench.TINY_WARP_SHAPES,
                  "velocity": bench.TINY_VELOCITY_SHAPES, "dsnt": bench.TINY_DSNT_CASES,
                  "dsnt3d": bench.TINY_DSNT3D_CASES, "tps": bench.TINY_TPS_CASES}
    assert set(tiny_cases) == set(bench.GROUP_ORDER) == set(want)
    groups = [c["group"] for c in data["cases"]]
    assert groups == [g for g in bench.GROUP_ORDER for _ in tiny_cases[g]]
    for case in data["cases"]:
        names = {row["impl"] for row in case["rows"]}
        assert names == want[case["group"]], (case["shape"], names, case["skipped"])
        for row in case["rows"]:
            assert len(row["times_s"]) == data["repeats"]
            assert all(math.isfinite(t) and t > 0 for t in row["times_s"]), row
            assert math.isfinite(row["median_s"]) and row["median_s"] > 0
            if case["reference"] is not None:
                assert math.isfinite(row["ratio_vs_reference"]) and row["ratio_vs_reference"] > 0
            mem = row["peak_mem_mib"]
            assert mem is None or (math.isfinite(mem) and mem >= 0)
            assert row["backward"] == (row["impl"] != "tf ImageProjectiveTransformV3")
            # every row is printed in the table
            assert row["impl"] in out.stdout
        shape = ",".join(str(d) for d in case["shape"])
        assert shape in out.stdout


@pytest.mark.parametrize("shape", [(2, 16, 16, 1), (2, 12, 20, 1)])
def test_seed_dsnt_port_matches_ours(shape):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(0.0, 3.0, shape).astype(np.float32))
    hm_seed, xy_seed = seed_dsnt.dsnt(x)
    hm_ours, xy_ours = dsnt.dsnt(x)
    np.testing.assert_allclose(hm_seed.numpy(), hm_ours.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(xy_seed.numpy(), xy_ours.numpy(), atol=1e-6)

    # The seed draws its Gaussians from centres in [0, 1] units.
    centres = rng.uniform(-0.8, 0.8, (shape[0], 2)).astype(np.float32)
    for fwhm in (1.0, 3.0):
        js_seed = seed_dsnt.js_reg_loss(hm_seed, tf.constant((centres + 1) / 2), fwhm=fwhm)
        js_ours = dsnt.js_reg_loss(hm_ours, tf.constant(centres), fwhm=fwhm)
        np.testing.assert_allclose(js_seed.numpy(), js_ours.numpy(), rtol=1e-5)


def test_seed_dsnt_port_runs_in_tf_function_with_gradient():
    x = tf.random.stateless_normal([4, 8, 8, 1], seed=[1, 2])
    c = tf.fill([4, 2], 0.5)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            hm, _ = seed_dsnt.dsnt(x)
            loss = seed_dsnt.js_reg_loss(hm, c)
        return loss, tape.gradient(loss, x)

    loss, grad = step(x)
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad.numpy()))
    assert np.abs(grad.numpy()).max() > 0


@pytest.mark.parametrize("shape", [(3, 16, 12, 2), (2, 9, 17, 1)])
def test_projective_reference_is_the_same_warp(shape):
    b, h, w, _ = shape
    rng = np.random.default_rng(3)
    img = rng.standard_normal(shape).astype(np.float32)
    theta = stn_groups.random_theta(rng, b)
    ours = stn.spatial_transformer_network(tf.constant(img), tf.constant(theta)).numpy()
    native = tf.raw_ops.ImageProjectiveTransformV3(
        images=img, transforms=stn_groups.theta_to_projective_pixels(theta, h, w),
        output_shape=[h, w], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT").numpy()
    np.testing.assert_allclose(native, ours, atol=1e-4)


def test_cold_start_reports_each_implementation_from_a_fresh_process():
    """benchmarks/cold_start.py: one row per implementation, the step's peak RSS
    (compilation included) at or above the level before it, and above 0 for ours."""
    script = os.path.join(ROOT, "benchmarks", "cold_start.py")
    out = subprocess.run([sys.executable, script, "--shapes", "2x8x8x1,1x4x6x2"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines()[2:]]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("2x8x8x1", "ours"), ("2x8x8x1", "torch"), ("1x4x6x2", "ours"), ("1x4x6x2", "torch")]
    for shape, impl, peak, before, step in rows:
        assert float(peak) >= float(before) > 0
        assert float(step) == pytest.approx(float(peak) - float(before), abs=1)
    assert all(float(r[4]) > 0 for r in rows if r[1].strip() == "ours")


bench_tfa = _load("bench_tfa_module", os.path.join(ROOT, "benchmarks", "bench_tfa.py"))


def test_tfa_warp_reads_the_grid_pixels():
    """TFA's warp: pixel units, x first, centre of pixel i at i, from our normalised grid."""
    shape = (1, 4, 6, 1)
    centres = np.stack(np.meshgrid((2 * np.arange(6) + 1) / 6 - 1, (2 * np.arange(4) + 1) / 4 - 1),
                       -1)[None]                                  # [1, 4, 6, 2] (x, y)
    warp = bench_tfa.pixel_warp(centres, shape)
    np.testing.assert_allclose(warp[..., 0], np.broadcast_to(np.arange(6), (1, 4, 6)), atol=1e-12)
    np.testing.assert_allclose(warp[..., 1], np.broadcast_to(np.arange(4)[:, None], (1, 4, 6)),
                               atol=1e-12)
    np.testing.assert_allclose(bench_tfa.pixel_warp(np.full((1, 1, 1, 2), -1.0), shape),
                               [[[[-0.5, -0.5]]]])                # the image's edge


def test_tfa_group_skips_cleanly_without_tfa():
    assert "does not exist" in bench_tfa.tfa_missing("/nonexistent/python")
    assert "does not import" in bench_tfa.tfa_missing(sys.executable)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tfa.py"),
                           "--tiny", "--runs", "1", "--repeats", "2"],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TFA_PYTHON="", TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TFA skipped: no TFA interpreter" in done.stdout
    row = [line.split() for line in done.stdout.splitlines() if line.strip().startswith("2,9,11,3")]
    assert len(row) == 1 and float(row[0][1]) > 0, done.stdout
