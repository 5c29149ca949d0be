"""Every public docstring's example runs as the standard runners run it, and every public name has one.

The examples run with the standard ``doctest`` finder and runner, in their
module's own namespace only and with NumPy's default printing: what
``python -m pytest --doctest-modules stn.py`` (or ``python -m doctest``)
sees, so an example that passes here passes there. No names are injected
and no legacy printing is set: a scalar shows as ``np.float32(1.5)``, so the
examples print Python numbers (``float(...)``, ``bool(...)``). The option
flags are the ones ``pyproject.toml`` gives pytest's doctest collector
(``doctest_optionflags``).
"""
import doctest
import importlib
import inspect

import pytest

MODULES = ["spatial_convention", "stn", "stn_snt", "stn_keras", "dsnt", "dsnt_snt", "dsnt_keras",
           "coordconv", "coordconv_snt", "coordconv_keras"]

# As pyproject.toml's [tool.pytest.ini_options] doctest_optionflags.
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]
    assert tests, f"{name} has no examples"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:   # each test has its own copy of the module's globals
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
    for n in names:
        value = getattr(module, n)
        if inspect.isfunction(value) or inspect.isclass(value):
            yield n, value


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_has_an_example(name):
    module = importlib.import_module(name)
    missing = []
    for public, value in _public(module):
        doc = inspect.getdoc(value) or ""
        if inspect.isclass(value):   # the class's or its constructor's docstring
            doc += inspect.getdoc(value.__init__) or ""
        if ">>>" not in doc:
            missing.append(public)
    assert not missing, f"{name}: no example in the docstrings of {', '.join(missing)}"
