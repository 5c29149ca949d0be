"""Keras 3 layer and losses for DSNT; all maths lives in ``dsnt.py``.

``DSNT`` turns heatmap logits into normalised heatmaps and coordinates; the
losses wrap ``dsnt``'s per-point losses in Keras's ``(y_true, y_pred)``
contract so that ``model.compile`` can train a two-output model. Coordinates
are (x, y) (volumes: (x, y, z), z along the depth) in the project's
convention: -1 and 1 are the outer edges of the image, pixel ``i`` of ``n``
is centred at ``(2 i + 1) / n - 1``. The losses take whatever ``dsnt``'s
functions take: 2-D points and heatmaps, and 3-D ones where the core has
them. TensorFlow backend only.

Example:

>>> import keras
>>> from dsnt_keras import DSNT, EuclideanLoss, JSRegLoss
>>> images = keras.Input((32, 32, 1))
>>> logits = keras.layers.Conv2D(3, 3, padding="same")(images)    # 3 points
>>> heatmaps, coords = DSNT()(logits)
>>> model = keras.Model(images, {"coords": coords, "heatmaps": heatmaps})
>>> model.compile("adam", loss={"coords": EuclideanLoss(), "heatmaps": JSRegLoss(fwhm=3)})
>>> coords.shape, heatmaps.shape
((None, 3, 2), (None, 32, 32, 3))
"""
from __future__ import annotations

from typing import Any

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "dsnt_keras needs Keras's TensorFlow backend (its layers call TensorFlow functions); "
        f"got KERAS_BACKEND={keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow.")

import tensorflow as tf

import dsnt
from spatial_convention import check_option, check_positive, check_rank

__all__ = ["DSNT", "EuclideanLoss", "MSELoss", "L1Loss", "JSRegLoss", "KLRegLoss",
           "VarianceRegLoss"]

_REGISTER = keras.saving.register_keras_serializable(package="spatial_layers")


