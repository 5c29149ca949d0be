"""The mutant registry read by ``tools/mutate.py``.

Each module of this package holds one group of hand-written mutants:

    FILES = ("stn.py", "_*.py")    # where the snippets live (globs, repo root)
    TESTS = ["tests/test_stn.py"]  # the tests that must kill them, fastest killers first
    ARGS = ("-k", "not dsnt")      # optional: more pytest arguments (a -k selection)
    MUTANTS = [
        Mutant("stn-border-grad-lower",                # unique id
               "inside = tf.logical_and(coord > 0.0",  # exact original text
               "inside = tf.logical_and(coord >= 0.0", # its replacement
               "border rule: the lower border gets a gradient"),
        ...
    ]

A mutant is one realistic bug: one token or one argument changed. Its
``original`` must occur exactly once over the files matching ``files`` (the
group's ``FILES`` unless the mutant names its own): 0 times is reported as
"stale" (the code moved or changed; update the snippet), more than once as
"ambiguous" (lengthen the snippet). Globs let a snippet follow code that
moves between modules (``"_*.py"`` matches a private kernel module).

To add a group, drop a module here that defines FILES, TESTS and MUTANTS;
ids must be unique over all groups.
"""
import importlib
import pkgutil
from typing import NamedTuple, Optional, Sequence


class Mutant(NamedTuple):
    id: str
    original: str
    replacement: str
    description: str
    files: Optional[Sequence[str]] = None   # default: the group's FILES
    tests: Optional[Sequence[str]] = None   # default: the group's TESTS


class Group(NamedTuple):
    name: str
    files: Sequence[str]
    tests: Sequence[str]
    args: Sequence[str]
    mutants: Sequence[Mutant]


def groups():
    """Every group in this package, in module-name order."""
    out = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        out.append(Group(info.name, tuple(module.FILES), tuple(module.TESTS),
                         tuple(getattr(module, "ARGS", ())), tuple(module.MUTANTS)))
    ids = [m.id for g in out for m in g.mutants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate mutant ids: {', '.join(duplicates)}")
    return out
