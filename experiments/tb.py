"""TensorBoard summaries that work with or without the `tensorboard` package.

`tf.summary.scalar` / `tf.summary.image` live in the tensorboard package; when
it is missing (it is not a dependency of this project) the same event records
are written with the core op `tf.summary.write` and the plugin metadata the
TensorBoard scalars / images dashboards read.
"""
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

try:  # pragma: no cover - depends on the environment
    import tensorboard  # noqa: F401
    HAVE_TENSORBOARD = True
except ImportError:
    HAVE_TENSORBOARD = False


def _metadata(plugin):
    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = plugin
    md.plugin_data.content = b""
    return md.SerializeToString()


def scalar(name, value, step):
    if HAVE_TENSORBOARD:
        return tf.summary.scalar(name, value, step=step)
    return tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                            metadata=_metadata("scalars"))


def image(name, images, step, max_outputs=3):
    """images: [N, H, W, C] float in [0, 1]."""
    if HAVE_TENSORBOARD:
        return tf.summary.image(name, images, step=step, max_outputs=max_outputs)
    images = tf.convert_to_tensor(images)[:max_outputs]
    u8 = tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8,
                                      saturate=True)
    pngs = tf.map_fn(tf.image.encode_png, u8, fn_output_signature=tf.string)
    shape = tf.shape(images)
    dims = tf.strings.as_string([shape[2], shape[1]])   # width, height
    return tf.summary.write(name, tf.concat([dims, pngs], 0), step=step,
                            metadata=_metadata("images"))
