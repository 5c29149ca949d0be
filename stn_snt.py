"""Sonnet 2 modules for spatial transformers; all maths lives in ``stn.py``.

Example (a localisation network whose last layer starts at the identity):

    import sonnet as snt
    from stn_snt import SpatialTransformer

    loc = snt.Sequential([snt.Conv2D(8, 5, stride=2), tf.nn.relu,
                          snt.Flatten(), snt.Linear(32), tf.nn.relu])
    st = SpatialTransformer(localization=loc, transform="affine", out_dims=(28, 28))
    warped = st(images)                  # identity warp before training
    warped, theta = st(images, return_theta=True)
    warped = SpatialTransformer()(images, theta=my_theta)   # a given theta
"""
import numpy as np
import sonnet as snt
import tensorflow as tf

import stn
from spatial_convention import check_bool, check_option, check_size


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

    With ``localization`` (any callable mapping inputs ``[B, H, W, C]`` to
    features ``[B, ...]``), the module owns a final ``snt.Linear`` that maps
    the flattened features to the transform's parameters, with zero weights
    and the identity transform's parameters as bias: before training the
    layer returns its input unchanged (the seed's usage note). Without it,
    pass ``theta`` to ``__call__``.

    Args:
      out_dims: ``(height, width)`` of the output; default the input's.
      transform: family of the predicted transform, a key of
        ``stn.TRANSFORMS``: "affine" (6 params), "attention" (s, tx, ty),
        "similarity" (s, angle, tx, ty), "diffeomorphic" (expm of the affine
        generator) or "projective" (8 params).
      localization: callable producing features; None for an explicit theta.
      constraints: an ``stn.AffineWarpConstraints`` fixing some affine
        entries (only with ``transform="affine"``).
      align_corners, padding_mode, interpolation: as in ``stn.grid_sample``.
      name: module name.

    Call: ``st(inputs, theta=None, return_theta=False)`` -> ``[B, oh, ow, C]``
    (and ``theta`` if asked), in the input's float dtype.
    """

    def __init__(self, out_dims=None, transform="affine", localization=None, constraints=None,
                 align_corners=False, padding_mode="zeros", interpolation="bilinear",
                 name=None):
        super().__init__(name=name)
        check_option(padding_mode, name="padding_mode", allowed=stn.PADDING_MODES)
        check_option(interpolation, name="interpolation", allowed=stn.INTERPOLATIONS)
        self.align_corners = check_bool(align_corners, name="align_corners")
        self.out_dims = check_size(out_dims, name="out_dims")
        if localization is not None and not callable(localization):
            raise TypeError(f"localization must be callable (e.g. an snt.Module); got {localization!r}")
        self.family = stn.transform_family(transform, constraints=constraints)
        self.transform = transform
        self.constraints = constraints
        self.padding_mode = padding_mode
        self.interpolation = interpolation
        self.localization = localization
        self.num_params = self.family.num_params
        self.head = None
        if localization is not None:
            self.head = snt.Linear(self.num_params, w_init=snt.initializers.Zeros(),
                                   b_init=_ValuesInit(self.family.identity_params),
                                   name="theta_head")

    def params_to_theta(self, params):
        """The transform family's parameters ``[B, num_params]`` -> theta."""
        return self.family.theta(params)

    def predict_theta(self, inputs):
        """theta predicted by the localisation network for ``inputs``."""
        if self.localization is None:
            raise ValueError("this SpatialTransformer has no localization network: "
                             "pass theta to __call__")
        features = self.localization(inputs)
        features = tf.reshape(features, [tf.shape(features)[0], -1])
        built_size = getattr(self.head, "input_size", None)
        if features.shape[-1] is None and built_size is not None:
            # Traced with unknown spatial sizes after the head was built.
            features = tf.reshape(features, [-1, built_size])
        if features.shape[-1] is None:
            raise ValueError("localization must produce features with a known size; "
                             f"got shape {features.shape}")
        return self.params_to_theta(self.head(features))

    def __call__(self, inputs, theta=None, return_theta=False):
        if theta is None:
            theta = self.predict_theta(inputs)
        out = self.family.warp(inputs, theta, self.out_dims, align_corners=self.align_corners,
                               padding_mode=self.padding_mode, interpolation=self.interpolation)
        return (out, theta) if return_theta else out
