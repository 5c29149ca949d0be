"""Sonnet models for the STN classification experiments.

* `Classifier`: small CNN (conv 5x5 -> pool -> conv 5x5 -> pool -> fc -> fc),
  the plain baseline and the head of every STN model.
* `LocalisationNet`: predicts transform parameters (conv 7x7 -> pool -> conv
  5x5 -> pool -> fc -> fc, the PyTorch STN tutorial's shape), with plain or
  CoordConv convolutions; its last layer starts at the identity transform
  (zero weights, identity bias).
* `STNClassifier`: localisation net -> the family's warp -> classifier.

Every transform family (affine, diffeomorphic, attention, projective, TPS,
...) comes from `stn.transform_family`: its parameter count, identity
parameters, params -> theta map and warp. Nothing here depends on which
family it is.
"""
import sonnet as snt
import tensorflow as tf

import stn
from coordconv_snt import CoordConv2D


def family(transform, options=None):
    """``stn.transform_family(transform, ndim=2, **options)``."""
    return stn.transform_family(transform, 2, **dict(options or {}))


def identity_params(transform, options=None):
    """Parameters that the transform family maps to the identity."""
    return list(family(transform, options).identity_params)


def _conv(coordconv, with_r, channels, kernel, name):
    if coordconv:
        return CoordConv2D(channels, kernel, padding="VALID", with_r=with_r, name=name)
    return snt.Conv2D(channels, kernel, padding="VALID", name=name)


def _pool(x):
    return tf.nn.max_pool2d(x, 2, 2, "VALID")


class _ConvNet(snt.Module):
    """conv -> pool -> relu, twice, then fc -> relu -> fc (layers set by subclasses)."""

    def __call__(self, x):
        h = tf.nn.relu(_pool(self.conv1(x)))
        h = tf.nn.relu(_pool(self.conv2(h)))
        h = tf.nn.relu(self.fc1(snt.flatten(h)))
        return self.fc2(h)


class Classifier(_ConvNet):
    def __init__(self, num_classes=10, channels=(16, 32), hidden=64, coordconv=False,
                 with_r=False, name="classifier"):
        super().__init__(name=name)
        self.conv1 = _conv(coordconv, with_r, channels[0], 5, "conv1")
        self.conv2 = _conv(coordconv, with_r, channels[1], 5, "conv2")
        self.fc1 = snt.Linear(hidden, name="fc1")
        self.fc2 = snt.Linear(num_classes, name="fc2")


class LocalisationNet(_ConvNet):
    def __init__(self, transform="affine", coordconv=False, with_r=False,
                 channels=(8, 10), hidden=32, options=None, name="localisation"):
        super().__init__(name=name)
        fam = family(transform, options)
        self.conv1 = _conv(coordconv, with_r, channels[0], 7, "conv1")
        self.conv2 = _conv(coordconv, with_r, channels[1], 5, "conv2")
        self.fc1 = snt.Linear(hidden, name="fc1")
        self.fc2 = snt.Linear(fam.num_params, w_init=snt.initializers.Zeros(),
                              b_init=tf.constant_initializer(list(fam.identity_params)),
                              name="fc2")


class STNClassifier(snt.Module):
    """Localisation net -> warp by the predicted transform -> classifier.

    `transform` names a family of `stn.TRANSFORMS`; `options` are further
    keyword arguments of `stn.transform_family` (e.g. ``control_points`` for
    "tps").
    """

    def __init__(self, transform="affine", loc_coordconv=False, with_r=False,
                 classifier_coordconv=False, num_classes=10, options=None,
                 name="stn_classifier"):
        super().__init__(name=name)
        self.transform = transform
        self.family = family(transform, options)
        self.loc = LocalisationNet(transform, loc_coordconv, with_r, options=options)
        self.classifier = Classifier(num_classes, coordconv=classifier_coordconv, with_r=with_r)

    def theta(self, x):
        return self.family.theta(self.loc(x))

    def transform_images(self, x):
        return self.family.warp(x, self.theta(x))

    def __call__(self, x, return_transformed=False):
        warped = self.transform_images(x)
        logits = self.classifier(warped)
        return (logits, warped) if return_transformed else logits


class PlainClassifier(Classifier):
    """The baseline; `transform_images` is the identity (for uniform plotting)."""

    def transform_images(self, x):
        return x


def build_model(variant, cfg, num_classes=10):
    from experiments.config import VARIANTS
    fam, loc_cc = VARIANTS[variant]
    if fam is None:
        return PlainClassifier(num_classes, coordconv=cfg.coordconv_classifier,
                               with_r=cfg.coordconv_with_r, name=variant)
    transform, options = fam
    return STNClassifier(transform, loc_coordconv=loc_cc, with_r=cfg.coordconv_with_r,
                         classifier_coordconv=cfg.coordconv_classifier,
                         num_classes=num_classes, options=options, name=variant)
