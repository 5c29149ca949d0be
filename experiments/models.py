"""Sonnet models for the STN classification experiments.

* `Classifier`: small CNN (conv 5x5 -> pool -> conv 5x5 -> pool -> fc -> fc),
  the plain baseline and the head of every STN model.
* `LocalisationNet`: predicts transform parameters (conv 7x7 -> pool -> conv
  5x5 -> pool -> fc -> fc, the PyTorch STN tutorial's shape), with plain or
  CoordConv convolutions; its last layer starts at the identity transform
  (zero weights, identity bias).
* `STNClassifier`: localisation net -> `stn.spatial_transformer_network` ->
  classifier.
"""
import sonnet as snt
import tensorflow as tf

import stn
from coordconv_snt import CoordConv2D

# The experiments call stn's "diffeomorphic" family "diffeo" (variant and
# run names); every family's parameter count, identity parameters and
# params -> theta map come from stn.transform_family.
_STN_NAMES = {"diffeo": "diffeomorphic"}


def _stn_transform(transform):
    return _STN_NAMES.get(transform, transform)


def identity_params(transform):
    """Parameters that the transform family maps to the identity."""
    return list(stn.transform_family(_stn_transform(transform)).identity_params)


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
                 channels=(8, 10), hidden=32, name="localisation"):
        super().__init__(name=name)
        n = stn.transform_family(_stn_transform(transform)).num_params
        self.conv1 = _conv(coordconv, with_r, channels[0], 7, "conv1")
        self.conv2 = _conv(coordconv, with_r, channels[1], 5, "conv2")
        self.fc1 = snt.Linear(hidden, name="fc1")
        self.fc2 = snt.Linear(n, w_init=snt.initializers.Zeros(),
                              b_init=tf.constant_initializer(identity_params(transform)),
                              name="fc2")


class STNClassifier(snt.Module):
    def __init__(self, transform="affine", loc_coordconv=False, with_r=False,
                 classifier_coordconv=False, num_classes=10, name="stn_classifier"):
        super().__init__(name=name)
        self.transform = transform
        self.loc = LocalisationNet(transform, loc_coordconv, with_r)
        self.classifier = Classifier(num_classes, coordconv=classifier_coordconv, with_r=with_r)

    def theta(self, x):
        return stn.transform_theta(_stn_transform(self.transform), self.loc(x))

    def transform_images(self, x):
        return stn.spatial_transformer_network(x, self.theta(x))

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
    transform, loc_cc = VARIANTS[variant]
    if transform is None:
        return PlainClassifier(num_classes, coordconv=cfg.coordconv_classifier,
                               with_r=cfg.coordconv_with_r, name=variant)
    return STNClassifier(transform, loc_coordconv=loc_cc, with_r=cfg.coordconv_with_r,
                         classifier_coordconv=cfg.coordconv_classifier,
                         num_classes=num_classes, name=variant)
