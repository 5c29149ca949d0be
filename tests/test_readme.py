"""The README's Python snippets run as written (each in a fresh namespace)."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snippets():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_readme_has_snippets():
    assert len(snippets()) >= 4


@pytest.mark.parametrize("index", range(len(snippets())))
def test_readme_snippet_runs(index):
    # Plain ops: the same numbers, without XLA's compile time for each new shape.
    import spatial_convention
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(False)
    try:
        exec(compile(snippets()[index], f"README.md snippet {index}", "exec"), {})
    finally:
        spatial_convention.set_jit(previous)
