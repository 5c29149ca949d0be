"""Sonnet 2 wrapper around :mod:`dsnt` (all maths lives in dsnt.py).

Example:
  >>> from dsnt_snt import DSNT
  >>> norm_heatmaps, coords = DSNT()(my_tensor)          # [B, H, W], [B, 2]
  >>> norm_heatmaps, coords = DSNT(method="relu")(my_tensor)
"""

import dsnt
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
      ``inputs`` ``[B, H, W]``, ``[B, H, W, 1]`` or ``[B, H, W, K]`` ->
      ``(norm_heatmaps, coords)``: ``[B, H, W]`` and ``[B, 2]`` for one point,
      ``[B, H, W, K]`` and ``[B, K, 2]`` for K points; coordinates ``(x, y)``
      with pixel ``i`` of ``n`` centred at ``(2 i + 1) / n - 1``; input dtype
      kept.

    Example:
      >>> net = snt.Sequential([snt.Conv2D(16, 3), tf.nn.relu, snt.Conv2D(1, 1)])
      >>> norm_heatmaps, coords = DSNT()(net(images))
    """

    def __init__(self, method="softmax", name=None):
        super().__init__(name=name)
        self._method = check_option(method, name="method", allowed=dsnt.METHODS)

    @property
    def method(self):
        """The rectification method (read-only)."""
        return self._method

    def __call__(self, inputs):
        return dsnt.dsnt(inputs, method=self._method)
