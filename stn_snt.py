"""Sonnet 2 modules for spatial transformers; all maths lives in ``stn.py``.

``SpatialTransformer`` (a localisation network's theta, or a given one),
``GridSample`` (a sampling grid), ``Warp`` and ``IntegrateVelocity`` (dense
displacement fields). Example, a
localisation network whose last layer starts at the identity:

>>> import sonnet as snt
>>> import tensorflow as tf
>>> from stn_snt import SpatialTransformer
>>> loc = snt.Sequential([snt.Conv2D(8, 5, stride=2), tf.nn.relu,
...                       snt.Flatten(), snt.Linear(32), tf.nn.relu])
>>> st = SpatialTransformer(localization=loc, transform="affine", out_dims=(14, 14))
>>> images = tf.random.normal([4, 28, 28, 1])
>>> warped, theta = st(images, return_theta=True)     # the identity before training
>>> warped.shape, theta.shape
(TensorShape([4, 14, 14, 1]), TensorShape([4, 2, 3]))
>>> SpatialTransformer()(images, theta=theta).shape   # a theta of your own
TensorShape([4, 28, 28, 1])
"""
from typing import Optional

import numpy as np
import tensorflow as tf

import stn
from spatial_convention import check_bool, check_option, check_positive_int, check_size, missing_extra

try:
    import sonnet as snt
except ImportError as error:   # Sonnet is an optional extra
    raise missing_extra("sonnet", by="stn_snt", extra="sonnet") from error


class _ValuesInit(snt.initializers.Initializer):
    """Initialises a vector to fixed values (the identity transform's parameters)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def __call__(self, shape, dtype):
        if tuple(shape) != self.values.shape:
            raise ValueError(f"expected shape {self.values.shape}; got {tuple(shape)}")
        return tf.constant(self.values, dtype=dtype)


@snt.allow_empty_variables  # without a localisation network it owns no variables
class SpatialTransformer(snt.Module):
    """Warps its input by a transform: ``stn.spatial_transformer_network`` as a module.

    With ``localization`` (any callable mapping inputs ``[B, H, W, C]`` or
    volumes ``[B, D, H, W, C]`` to features ``[B, ...]``), the module owns a
    final ``snt.Linear`` (``head``, created on the first call, when the
    input's rank tells 2-D from 3-D) that maps the flattened features to the
    transform's parameters, with zero weights and the identity transform's
    parameters as bias: before training the layer returns its input
    unchanged. Without it, pass ``theta`` to ``__call__``.

    Args:
      out_dims: ``(height, width)`` or ``(depth, height, width)`` of the
        output; default the input's.
      transform: family of the predicted transform (``stn.transform_family``):
        "affine", "attention" (scale + translation), "similarity" (scale,
        rotation, translation), "diffeomorphic" (expm of the affine
        generator), "projective" or "tps" (thin-plate spline, 2-D).
      localization: callable producing features; None for an explicit theta.
      constraints: an ``stn.AffineWarpConstraints`` fixing some affine
        entries (only with ``transform="affine"``).
      align_corners, padding_mode, interpolation: as in ``stn.grid_sample``.
      control_points: for "tps": an int k (k x k lattice, default 4),
        ``(rows, cols)`` or an ``[N, 2]`` array of normalised (x, y).
      name: module name.

    Call: ``st(inputs, theta=None, return_theta=False)`` -> ``[B, *out_dims, C]``
    (and ``theta`` if asked), in the input's float dtype.

    Example:
      >>> import sonnet as snt
      >>> loc = snt.Sequential([snt.Flatten(), snt.Linear(8), tf.nn.relu])
      >>> st = SpatialTransformer(localization=loc, transform="attention")
      >>> images = tf.random.normal([2, 16, 16, 1])
      >>> bool(tf.reduce_all(st(images) == images))   # the identity before training
      True
    """

    def __init__(self, out_dims=None, transform: str = "affine", localization=None,
                 constraints: Optional[stn.AffineWarpConstraints] = None,
                 align_corners: bool = False, padding_mode: stn.PaddingMode = "zeros",
                 interpolation: stn.Interpolation = "bilinear", control_points=None,
                 name: Optional[str] = None):
        super().__init__(name=name)
        check_option(transform, name="transform", allowed=tuple(stn.TRANSFORMS))
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)
        self.out_dims = check_size(out_dims, name="out_dims", ndim=(2, 3))
        if localization is not None and not callable(localization):
            raise TypeError(f"localization must be callable (e.g. an snt.Module); got {localization!r}")
        self.transform = transform
        self.constraints = constraints
        self.control_points = control_points
        self.localization = localization
        self.head: Optional[snt.Linear] = None
        self.family: Optional[stn.TransformFamily] = None
        # Check the family now, so that mistakes fail when the model is built;
        # the input's rank decides 2-D or 3-D on the first call.
        self._family_for(len(self.out_dims) if self.out_dims else
                         getattr(constraints, "ndim", 2))

    def _family_for(self, ndim):
        family = stn.transform_family(self.transform, ndim, constraints=self.constraints,
                                      control_points=self.control_points)
        if self.family is not None and self.family.ndim != ndim:
            raise ValueError(f"this SpatialTransformer was built for {self.family.ndim}-D "
                             f"inputs; got {ndim}-D")
        return family

    @property
    def num_params(self) -> int:
        """Parameters the localisation head predicts (known once built, 2-D before)."""
        return (self.family or self._family_for(2)).num_params

    def params_to_theta(self, params):
        """The transform family's parameters ``[B, num_params]`` -> theta."""
        return (self.family or self._family_for(2)).theta(params)

    def _build(self, inputs):
        rank = tf.convert_to_tensor(inputs).shape.rank
        if rank not in (4, 5):
            raise ValueError(f"inputs must have rank 4 ([B, H, W, C]) or 5 ([B, D, H, W, C]); "
                             f"got rank {rank}")
        if self.family is None:
            self.family = self._family_for(rank - 2)
        elif self.family.ndim != rank - 2:
            self._family_for(rank - 2)

    def predict_theta(self, inputs):
        """theta predicted by the localisation network for ``inputs``."""
        if self.localization is None:
            raise ValueError("this SpatialTransformer has no localization network: "
                             "pass theta to __call__")
        self._build(inputs)
        if self.head is None:
            self.head = snt.Linear(self.family.num_params, w_init=snt.initializers.Zeros(),
                                   b_init=_ValuesInit(self.family.identity_params),
                                   name="theta_head")
        features = self.localization(inputs)
        features = tf.reshape(features, [tf.shape(features)[0], -1])
        built_size = getattr(self.head, "input_size", None)
        if features.shape[-1] is None and built_size is not None:
            # Traced with unknown spatial sizes after the head was built.
            features = tf.reshape(features, [-1, built_size])
        if features.shape[-1] is None:
            raise ValueError("localization must produce features with a known size; "
                             f"got shape {features.shape}")
        return self.family.theta(self.head(features))

    def __call__(self, inputs, theta=None, return_theta: bool = False):
        if theta is None:
            theta = self.predict_theta(inputs)
        else:
            self._build(inputs)
        assert self.family is not None   # set by _build
        out = self.family.warp(inputs, theta, self.out_dims, **self.sampling)
        return (out, theta) if return_theta else out


@snt.allow_empty_variables
class GridSample(snt.Module):
    """Samples images at a grid of normalised points: ``stn.grid_sample`` as a module.

    PyTorch's ``grid_sample`` in NHWC: images ``[B, H, W, C]`` with a grid
    ``[B, Ho, Wo, 2]`` of normalised (x, y) give ``[B, Ho, Wo, C]``; volumes
    ``[B, D, H, W, C]`` with ``[B, Do, Ho, Wo, 3]`` of (x, y, z) give
    ``[B, Do, Ho, Wo, C]``, in the image's float dtype. No variables.

    Args:
      align_corners, padding_mode, interpolation: as in ``stn.grid_sample``,
        checked here.
      name: module name.

    Call: ``GridSample()(images, grid)``.

    Example:
      >>> img = tf.reshape(tf.range(4.0), [1, 2, 2, 1])
      >>> grid = tf.constant([[[[0.0, 0.0], [1.0, -1.0]]]])   # centre, top-right corner
      >>> GridSample(align_corners=True)(img, grid)[..., 0].numpy()
      array([[[1.5, 1. ]]], dtype=float32)
    """

    def __init__(self, align_corners: bool = False, padding_mode: stn.PaddingMode = "zeros",
                 interpolation: stn.Interpolation = "bilinear", name: Optional[str] = None):
        super().__init__(name=name)
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)

    def __call__(self, images, grid):
        return stn.grid_sample(images, grid, **self.sampling)


