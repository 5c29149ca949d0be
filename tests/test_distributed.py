"""experiments/ under tf.distribute: two local worker processes with
MultiWorkerMirroredStrategy (TF_CONFIG on localhost ports) and a
MirroredStrategy over two logical CPU devices train in step and land where a
single process training on the same global batch lands; checkpoints are
written by the chief only and resume exactly.

Tolerances: on these tiny runs (9 Adam steps, float32), splitting a global
batch over replicas changes only the order in which per-example gradients
are summed. Measured differences are ~1e-7 in the weights and in the losses;
the checks allow 2e-5 (weights, absolute; they are O(1)) and 1e-5 (losses,
relative), far below what a real fault gives (a replica that skips the
all-reduce, a loss averaged per replica instead of over the global batch, a
batch split that drops or repeats examples all move losses by > 1e-2).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import distribute
from experiments import stn_classify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 48 training images, global batch 16: 3 steps per epoch, 3 epochs
TINY = ["dataset=digits", "train_limit=48", "test_limit=24", "train_copies=1", "test_copies=1",
        "batch_size=16", "image_size=20", "epochs=3", "variants=stn", "seeds=0",
        "figures=false", "tensorboard=false", "save_weights=true", "quiet=true"]
WEIGHT_ATOL = 2e-5
LOSS_RTOL = 1e-5


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start(args, out, tf_config=None):
    log = open(str(out) + ".log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.stn_classify", *args, f"out={out}"],
        cwd=ROOT, env=_env(tf_config), stdout=log, stderr=subprocess.STDOUT), log


def _finish(proc, log, timeout=240):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    with open(log.name) as f:
        text = f.read()
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{text[-3000:]}"


def _load(out):
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    weights = np.load(os.path.join(out, "stn", "seed0", "weights.npz"))
    return doc, {k: weights[k] for k in weights.files}


def _assert_same_training(doc, weights, ref_doc, ref_weights):
    run, ref = doc["runs"][0], ref_doc["runs"][0]
    assert len(run["history"]) == len(ref["history"]) == 3
    for h, r in zip(run["history"], ref["history"]):
        assert h["train_loss"] == pytest.approx(r["train_loss"], rel=LOSS_RTOL)
        assert h["test_nll"] == pytest.approx(r["test_nll"], rel=LOSS_RTOL)
    assert sorted(weights) == sorted(ref_weights)
    for k in weights:
        np.testing.assert_allclose(weights[k], ref_weights[k], rtol=0, atol=WEIGHT_ATOL,
                                   err_msg=k)


def test_two_workers_and_two_replicas_match_one_process(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    multi = tmp_path / "multi"
    procs = [_start(TINY + ["strategy=multiworker"], multi,
                    {"cluster": cluster, "task": {"type": "worker", "index": i}})
             for i in range(2)]
    procs.append(_start(TINY + ["strategy=mirrored", "cpu_replicas=2"], tmp_path / "mirrored"))
    # meanwhile, the reference: one process, one replica, the same global batch
    ref_out = tmp_path / "single"
    ref_doc = stn_classify.run(config_lib.config_from_args(TINY + [f"out={ref_out}"]))
    for proc, log in procs:
        _finish(proc, log)
    ref_doc, ref_weights = _load(ref_out)
    assert ref_doc["distribution"]["replicas"] == 1

    chief_doc, chief_w = _load(multi)
    worker_doc, worker_w = _load(multi / "worker1")
    for doc, task, chief in [(chief_doc, "worker:0", True), (worker_doc, "worker:1", False)]:
        assert doc["distribution"] == dict(strategy="multiworker", replicas=2, workers=2,
                                           task=task, chief=chief, global_batch=16,
                                           per_replica_batch=8.0)
    # in step: after every epoch (3 steps) both workers hold bit-identical weights
    digests = [[h["weights_sha1"] for h in d["runs"][0]["history"]]
               for d in (chief_doc, worker_doc)]
    assert digests[0] == digests[1] and len(set(digests[0])) == 3
    for k in chief_w:
        np.testing.assert_array_equal(chief_w[k], worker_w[k], err_msg=k)
    _assert_same_training(chief_doc, chief_w, ref_doc, ref_weights)
    # only the chief writes checkpoints and the summary
    assert (multi / "stn" / "seed0" / "ckpt" / "checkpoint").exists()
    assert not (multi / "worker1" / "stn" / "seed0" / "ckpt").exists()
    assert (multi / "summary.md").exists() and not (multi / "worker1" / "summary.md").exists()

    mirrored_doc, mirrored_w = _load(tmp_path / "mirrored")
    assert mirrored_doc["distribution"]["replicas"] == 2
    assert mirrored_doc["distribution"]["per_replica_batch"] == 8.0
    _assert_same_training(mirrored_doc, mirrored_w, ref_doc, ref_weights)


def test_uneven_last_batch_is_split_without_loss_or_repeat():
    """A 5-example batch over 2 replicas: shares of 2 and 3, in order."""
    import tensorflow as tf
    strategy = tf.distribute.get_strategy()
    dist = distribute.split_over_replicas(strategy, np.arange(5))
    np.testing.assert_array_equal(strategy.experimental_local_results(dist)[0], np.arange(5))

    class Ctx:
        def __init__(self, r):
            self.replica_id_in_sync_group = r

    class TwoReplicas:
        num_replicas_in_sync = 2

        def experimental_distribute_values_from_function(self, fn):
            return [fn(Ctx(r)).numpy() for r in range(2)]

    shares = distribute.split_over_replicas(TwoReplicas(), np.arange(5))
    assert [s.tolist() for s in shares] == [[0, 1], [2, 3, 4]]


def test_checkpoint_resume_continues_exactly(tmp_path):
    """3 epochs straight == 2 epochs, then resume=true epochs=3 (same out)."""
    base = [a for a in TINY if not a.startswith("epochs=")]
    straight = stn_classify.run(config_lib.config_from_args(
        base + ["epochs=3", f"out={tmp_path / 'a'}"]))
    stn_classify.run(config_lib.config_from_args(base + ["epochs=2", f"out={tmp_path / 'b'}"]))
    assert (tmp_path / "b" / "stn" / "seed0" / "ckpt" / "checkpoint").exists()
    resumed = stn_classify.run(config_lib.config_from_args(
        base + ["epochs=3", "resume=true", f"out={tmp_path / 'b'}"]))
    a, b = straight["runs"][0], resumed["runs"][0]
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    assert [h["weights_sha1"] for h in b["history"]] == [h["weights_sha1"] for h in a["history"]]
    assert b["test_nll"] == a["test_nll"]


def test_strategy_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        config_lib.config_from_args(["strategy=horovod"])
    assert "strategy must be one of default, mirrored, multiworker" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_lib.config_from_args(["cpu_replicas=0"])
    assert "cpu_replicas" in capsys.readouterr().err
