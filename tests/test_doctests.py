"""Every public docstring's example runs, and every public name has one.

The examples run as doctests with their module's namespace (as
``python -m doctest`` would) plus the module itself under its name (as
after ``import dsnt``), so the results they show are checked.
"""
import doctest
import importlib
import inspect

import numpy as np
import pytest

MODULES = ["spatial_convention", "stn", "stn_snt", "stn_keras", "dsnt", "dsnt_snt", "dsnt_keras",
           "coordconv", "coordconv_snt", "coordconv_keras"]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    tests = [t for t in finder.find(module, name, extraglobs={name: module}) if t.examples]
    assert tests, f"{name} has no examples"
    with np.printoptions(legacy="1.25"):   # scalars print as 1.5, not np.float32(1.5)
        for test in tests:
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