@snt.allow_empty_variables
class Warp(snt.Module):
    """Warps an image by a dense displacement field: ``stn.warp`` as a module.

    Args:
      units, align_corners, padding_mode, interpolation: as in ``stn.warp``
        (default units "pixels", padding "border").
      name: module name.

    Call: ``Warp()(image, displacement)`` -> the warped image, on the
    displacement's grid, in the image's dtype.

    Example:
      >>> image = tf.random.normal([1, 8, 8, 1])
      >>> bool(tf.reduce_all(Warp()(image, tf.zeros([1, 8, 8, 2])) == image))
      True
    """

    def __init__(self, units: stn.Units = "pixels", align_corners: bool = False,
                 padding_mode: stn.PaddingMode = "border",
                 interpolation: stn.Interpolation = "bilinear",
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.units = check_option(units, name="units", allowed=stn.UNITS)
        self.sampling = stn.check_sampling(align_corners, padding_mode, interpolation)

    def __call__(self, image, displacement):
        return stn.warp(image, displacement, units=self.units, **self.sampling)


@snt.allow_empty_variables
class IntegrateVelocity(snt.Module):
    """Stationary velocity field -> diffeomorphic displacement: ``stn.integrate_velocity``.

    Args:
      steps: scaling-and-squaring steps (default 7).
      units, align_corners: as in ``stn.warp``.
      name: module name.

    Example:
      >>> v = tf.zeros([1, 8, 8, 2])
      >>> IntegrateVelocity(steps=5)(v).shape
      TensorShape([1, 8, 8, 2])
    """

    def __init__(self, steps: int = 7, units: stn.Units = "pixels", align_corners: bool = False,
                 name: Optional[str] = None):
        super().__init__(name=name)
        check_positive_int(steps, name="steps", allow_zero=True)
        self.steps = int(steps)
        self.units = check_option(units, name="units", allowed=stn.UNITS)
        self.align_corners = check_bool(align_corners, name="align_corners")

    def __call__(self, velocity):
        return stn.integrate_velocity(velocity, self.steps, units=self.units,
                                      align_corners=self.align_corners)
