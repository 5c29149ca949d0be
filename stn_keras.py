"""Keras 3 layers for spatial transformers and dense warps; all maths lives in ``stn.py``.

The layers hold configuration and variables and make one call into
:mod:`stn` (TensorFlow backend only): ``SpatialTransformer`` (a transform,
given or predicted), ``GridSample`` (a sampling grid), ``Warp`` (a dense
displacement field) and ``IntegrateVelocity`` (velocity field ->
diffeomorphic displacement), for images ``[B, H, W, C]`` and volumes
``[B, D, H, W, C]``. Coordinates are normalised (x, y[, z]) from -1 to 1
across the image, as :mod:`spatial_convention` defines them; ``theta`` maps
output to input coordinates.

Example (a localisation network whose last layer starts at the identity):

>>> import keras
>>> from stn_keras import SpatialTransformer
>>> images = keras.Input((28, 28, 1))
>>> loc = keras.Sequential([keras.layers.Conv2D(8, 5, strides=2, activation="relu"),
...                         keras.layers.Flatten(), keras.layers.Dense(32, activation="relu")])
>>> warped = SpatialTransformer(loc, "affine", out_dims=(20, 20))(images)
>>> warped.shape
(None, 20, 20, 1)
"""
from __future__ import annotations

from typing import Any, Sequence

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "stn_keras needs Keras's TensorFlow backend (its layers call TensorFlow functions); "
        f"got KERAS_BACKEND={keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow.")

import numpy as np
import tensorflow as tf

import stn
from spatial_convention import (check_bool, check_field_shape, check_option, check_positive_int,
                                check_rank, check_size)

__all__ = ["SpatialTransformer", "GridSample", "Warp", "IntegrateVelocity"]

_REGISTER = keras.saving.register_keras_serializable(package="spatial_layers")
_IMAGES = "[B, H, W, C] or [B, D, H, W, C]"


def _spatial_rank(images_shape: tuple, name: str = "images") -> int:
    """Number of spatial axes of ``images`` (2 for images, 3 for volumes)."""
    return check_rank(tf.TensorSpec(images_shape), name=name, ranks=(4, 5), layout=_IMAGES) - 2


def _control_points_config(control_points):
    """``control_points`` read by ``stn.tps_control_points``, as plain Python for the config:
    an int, [rows, cols] or [[x, y], ...]."""
    if control_points is None:
        return None
    spec = stn.tps_control_points(control_points)
    if isinstance(spec, np.ndarray):
        return spec.tolist()
    return list(spec) if isinstance(spec, tuple) else spec


class _Sampling:
    """A shell's sampling options: one dict, ``sampling`` (``stn.check_sampling``'s), read
    as attributes too (``layer.align_corners``, ...)."""

    sampling: dict

    @property
    def align_corners(self) -> bool:
        return self.sampling["align_corners"]

    @property
    def padding_mode(self) -> str:
        return self.sampling["padding_mode"]

    @property
    def interpolation(self) -> str:
        return self.sampling["interpolation"]