@_REGISTER
class DSNT(keras.layers.Layer):
    """Differentiable spatial to numerical transform: ``dsnt.dsnt`` as a Keras layer.

    ``layer(logits)`` returns ``(heatmaps, coords)`` with the shapes of
    :func:`dsnt.dsnt`: ``[B, H, W]`` and ``[B, 2]`` for ``[B, H, W]`` or
    ``[B, H, W, 1]`` logits, ``[B, H, W, K]`` and ``[B, K, 2]`` for K points
    (and ``[B, D, H, W, K]``, ``[B, K, 3]`` for volumes where the core
    supports them). Outputs follow the dtype policy; the core computes half
    precision in float32. No variables.

    Example:
      >>> import numpy as np
      >>> logits = np.full((1, 2, 4, 1), -1e4, "float32")
      >>> logits[0, 1, 2, 0] = 0.0                        # row 1, column 2
      >>> heatmaps, coords = DSNT()(logits)
      >>> coords.numpy()                                  # ((2 j + 1) / 4 - 1, (2 i + 1) / 2 - 1)
      array([[0.25, 0.5 ]], dtype=float32)
    """

    def __init__(self, method: dsnt.Method = "softmax", **kwargs: Any) -> None:
        """Args:
          method: rectification, ``"softmax"`` (default), ``"relu"``, ``"abs"``,
            ``"sigmoid"`` or ``"none"`` (already normalised heatmaps).
          **kwargs: Keras's layer arguments (``name``, ``dtype``, ...).
        """
        super().__init__(**kwargs)
        self.method = check_option(method, name="method", allowed=dsnt.METHODS)

    def build(self, input_shape: tuple) -> None:
        check_rank(tf.TensorSpec(input_shape), name="inputs", ranks=(3, 4, 5),
                   layout="[B, H, W], [B, H, W, K] or [B, D, H, W, K]")

    def call(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return dsnt.dsnt(inputs, method=self.method)

    def compute_output_shape(self, input_shape: tuple) -> tuple[tuple, tuple]:
        batch = input_shape[0]
        if len(input_shape) == 5:                       # volumes: (x, y, z) per channel
            return tuple(input_shape), (batch, input_shape[-1], 3)
        if len(input_shape) == 3 or input_shape[-1] == 1:   # one point: [B, H, W], [B, 2]
            return tuple(input_shape[:3]), (batch, 2)
        return tuple(input_shape), (batch, input_shape[-1], 2)

    def get_config(self) -> dict:
        config = super().get_config()
        config["method"] = self.method
        return config


class _DSNTLoss(keras.losses.Loss):
    """A per-point ``dsnt`` loss under Keras's reduction and ``sample_weight``.

    ``call`` returns the per-point losses (``[B]`` or ``[B, K]``); Keras's
    default reduction ``"sum_over_batch_size"`` then gives the mean over all
    points, ``dsnt``'s ``reduction="mean"``. A ``sample_weight`` of the
    per-point shape with ``reduction="mean_with_sample_weight"`` gives
    ``dsnt``'s masked mean for finite targets. ``reduction``, ``name`` and
    ``dtype`` are ``keras.losses.Loss``'s.
    """


@_REGISTER
class EuclideanLoss(_DSNTLoss):
    """Distance between target and predicted points: ``dsnt.euclidean_loss``.

    ``y_true`` target coordinates, ``y_pred`` the DSNT coordinates, both
    ``[B, 2]``, ``[B, K, 2]`` or ``[B, K, 3]`` (volumes), normalised. The
    paper's recommended loss.

    Example:
      >>> float(EuclideanLoss()([[0.3, 0.4]], [[0.0, 0.0]]))
      0.5
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.euclidean_loss(y_pred, y_true, reduction="none")


@_REGISTER
class MSELoss(_DSNTLoss):
    """Squared error averaged over (x, y[, z]) per point: ``dsnt.mse_loss``.

    Example:
      >>> float(MSELoss()([[0.3, 0.4]], [[0.0, 0.0]]))
      0.125
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.mse_loss(y_pred, y_true, reduction="none")


@_REGISTER
class L1Loss(_DSNTLoss):
    """Absolute error averaged over (x, y[, z]) per point: ``dsnt.l1_loss``.

    Example:
      >>> round(float(L1Loss()([[0.3, 0.4]], [[0.0, 0.0]])), 6)
      0.35
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.l1_loss(y_pred, y_true, reduction="none")


class _RegLoss(_DSNTLoss):
    """A divergence regulariser: target coordinates (``y_true``) vs heatmaps (``y_pred``)."""

    def __init__(self, fwhm: float = 1.0, reduction: str = "sum_over_batch_size",
                 name: str | None = None, dtype: Any = None) -> None:
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        check_positive(fwhm, name="fwhm", dtype=tf.float32)
        self.fwhm = float(fwhm)

    def get_config(self) -> dict:
        config = super().get_config()
        config["fwhm"] = self.fwhm
        return config


@_REGISTER
class JSRegLoss(_RegLoss):
    """Jensen-Shannon divergence of heatmaps from Gaussians at the targets: ``dsnt.js_reg_loss``.

    ``y_true`` target coordinates ``[B, 2]`` / ``[B, K, 2]`` / ``[B, K, 3]``,
    ``y_pred`` the DSNT heatmaps ``[B, H, W]`` / ``[B, H, W, K]`` /
    ``[B, D, H, W, K]`` (volumes, where ``dsnt`` has them); ``fwhm`` the
    Gaussians' full width at half maximum in pixels.

    Example:
      >>> target = dsnt.make_gauss([[0.0, 0.0]], (5, 5), fwhm=2)        # [1, 5, 5]
      >>> float(JSRegLoss(fwhm=2)([[0.0, 0.0]], target))
      0.0
      >>> import numpy as np
      >>> uniform, _ = DSNT()(np.zeros((1, 5, 5), "float32"))
      >>> round(float(JSRegLoss(fwhm=2)([[0.0, 0.0]], uniform)), 4)   # dsntnn: 0.1848
      0.1848
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.js_reg_loss(y_pred, y_true, fwhm=self.fwhm, reduction="none")


@_REGISTER
class KLRegLoss(_RegLoss):
    """KL divergence of heatmaps from Gaussians at the targets: ``dsnt.kl_reg_loss``.

    Arguments and shapes as :class:`JSRegLoss`. Unbounded: large where a
    heatmap has mass far from its target.

    Example:
      >>> target = dsnt.make_gauss([[0.0, 0.0]], (5, 5), fwhm=2)        # [1, 5, 5]
      >>> float(KLRegLoss(fwhm=2)([[0.0, 0.0]], target))
      0.0
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.kl_reg_loss(y_pred, y_true, fwhm=self.fwhm, reduction="none")


@_REGISTER
class VarianceRegLoss(_RegLoss):
    """Squared error of the heatmaps' variance against the target's: ``dsnt.variance_reg_loss``.

    ``y_pred`` the DSNT heatmaps; ``y_true`` (the target coordinates) is
    accepted for Keras's contract and not used. Per point, the sum over the
    axes (x, y[, z]) of ``(variance in px^2 - sigma^2)^2``, ``sigma`` from
    ``fwhm`` in pixels.

    Example:
      >>> import numpy as np
      >>> uniform = np.full((1, 4, 4), 1 / 16, "float32")   # variance (4^2 - 1) / 12 = 1.25 px^2
      >>> float(VarianceRegLoss(fwhm=dsnt.sigma_to_fwhm(1.0))([[0.0, 0.0]], uniform))   # 2 * 0.25^2
      0.125
    """

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return dsnt.variance_reg_loss(y_pred, fwhm=self.fwhm, reduction="none")
