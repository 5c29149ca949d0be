"""Sphinx configuration of the API reference: ``./run.sh docs`` builds it.

Sphinx, because it can fail the build on every unresolved cross-reference
(``nitpicky`` with ``-W``), reads the Google-style docstrings (napoleon) and
the reST roles (``:func:``) they already use, and needs no network.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

project = "spatial-layers"
author = "The spatial-layers authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = True
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False   # Keras's own docstrings are not ours to check
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
default_role = "code"   # `x` is code; references are explicit (:func:`x`)
html_theme = "alabaster"
exclude_patterns = ["_build"]

# Every reference must resolve: a misspelt name fails the build. Names from
# other projects (TensorFlow, NumPy, Keras, Sonnet, typing) have no
# inventory offline and are not ours to check.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(tf|tensorflow|np|numpy|keras|snt|sonnet|typing|collections)\..*"),
    (r"py:.*", r"(Any|Callable|List|Literal|Optional|Sequence|Tuple|Union|Dict)"),
    (r"py:.*", r"(TensorLike|SizeLike|Size|PaddingMode|Interpolation|Units|IntOrInts|Padding|"
               r"Method|Reduction)"),
    (r"py:.*", r"(stn|spatial_convention|coordconv|dsnt)\.(TensorLike|SizeLike|Size|PaddingMode|"
               r"Interpolation|Units|IntOrInts|Padding|Method|Reduction)"),
    (r"py:class", r"(optional|default .*|callable|int|float|bool|str|.*\.Tensor|Tensor)"),
    (r"py:class", r".*\._\w+"),   # private base classes of the shells
]
