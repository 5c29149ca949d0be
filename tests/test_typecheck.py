"""The public API's type hints hold: mypy checks the core modules and their shells."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["spatial_convention.py", "stn.py", "_stn_kernels.py", "dsnt.py", "_dsnt_kernels.py",
           "coordconv.py", "stn_snt.py", "dsnt_snt.py", "coordconv_snt.py", "stn_keras.py",
           "dsnt_keras.py", "coordconv_keras.py"]


def test_mypy_passes():
    # TensorFlow, Keras and Sonnet ship no type information: their names are Any.
    result = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports",
                             "--follow-imports=silent", "--no-error-summary", *MODULES],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# The public callables whose annotations mypy checks: a function or method
# without them would be skipped silently (mypy does not check untyped defs).
# Read from the source (Sonnet wraps a module's methods at run time).
PUBLIC_FILES = ["dsnt.py", "dsnt_snt.py", "dsnt_keras.py", "_dsnt_kernels.py"]
# _dsnt_kernels.py is private; its entry points called by dsnt.py count as its public API.
KERNEL_ENTRY_POINTS = {"dsnt", "js_divergence"}


def _untyped_public_defs(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    private_module = os.path.basename(path).startswith("_")

    def public(name, method=False):
        if method and name in ("__init__", "__call__"):
            return True
        if private_module and not method:
            return name in KERNEL_ENTRY_POINTS
        return not name.startswith("_")

    def untyped(fn, method):
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        if method and args:
            args = args[1:]   # self
        args += [a for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
        return fn.returns is None or any(a.annotation is None for a in args)

    found, missing = [], []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and public(node.name):
            found.append(node.name)
            if untyped(node, False):
                missing.append(node.name)
        elif isinstance(node, ast.ClassDef):   # private bases too: their __init__ is public
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and public(member.name, method=True):
                    found.append(f"{node.name}.{member.name}")
                    if untyped(member, True):
                        missing.append(f"{node.name}.{member.name}")
    return found, missing


@pytest.mark.parametrize("path", PUBLIC_FILES)
def test_every_public_callable_is_annotated(path):
    found, missing = _untyped_public_defs(path)
    assert found, f"{path} has no public callables"
    assert not missing, f"{path}: no type hints on {', '.join(missing)}"
