import os
import sys
import zlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def per_test_rng(request):
    """Re-seeds the test module's global ``RNG`` from the test's name, so a
    test's draws do not depend on which other tests ran before it (-k,
    xdist). Modules opt in with ``pytestmark = pytest.mark.usefixtures("per_test_rng")``."""
    request.module.RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture(params=[True, False], ids=["xla", "plain"])
def jit(request):
    """Runs the test with the XLA-compiled inner functions on, then off
    (``spatial_convention.set_jit``), restoring the setting afterwards."""
    import spatial_convention
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(request.param)
    yield request.param
    spatial_convention.set_jit(previous)
