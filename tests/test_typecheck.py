"""The public API's type hints hold: mypy checks the core modules and their shells."""
import os
import subprocess
import sys

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
