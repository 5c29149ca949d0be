"""Shared checks for the Keras layer tests: the places a Keras model must keep working.

Each check runs a small functional model with named inputs and dict outputs
through one of Keras's deployment paths and returns its outputs as a dict
of NumPy arrays, to be compared with ``model.predict``.
"""
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def feed(inputs):
    """A dict of named inputs as Keras wants it: the array itself for one input."""
    return inputs if len(inputs) > 1 else next(iter(inputs.values()))


def predict(model, inputs):
    """``model.predict`` on a dict of named inputs, as a dict of arrays."""
    return model.predict(feed(inputs), verbose=0)


def reload_predict(model, inputs, path):
    """Saves to ``.keras``, reloads with no custom_objects, predicts."""
    model.save(path)
    return predict(keras.models.load_model(path), inputs)


def export_predict(model, inputs, path):
    """``model.export`` (a TF SavedModel), reloaded with ``tf.saved_model.load``."""
    model.export(path, verbose=False)
    loaded = tf.saved_model.load(path)     # kept: its variables live as long as it does
    served = loaded.serve(feed(inputs))
    return {k: v.numpy() for k, v in served.items()}


def tflite_predict(model, inputs):
    """Converts with ``tf.lite.TFLiteConverter`` and runs the TFLite interpreter."""
    with warnings.catch_warnings():
        # The converter calls a dict-input model with a list; tf.lite.Interpreter
        # announces its move to ai_edge_litert. Neither concerns the layers.
        warnings.filterwarnings("ignore", "The structure of `inputs`", UserWarning)
        warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated", UserWarning)
        content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        interpreter = tf.lite.Interpreter(model_content=content)
    runner = interpreter.get_signature_runner()
    return runner(**inputs)


def fresh_process_reload_predict(path, inputs, modules):
    """Reloads ``path`` in a new Python process that only imports ``modules``.

    Registration happens at import; Keras itself imports only its own
    packages when it deserialises, so a user's process imports the modules
    once and then calls plain ``keras.models.load_model(path)``.
    """
    npz = path + ".inputs.npz"
    out = path + ".outputs.npz"
    np.savez(npz, **inputs)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import numpy as np, keras
        import {", ".join(modules)}
        model = keras.models.load_model({path!r})
        inputs = dict(np.load({npz!r}))
        inputs = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        np.savez({out!r}, **model.predict(inputs, verbose=0))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def same_error(functional, layer, kind=ValueError):
    """``layer()`` raises ``kind`` with exactly the message ``functional()`` raises."""
    with pytest.raises(kind) as want:
        functional()
    with pytest.raises(kind) as got:
        layer()
    assert str(got.value) == str(want.value)