@_REGISTER
class SpatialTransformer(_Sampling, keras.layers.Layer):
    """Warps images by a transform: ``stn.spatial_transformer_network`` as a Keras layer.

    ``theta`` maps output to input coordinates, both normalised (x, y[, z])
    from -1 to 1 across the image (``spatial_convention.py``): ``out(p) =
    in(theta p)``. Called as ``layer(images, theta)`` the layer warps by the
    given ``theta``. With a ``localization`` network it predicts theta
    itself, ``layer(images)``: a
    final ``Dense`` (created here) maps the flattened features to the
    transform family's parameters, with a zero kernel and the identity
    transform's parameters as bias, so before training the layer returns its
    input exactly. That head computes in float32 under a mixed policy
    (its variable dtype): float16 keeps 11 significant bits, so a float16
    theta would move samples by up to 5e-4 normalised units per entry.
    Outputs follow the layer's dtype policy. Images ``[B, H, W, C]`` or
    volumes ``[B, D, H, W, C]``: the input's rank decides, when the layer is
    built, which form of the family it uses.

    Example:
      >>> import numpy as np
      >>> st = SpatialTransformer(out_dims=(2, 2), align_corners=True)
      >>> img = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
      >>> zoom = np.array([[0.5, 0, 0, 0, 0.5, 0]], "float32")  # the centre, 2x
      >>> st(img, zoom)[0, ..., 0].numpy()
      array([[2., 3.],
             [5., 6.]], dtype=float32)
      >>> tps = SpatialTransformer(keras.layers.Flatten(), "tps", control_points=3,
      ...                          return_theta=True)
      >>> warped, source_points = tps(img)       # starts at the identity
      >>> bool((warped.numpy() == img).all()), source_points.shape
      (True, TensorShape([1, 9, 2]))
    """

    def __init__(self, localization: keras.layers.Layer | None = None,
                 transform: str = "affine", out_dims: Sequence[int] | None = None, *,
                 align_corners: bool = False, padding_mode: stn.PaddingMode = "zeros",
                 interpolation: stn.Interpolation = "bilinear",
                 constraints: stn.AffineWarpConstraints | Sequence | None = None,
                 control_points: int | Sequence | None = None,
                 return_theta: bool = False, **kwargs) -> None:
        """Stores and checks the configuration.

        Args:
          localization: a Keras layer or model mapping ``images`` to features
            ``[B, ...]`` of a static size; None to pass ``theta`` to the call.
          transform: the family the head predicts: "affine" (6 parameters),
            "attention" (s, tx, ty), "similarity" (s, angle, tx, ty),
            "diffeomorphic" (expm of the affine generator), "projective"
            (8 parameters) or "tps" (thin-plate spline, 2-D: the source
            points of the control points); see ``stn.transform_family``,
            which also gives the 3-D forms (volumes; every family but "tps").
          out_dims: ``(height, width)`` (``(depth, height, width)`` for
            volumes) of the output; default the input's.
          align_corners, padding_mode, interpolation: as in ``stn.grid_sample``.
          constraints: an ``stn.AffineWarpConstraints`` (or its 2x3 / 3x4
            pattern of numbers and None) fixing some affine entries; affine only.
          control_points: for "tps": an int k (a k x k lattice; default 4),
            ``(rows, cols)``, or an ``[N, 2]`` array of normalised (x, y)
            output points; kept in the config as an int, a pair or a nested list.
          return_theta: also return the transform used.
          **kwargs: Keras's layer arguments (``name``, ``dtype``, ...).

        Call: ``images`` ``[B, H, W, C]`` (and ``theta`` ``[B, 6]``,
        ``[B, 2, 3]``, ``[B, 8]``, ``[B, 3, 3]``, or the tps source points
        ``[B, N, 2]``) or volumes ``[B, D, H, W, C]`` (and ``theta``
        ``[B, 12]``, ``[B, 3, 4]``, ``[B, 15]`` or ``[B, 4, 4]``) ->
        ``[B, *out_dims, C]`` in the policy's compute dtype, and with
        ``return_theta`` the transform too (from the head: ``[B, 2, 3]``,
        ``[B, 3, 3]``, ``[B, 3, 4]``, ``[B, 4, 4]`` or ``[B, N, 2]``).
        """
        super().__init__(**kwargs)
        if constraints is not None and not isinstance(constraints, stn.AffineWarpConstraints):
            constraints = stn.AffineWarpConstraints(constraints)
        self.out_dims = check_size(out_dims, name="out_dims", ndim=(2, 3))
        if self.out_dims is not None and not all(isinstance(n, int) for n in self.out_dims):
            raise ValueError(f"out_dims must be Python ints in a Keras layer; got {out_dims!r}")
        # Checks transform, constraints and control points together, in the
        # dimension out_dims or constraints imply (the input's rank decides in build).
        ndim = len(self.out_dims) if self.out_dims else getattr(constraints, "ndim", 2)
        stn.transform_family(transform, ndim, constraints=constraints,
                             control_points=control_points)
        control_points = _control_points_config(control_points)
        if localization is not None and not isinstance(localization, keras.layers.Layer):
            raise TypeError("localization must be a Keras layer or model (or None); "
                            f"got {localization!r}")
        self.localization: Any = localization
        self.transform = transform
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)
        self.constraints = constraints
        self.control_points = control_points
        self.return_theta = check_bool(return_theta, name="return_theta")
        self.head: Any = None  # the Dense producing theta, made in build

    def _check_images(self, images_shape: tuple) -> int:
        """Number of spatial axes, checked against ``out_dims``."""
        ndim = _spatial_rank(images_shape)
        if self.out_dims is not None and len(self.out_dims) != ndim:
            raise ValueError(f"out_dims must have {ndim} sizes for images of shape "
                             f"{images_shape}; got {self.out_dims}")
        return ndim

    def _family(self, images_shape: tuple) -> stn.TransformFamily:
        ndim = self._check_images(images_shape)
        return stn.transform_family(self.transform, ndim, constraints=self.constraints,
                                    control_points=self.control_points)

    def build(self, images_shape: tuple, theta_shape: tuple | None = None) -> None:
        self.family = self._family(images_shape)
        if theta_shape is not None:
            return
        if self.localization is None:
            raise ValueError("a SpatialTransformer without a localization network needs theta: "
                             "call it as layer(images, theta)")
        # A symbolic call builds any layer or model and gives its output shape.
        features = self.localization(keras.KerasTensor(images_shape, self.compute_dtype)).shape[1:]
        if None in features:
            raise ValueError("localization must produce features of a static size; "
                             f"got shape {(None, *features)}")
        self.head = keras.layers.Dense(self.family.num_params, kernel_initializer="zeros",
                                       dtype=self.variable_dtype, name="theta_head")
        self.head.build((None, int(tf.TensorShape(features).num_elements())))
        self.head.bias.assign(self.family.identity_params)

    def call(self, images: tf.Tensor, theta: tf.Tensor | None = None):
        if theta is None:
            if self.head is None:
                raise ValueError("this SpatialTransformer was built with theta given; "
                                 "call it as layer(images, theta)")
            features = self.localization(images)
            features = tf.reshape(features, [-1, self.head.kernel.shape[0]])
            theta = self.family.theta(self.head(features))
        out = self.family.warp(images, theta, self.out_dims, **self.sampling)
        return (out, tf.cast(theta, self.compute_dtype)) if self.return_theta else out

    def compute_output_shape(self, images_shape: tuple, theta_shape: tuple | None = None):
        self._check_images(images_shape)
        spatial = self.out_dims or tuple(images_shape[1:-1])
        out = (images_shape[0], *spatial, images_shape[-1])
        if not self.return_theta:
            return out
        if theta_shape is None:
            family = self._family(images_shape)
            with tf.init_scope():   # the family's own theta shape, e.g. [B, 2, 3]
                theta_shape = family.theta(tf.zeros([1, family.num_params])).shape
        return out, (images_shape[0], *theta_shape[1:])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            localization=(None if self.localization is None
                          else keras.saving.serialize_keras_object(self.localization)),
            transform=self.transform,
            out_dims=self.out_dims,
            **self.sampling,
            constraints=(None if self.constraints is None
                         else [list(row) for row in self.constraints.constraints]),
            control_points=self.control_points,
            return_theta=self.return_theta)
        return config

    @classmethod
    def from_config(cls, config: dict) -> SpatialTransformer:
        config = dict(config)
        if config.get("localization") is not None:
            config["localization"] = keras.saving.deserialize_keras_object(config["localization"])
        return cls(**config)


