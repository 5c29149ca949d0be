"""Keras 3 CoordConv layers; all coordinate maths lives in ``coordconv.py``.

``AddCoords`` appends the coordinate channels x, y, (z), (r);
``CoordConv1D/2D/3D`` are ``keras.layers.Conv1D/2D/3D`` (every argument of
theirs) that convolve ``coordconv.add_coords(inputs)``, so their kernel has
``C + k`` input channels: the input's, then x, y, (z), (r). Coordinates run
``linspace(-1, 1, n)`` corner to corner by default (the paper's), or over
pixel centres with ``align_corners=False`` (the STN/DSNT convention).
TensorFlow backend only.

Example:

>>> import keras
>>> from coordconv_keras import CoordConv2D
>>> conv = CoordConv2D(16, 3, padding="same", with_r=True)
>>> conv(keras.Input((28, 32, 3))).shape
(None, 28, 32, 16)
>>> tuple(conv.kernel.shape)          # 3 input channels + x, y, r
(3, 3, 6, 16)
"""
from __future__ import annotations

from typing import Any

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "coordconv_keras needs Keras's TensorFlow backend (its layers call TensorFlow "
        f"functions); got KERAS_BACKEND={keras.backend.backend()!r}. "
        "Set KERAS_BACKEND=tensorflow.")

import tensorflow as tf

import coordconv
from spatial_convention import check_bool, check_option, check_rank

__all__ = ["AddCoords", "CoordConv1D", "CoordConv2D", "CoordConv3D"]

_REGISTER = keras.saving.register_keras_serializable(package="spatial_layers")
_LAYOUTS = {3: "[B, W, C]", 4: "[B, H, W, C]", 5: "[B, D, H, W, C]"}


def _channel_axis(data_format: str) -> int:
    return -1 if data_format == "channels_last" else 1


