"""The three layers together: SavedModel, checkpoints, tf.distribute.

A small Sonnet model uses all three: CoordConv features -> a heatmap ->
DSNT coordinates -> an STN attention crop centred on those coordinates (the
shared convention lets DSNT's output drive the STN translation directly) ->
a linear readout.
"""
import json
import os
import subprocess
import sys

import numpy as np
import sonnet as snt
import tensorflow as tf

import stn
from coordconv_snt import CoordConv2D
from dsnt_snt import DSNT
from stn_snt import SpatialTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LocateAndCrop(snt.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.features = CoordConv2D(8, 3, with_r=True)
        self.heatmap = snt.Conv2D(1, 3)
        self.dsnt = DSNT()
        self.crop = SpatialTransformer(out_dims=(8, 8), padding_mode="border")
        self.readout = snt.Linear(3)

    def __call__(self, images):
        _, coords = self.dsnt(self.heatmap(tf.nn.relu(self.features(images))))   # [B, 2]
        scale = tf.fill([tf.shape(coords)[0], 1], tf.constant(0.5, coords.dtype))
        theta = stn.attention_theta(tf.concat([scale, coords], axis=1))
        crops = self.crop(images, theta=theta)
        return self.readout(tf.reshape(crops, [tf.shape(crops)[0], -1])), coords


def images(batch=4, seed=0):
    return tf.random.stateless_uniform([batch, 16, 16, 2], seed=[seed, 1])


def test_model_uses_all_three_layers_and_trains():
    model = LocateAndCrop()
    opt = snt.optimizers.Adam(1e-2)
    x = images()
    y = tf.random.stateless_normal([4, 3], seed=[2, 3])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out, _ = model(x)
            loss = tf.reduce_mean((out - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss, grads

    loss0, grads = step()
    # Every variable, the CoordConv and heatmap ones included, gets a gradient
    # through DSNT and the STN.
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    for _ in range(30):
        loss, _ = step()
    assert float(loss) < float(loss0)


def test_saved_model_round_trip(tmp_path):
    model = LocateAndCrop()
    x = images()
    expected, coords = model(x)
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda t: model(t),
                               input_signature=[tf.TensorSpec([None, 16, 16, 2], tf.float32)])
    path = str(tmp_path / "locate_and_crop")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    got, got_coords = loaded.serve(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_coords.numpy(), coords.numpy(), rtol=1e-6, atol=1e-7)
    # A batch size it was never called with.
    other = images(batch=7, seed=5)
    np.testing.assert_allclose(loaded.serve(other)[0].numpy(), model(other)[0].numpy(),
                               rtol=1e-6, atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    model = LocateAndCrop()
    x = images()
    expected, _ = model(x)
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = LocateAndCrop()
    fresh(x)                                    # create variables, then overwrite them
    assert not np.allclose(fresh(x)[0].numpy(), expected.numpy())
    tf.train.Checkpoint(model=fresh).restore(prefix).assert_consumed()
    np.testing.assert_array_equal(fresh(x)[0].numpy(), expected.numpy())


DISTRIBUTED_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import sonnet as snt
from test_integration import LocateAndCrop, images

x = images(batch=8)
y = tf.random.stateless_normal([8, 3], seed=[2, 3])

def loss_fn(model, xb, yb, global_batch):
    out, _ = model(xb)
    return tf.reduce_sum((out - yb) ** 2) / global_batch

# Reference: one device, whole batch.
single = LocateAndCrop()
single(x)
with tf.GradientTape() as tape:
    loss = loss_fn(single, x, y, 8)
ref_grads = tape.gradient(loss, single.trainable_variables)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = LocateAndCrop()
    model(x[:1])
    for v, w in zip(model.trainable_variables, single.trainable_variables):
        v.assign(w)

dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
dist = strategy.experimental_distribute_dataset(dataset)

@tf.function
def train_step(batch):
    # Sonnet's optimizers refuse MirroredStrategy (they want snt.distribute.
    # Replicator), so the SGD update is written out in cross-replica context.
    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, xb, yb, 8)
        return loss, tape.gradient(loss, model.trainable_variables)
    losses, grads = strategy.run(replica_step, args=batch)
    for v, g in zip(model.trainable_variables, grads):
        v.assign_sub(0.1 * strategy.reduce("sum", g, axis=None))
    return strategy.reduce("sum", losses, axis=None)

before = [v.numpy() for v in model.trainable_variables]
dist_loss = float(train_step(next(iter(dist))))
after = [v.numpy() for v in model.trainable_variables]
dist_grads = [(b - a) / 0.1 for b, a in zip(before, after)]
err = max(float(abs(g - r.numpy()).max()) for g, r in zip(dist_grads, ref_grads))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": dist_loss,
                  "ref_loss": float(loss), "max_grad_err": err}))
"""


def test_mirrored_strategy_training_step_matches_single_device(tmp_path):
    """A MirroredStrategy step on two logical CPUs applies the one-device gradient.

    Run in a fresh process: logical devices must be configured before
    TensorFlow initialises, which the rest of the suite has already done.
    """
    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script), os.path.join(ROOT, "tests"), ROOT],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["loss"], result["ref_loss"], rtol=1e-5)
    assert result["max_grad_err"] < 1e-4, result
