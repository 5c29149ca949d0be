"""The API reference builds from the docstrings, and every cross-reference resolves.

``./run.sh docs`` runs the same Sphinx build (``docs/reference``) with
``-W -n``: warnings are errors and every reference must resolve.
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "docs", "reference")


def sphinx(source, out):
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "-n", "-q", "-b", "html",
                           source, out], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_the_api_reference_builds(tmp_path):
    result = sphinx(SOURCE, str(tmp_path / "html"))
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("index", "stn", "dsnt", "coordconv", "spatial_convention", "shells"):
        assert (tmp_path / "html" / f"{page}.html").exists()
    with open(tmp_path / "html" / "stn.html") as f:
        assert "spatial_transformer_network" in f.read()


def test_a_broken_reference_fails_the_build(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(os.path.join(SOURCE, "conf.py"), source / "conf.py")
    (source / "index.rst").write_text("Broken\n======\n\nSee :func:`stn.no_such_function`.\n")
    result = sphinx(str(source), str(tmp_path / "html"))
    assert result.returncode != 0
    assert "no_such_function" in result.stderr
