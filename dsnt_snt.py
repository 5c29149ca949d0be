"""Sonnet 2 wrapper around :mod:`dsnt` (all maths lives in dsnt.py), for images and volumes.

Example:
  >>> import tensorflow as tf
  >>> from dsnt_snt import DSNT
  >>> norm_heatmaps, coords = DSNT()(tf.zeros([8, 32, 32, 1]))
  >>> norm_heatmaps.shape, coords.shape                  # one point per image
  (TensorShape([8, 32, 32]), TensorShape([8, 2]))
  >>> volumes = tf.zeros([2, 4, 16, 16, 3])              # [B, D, H, W, K]
  >>> DSNT(method="relu")(volumes)[1].shape              # (x, y, z) per point
  TensorShape([2, 3, 3])
"""

from typing import Optional, Tuple

import tensorflow as tf

import dsnt
from spatial_convention import TensorLike
from spatial_convention import check_option, missing_extra

try:
    import sonnet as snt
except ImportError as error:   # Sonnet is an optional extra
    raise missing_extra("sonnet", by="dsnt_snt", extra="sonnet") from error


@snt.allow_empty_variables
class DSNT(snt.Module):
    """Differentiable spatial to numerical transform as a Sonnet module.

    Has no variables; holds the rectification method and calls
    :func:`dsnt.dsnt`.

    Args:
      method: ``"softmax"`` (default), ``"relu"``, ``"abs"``, ``"sigmoid"``
        or ``"none"`` (already normalised heatmaps). Checked here, so a typo
        fails when the model is built rather than on first call.
      name: Sonnet module name.

    Call:
      ``inputs`` ``[B, H, W]``, ``[B, H, W, 1]``, ``[B, H, W, K]`` or
      ``[B, D, H, W, K]`` -> ``(norm_heatmaps, coords)``: ``[B, H, W]`` and
      ``[B, 2]`` for one 2-D point, ``[B, H, W, K]`` and ``[B, K, 2]`` for K
      points, ``[B, D, H, W, K]`` and ``[B, K, 3]`` for volumes (also for
      K = 1); coordinates ``(x, y[, z])`` with pixel ``i`` of ``n`` centred
      at ``(2 i + 1) / n - 1``; input dtype kept.

    Example:
      >>> import tensorflow as tf
      >>> net = snt.Sequential([snt.Conv2D(16, 3), tf.nn.relu, snt.Conv2D(1, 1), DSNT()])
      >>> norm_heatmaps, coords = net(tf.zeros([4, 28, 28, 3]))
      >>> coords.shape
      TensorShape([4, 2])
    """

    def __init__(self, method: dsnt.Method = "softmax", name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self._method = check_option(method, name="method", allowed=dsnt.METHODS)

    @property
    def method(self) -> dsnt.Method:
        """The rectification method (read-only)."""
        return self._method

    def __call__(self, inputs: TensorLike) -> Tuple[tf.Tensor, tf.Tensor]:
        return dsnt.dsnt(inputs, method=self._method)
