"""Experiment configuration: one dataclass, set from flags or key=value overrides.

Every field can be given as ``--field value`` (``--field-name`` also works) or
as a Hydra-style positional override ``field=value``; lists are
comma-separated (``variants=baseline,stn seeds=0,1,2``), booleans accept
true/false/1/0/yes/no, ``none`` clears an optional value. Arguments can be
read from a file with ``@file`` (one argument per line).
"""
import argparse
import dataclasses
import typing
from typing import List, Optional

VARIANTS = {
    # name: (transform or None for no STN, CoordConv in the localisation net)
    "baseline": (None, False),
    "stn": ("affine", False),
    "stn_coordconv": ("affine", True),
    "stn_diffeo": ("diffeo", False),
    "stn_diffeo_coordconv": ("diffeo", True),
    "stn_attention": ("attention", False),
    "stn_projective": ("projective", False),
}
DEFAULT_VARIANTS = ["baseline", "stn", "stn_coordconv", "stn_diffeo"]


@dataclasses.dataclass
class Config:
    # data
    dataset: str = "digits"            # digits (bundled with scikit-learn) | mnist (local file)
    mnist_path: Optional[str] = None   # mnist.npz or IDX directory; default ~/.keras/datasets/mnist.npz
    image_size: int = 32               # square canvas, pixels
    digit_size: Optional[int] = None   # undistorted digit box; default 0.625 image_size (digits), min(28, image_size) (mnist)
    rotation: float = 45.0             # +- degrees
    scale_min: float = 0.7
    scale_max: float = 1.2
    translation: float = 0.2           # +- normalised units (1 = half the canvas)
    clutter: int = 0                   # clutter fragments per image
    clutter_size: int = 6              # fragment side, pixels
    test_fraction: float = 0.3         # digits only: share of the 1797 source digits held out
    train_copies: int = 3              # distorted copies of each training digit
    test_copies: int = 2               # distorted copies of each test digit
    train_limit: Optional[int] = None  # use only this many source training images
    test_limit: Optional[int] = None
    data_seed: int = 0                 # the data set is the same for every model seed
    # models / training
    variants: List[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_VARIANTS))
    seeds: List[int] = dataclasses.field(default_factory=lambda: [0])
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3                   # Adam
    coordconv_with_r: bool = False     # add the r channel in CoordConv layers
    coordconv_classifier: bool = False # CoordConv in the classifier too (seed 004's reading)
    # output
    out: Optional[str] = None          # default experiments/runs/<timestamp>
    figures: bool = True
    tensorboard: bool = True
    log_every: int = 20                # TensorBoard step-loss interval
    deterministic: bool = True         # tf.config.experimental.enable_op_determinism
    quiet: bool = False

    def validate(self):
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.dataset in ("digits", "mnist"),
             f"dataset must be 'digits' or 'mnist', got {self.dataset!r}")
        need(self.image_size >= 18,
             f"image_size must be >= 18 (the localisation net's two VALID conv/pool stages), "
             f"got {self.image_size}")
        need(self.digit_size is None or 1 <= self.digit_size <= 4 * self.image_size,
             f"digit_size must be in [1, 4 * image_size], got {self.digit_size}")
        need(0 <= self.rotation <= 180, f"rotation must be in [0, 180] degrees, got {self.rotation}")
        need(0 < self.scale_min <= self.scale_max,
             f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        need(self.translation >= 0, f"translation must be >= 0, got {self.translation}")
        need(self.clutter >= 0, f"clutter must be >= 0, got {self.clutter}")
        need(1 <= self.clutter_size <= self.image_size,
             f"clutter_size must be in [1, image_size], got {self.clutter_size}")
        need(0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        need(self.train_copies >= 1 and self.test_copies >= 1, "train_copies and test_copies must be >= 1")
        for k in ("train_limit", "test_limit"):
            v = getattr(self, k)
            need(v is None or v >= 1, f"{k} must be >= 1 or none, got {v}")
        need(len(self.variants) >= 1, "variants must name at least one variant")
        for v in self.variants:
            need(v in VARIANTS, f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        need(len(set(self.variants)) == len(self.variants), f"variants repeated: {self.variants}")
        need(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
             f"seeds must be distinct and non-empty, got {self.seeds}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        return self


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])[0], True
    if origin in (list, List):
        return (list, typing.get_args(tp)[0]), False
    return tp, False


def _parse_value(name, tp, text):
    base, optional = _base_type(tp)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if isinstance(base, tuple):
            item = base[1]
            return [_parse_value(name, item, t) for t in text.split(",") if t.strip()]
        if base is bool:
            t = text.strip().lower()
            if t in ("1", "true", "yes", "on"):
                return True
            if t in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text
    except ValueError as e:
        raise ValueError(f"bad value for {name}: {text!r} ({e})") from None


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def build_parser(prog=None, description=None):
    p = argparse.ArgumentParser(
        prog=prog, description=description, fromfile_prefix_chars="@",
        usage="%(prog)s [-h] [--option VALUE ...] [key=value ...] [@argsfile]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: any option may also be given as key=value, e.g.\n"
               "  seeds=0,1,2 variants=baseline,stn epochs=5 clutter=4\n"
               f"Variants: {', '.join(VARIANTS)}.")
    defaults = Config()
    for name, f in FIELDS.items():
        base, _ = _base_type(f.type)
        shown = getattr(defaults, name)
        if isinstance(shown, list):
            shown = ",".join(map(str, shown))
        tname = "list" if isinstance(base, tuple) else getattr(base, "__name__", str(base))
        p.add_argument("--" + name.replace("_", "-"), "--" + name, dest=name, default=None,
                       metavar=tname.upper(), help=f"(default: {shown})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="Hydra-style overrides of the options above")
    return p


def config_from_args(argv=None, parser=None):
    """Parses flags and key=value overrides into a validated Config."""
    parser = parser or build_parser()
    ns = parser.parse_args(argv)
    cfg = Config()
    for name in FIELDS:
        v = getattr(ns, name)
        if v is not None:
            setattr(cfg, name, _parse_value(name, FIELDS[name].type, v))
    for ov in ns.overrides:
        if "=" not in ov:
            parser.error(f"override {ov!r} is not key=value")
        key, val = ov.split("=", 1)
        key = key.strip().lstrip("+").replace("-", "_")
        if key not in FIELDS:
            parser.error(f"unknown option {key!r}; known: {', '.join(FIELDS)}")
        try:
            setattr(cfg, key, _parse_value(key, FIELDS[key].type, val))
        except ValueError as e:
            parser.error(str(e))
    try:
        cfg.validate()
    except ValueError as e:
        parser.error(str(e))
    return cfg