@_REGISTER
class GridSample(_Sampling, keras.layers.Layer):
    """Samples images at a grid of normalised points: ``stn.grid_sample`` as a Keras layer.

    PyTorch's ``grid_sample`` in NHWC: ``layer(images, grid)`` with images
    ``[B, H, W, C]`` and ``grid`` ``[B, Ho, Wo, 2]`` of normalised (x, y)
    gives ``[B, Ho, Wo, C]``; volumes ``[B, D, H, W, C]`` with a grid
    ``[B, Do, Ho, Wo, 3]`` of (x, y, z) give ``[B, Do, Ho, Wo, C]``
    (trilinear for "bilinear"; "bicubic" is 2-D only).

    Example:
      >>> import numpy as np
      >>> img = np.arange(4, dtype="float32").reshape(1, 2, 2, 1)
      >>> grid = np.array([[[[0.0, 0.0], [1.0, -1.0]]]], "float32")  # centre, top-right corner
      >>> GridSample(align_corners=True)(img, grid)[..., 0].numpy()
      array([[[1.5, 1. ]]], dtype=float32)
    """

    def __init__(self, *, align_corners: bool = False, padding_mode: stn.PaddingMode = "zeros",
                 interpolation: stn.Interpolation = "bilinear", **kwargs) -> None:
        """Args: ``align_corners``, ``padding_mode``, ``interpolation`` as in
        ``stn.grid_sample``; ``**kwargs`` Keras's layer arguments."""
        super().__init__(**kwargs)
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)

    def build(self, images_shape: tuple, grid_shape: tuple) -> None:
        check_field_shape(grid_shape, name="grid", ndim=_spatial_rank(images_shape))

    def call(self, images: tf.Tensor, grid: tf.Tensor) -> tf.Tensor:
        return stn.grid_sample(images, grid, **self.sampling)

    def compute_output_shape(self, images_shape: tuple, grid_shape: tuple) -> tuple:
        return (images_shape[0], *grid_shape[1:-1], images_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self.sampling)
        return config