@_REGISTER
class AddCoords(keras.layers.Layer):
    """Appends coordinate channels: ``coordconv.add_coords`` as a Keras layer.

    ``[B, W, C]``, ``[B, H, W, C]`` or ``[B, D, H, W, C]`` (or channels
    first) -> the same with ``ndim (+1 for r)`` channels appended, in the
    order x (along the width), y (height), z (depth), r. No variables.

    Example:
      >>> import numpy as np
      >>> AddCoords()(np.zeros((1, 1, 3, 1), "float32"))[0, 0, :, 1].numpy()   # x
      array([-1.,  0.,  1.], dtype=float32)
    """

    def __init__(self, with_r: bool = False, align_corners: bool = True,
                 data_format: str | None = None, **kwargs) -> None:
        """Args:
          with_r: also append ``r = sqrt(x^2 + y^2 (+ z^2))``.
          align_corners: True: ``linspace(-1, 1, n)``; False: pixel centres
            ``(2 i + 1) / n - 1``.
          data_format: ``"channels_last"`` or ``"channels_first"``; default
            ``keras.config.image_data_format()``.
          **kwargs: Keras's layer arguments (``name``, ``dtype``, ...).
        """
        super().__init__(**kwargs)
        self.with_r = check_bool(with_r, name="with_r")
        self.align_corners = check_bool(align_corners, name="align_corners")
        self.data_format = check_option(data_format or keras.config.image_data_format(),
                                        name="data_format",
                                        allowed=("channels_last", "channels_first"))

    def build(self, input_shape: tuple) -> None:
        check_rank(tf.TensorSpec(input_shape), name="inputs", ranks=(3, 4, 5),
                   layout="[B, W, C], [B, H, W, C] or [B, D, H, W, C] (or channels first)")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return coordconv.add_coords(inputs, self.with_r, align_corners=self.align_corners,
                                    data_format=self.data_format)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        shape = list(input_shape)
        axis = _channel_axis(self.data_format)
        if shape[axis] is not None:
            shape[axis] += coordconv.num_coord_channels(len(shape) - 2, self.with_r)
        return tuple(shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(with_r=self.with_r, align_corners=self.align_corners,
                      data_format=self.data_format)
        return config


# For type checkers the mixin is a Keras convolution: it sits before one in
# every subclass's bases and uses its rank, data_format, build, call, get_config.
_Convolution: Any = object


class _CoordConv(_Convolution):
    """Makes a Keras convolution convolve ``coordconv.add_coords(inputs)``.

    Mixed in before ``keras.layers.ConvND``: every argument of the
    convolution is taken as is, ``with_r`` and ``align_corners`` (keyword
    only) choose the coordinate channels, and the kernel is built for the
    input's channels plus the coordinate channels.
    """

    def __init__(self, *args, with_r: bool = False, align_corners: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.with_r = check_bool(with_r, name="with_r")
        self.align_corners = check_bool(align_corners, name="align_corners")

    def build(self, input_shape: tuple) -> None:
        check_rank(tf.TensorSpec(input_shape), name="inputs", ranks=(self.rank + 2,),
                   layout=_LAYOUTS[self.rank + 2] + " (or channels first)")
        axis = _channel_axis(self.data_format)
        if input_shape[axis] is None:
            raise ValueError(f"inputs must have a known number of channels; got shape {input_shape}")
        augmented = list(input_shape)
        augmented[axis] += coordconv.num_coord_channels(self.rank, self.with_r)
        super().build(tuple(augmented))
        # The convolution sees the augmented input; the layer takes the input's channels.
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2,
                                                 axes={axis: input_shape[axis]})

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return super().call(coordconv.add_coords(inputs, self.with_r,
                                                 align_corners=self.align_corners,
                                                 data_format=self.data_format))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(with_r=self.with_r, align_corners=self.align_corners)
        return config


@_REGISTER
class CoordConv1D(_CoordConv, keras.layers.Conv1D):
    """1-D CoordConv: ``keras.layers.Conv1D`` over the input with x (and r = abs(x)) appended.

    Arguments: those of ``keras.layers.Conv1D`` (``filters``,
    ``kernel_size``, ``strides``, ``padding`` incl. ``"causal"``,
    ``data_format``, ``dilation_rate``, ``groups``, ``activation``,
    ``use_bias``, initializers, regularizers, constraints), plus keyword-only
    ``with_r=False`` and ``align_corners=True`` (see :class:`AddCoords`).
    The kernel is ``[kw, C + 1 (+1), filters]``.

    Example:
      >>> import numpy as np
      >>> conv = CoordConv1D(4, 3, padding="causal", with_r=True)
      >>> conv(np.zeros((2, 10, 3), "float32")).shape, tuple(conv.kernel.shape)
      (TensorShape([2, 10, 4]), (3, 5, 4))
    """


@_REGISTER
class CoordConv2D(_CoordConv, keras.layers.Conv2D):
    """2-D CoordConv: ``keras.layers.Conv2D`` over the input with x, y (and r) appended.

    Arguments: those of ``keras.layers.Conv2D``, plus keyword-only
    ``with_r=False`` and ``align_corners=True`` (see :class:`AddCoords`).
    The kernel is ``[kh, kw, C + 2 (+1), filters]``; its last input slices
    act on x, y, (r).

    Example:
      >>> import numpy as np
      >>> conv = CoordConv2D(8, 3, strides=2, padding="same")
      >>> conv(np.zeros((4, 28, 28, 1), "float32")).shape
      TensorShape([4, 14, 14, 8])
    """


@_REGISTER
class CoordConv3D(_CoordConv, keras.layers.Conv3D):
    """3-D CoordConv: ``keras.layers.Conv3D`` over the input with x, y, z (and r) appended.

    Arguments: those of ``keras.layers.Conv3D``, plus keyword-only
    ``with_r=False`` and ``align_corners=True``. The kernel is
    ``[kd, kh, kw, C + 3 (+1), filters]``.

    Example:
      >>> import numpy as np
      >>> conv = CoordConv3D(4, 3, padding="same")
      >>> conv(np.zeros((1, 6, 7, 8, 2), "float32")).shape, tuple(conv.kernel.shape)
      (TensorShape([1, 6, 7, 8, 4]), (3, 3, 3, 5, 4))
    """