@_REGISTER
class Warp(_Sampling, keras.layers.Layer):
    """Warps images by a dense displacement field: ``stn.warp`` as a Keras layer.

    ``layer(image, displacement)``: each output pixel ``p`` samples the
    image at its own position plus its displacement, ``out[b, p] =
    image[b, p + displacement[b, p]]`` (VoxelMorph's spatial transformer).
    Images ``[B, H, W, C]`` take ``[B, Ho, Wo, 2]`` fields of (x, y),
    volumes ``[B, D, H, W, C]`` take ``[B, Do, Ho, Wo, 3]`` of (x, y, z); the
    output is on the field's grid, ``[B, Ho, Wo, C]`` / ``[B, Do, Ho, Wo, C]``,
    in the policy's compute dtype (Keras casts both inputs to it; the core
    computes coordinates of half types in float32). A zero field returns the
    image exactly. No variables.

    Example:
      >>> import numpy as np
      >>> image = np.arange(6, dtype="float32").reshape(1, 2, 3, 1)
      >>> shift = np.zeros((1, 2, 3, 2), "float32")
      >>> shift[..., 0] = 1.0                              # each pixel reads 1 px to its right
      >>> Warp()(image, shift)[0, ..., 0].numpy()          # border padding at the edge
      array([[1., 2., 2.],
             [4., 5., 5.]], dtype=float32)
    """

    def __init__(self, units: stn.Units = "pixels", align_corners: bool = False,
                 padding_mode: stn.PaddingMode = "border", interpolation: stn.Interpolation = "bilinear",
                 **kwargs) -> None:
        """Args:
          units: "pixels" (pixels of ``image``) or "normalized" (the
            convention's units; 2 spans the image).
          align_corners, padding_mode, interpolation: as in ``stn.warp``
            (default padding "border").
          **kwargs: Keras's layer arguments (``name``, ``dtype``, ...).
        """
        super().__init__(**kwargs)
        self.units = check_option(units, name="units", allowed=stn.UNITS)
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)

    def build(self, image_shape: tuple, displacement_shape: tuple) -> None:
        check_field_shape(displacement_shape, name="displacement",
                          ndim=_spatial_rank(image_shape, "image"))

    def call(self, image: tf.Tensor, displacement: tf.Tensor) -> tf.Tensor:
        return stn.warp(image, displacement, units=self.units, **self.sampling)

    def compute_output_shape(self, image_shape: tuple, displacement_shape: tuple) -> tuple:
        return (image_shape[0], *displacement_shape[1:-1], image_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(units=self.units, **self.sampling)
        return config


@_REGISTER
class IntegrateVelocity(keras.layers.Layer):
    """Stationary velocity field -> diffeomorphic displacement: ``stn.integrate_velocity``.

    ``layer(velocity)`` with ``[B, H, W, 2]`` (x, y) or ``[B, D, H, W, 3]``
    (x, y, z) returns the displacement of the same shape, by scaling and
    squaring (``steps`` squarings), ready for :class:`Warp` with the same
    ``units`` and ``align_corners``. Outputs follow the dtype policy. No
    variables.

    Example:
      >>> import numpy as np
      >>> velocity = np.full((1, 4, 4, 2), 0.5, "float32")   # a constant flow
      >>> float(IntegrateVelocity()(velocity)[0, 2, 2, 0])   # is a translation
      0.5
    """

    def __init__(self, steps: int = 7, units: stn.Units = "pixels", align_corners: bool = False,
                 **kwargs) -> None:
        """Args:
          steps: number of squarings (a non-negative int; 7: 128 small steps).
          units, align_corners: as in ``stn.warp``; the field samples itself.
          **kwargs: Keras's layer arguments (``name``, ``dtype``, ...).
        """
        super().__init__(**kwargs)
        check_positive_int(steps, name="steps", allow_zero=True)
        self.steps = int(steps)
        self.units = check_option(units, name="units", allowed=stn.UNITS)
        self.align_corners = check_bool(align_corners, name="align_corners")

    def build(self, velocity_shape: tuple) -> None:
        check_field_shape(velocity_shape, name="velocity")

    def call(self, velocity: tf.Tensor) -> tf.Tensor:
        return stn.integrate_velocity(velocity, self.steps, units=self.units,
                                      align_corners=self.align_corners)

    def compute_output_shape(self, velocity_shape: tuple) -> tuple:
        return tuple(velocity_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(steps=self.steps, units=self.units, align_corners=self.align_corners)
        return config
