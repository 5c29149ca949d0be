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


@pytest.fixture
def plain_ops():
    """The inner functions as plain TensorFlow ops (no XLA compilation) for one test
    (``spatial_convention.set_jit(False)``), restored afterwards: the same numbers to float
    round-off, without compiling every kernel and gradient for each new shape."""
    import spatial_convention
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(False)
    yield
    spatial_convention.set_jit(previous)


@pytest.fixture(params=[True, False], ids=["xla", "plain"])
def jit(request):
    """Runs the test with the XLA-compiled inner functions on, then off
    (``spatial_convention.set_jit``), restoring the setting afterwards."""
    import spatial_convention
    previous = spatial_convention.jit_enabled()
    spatial_convention.set_jit(request.param)
    yield request.param
    spatial_convention.set_jit(previous)


@pytest.fixture
def path():
    """Sets XLA and the kernels on or off for one test, restoring both afterwards."""
    import spatial_convention
    previous = spatial_convention.jit_enabled(), spatial_convention.kernels_enabled()

    def use(jit, kernels):
        spatial_convention.set_jit(jit)
        spatial_convention.use_kernels(kernels)

    yield use
    use(*previous)


# Long cases kept out of the default run (pyproject: -m "not slow"; run them
# with `./run.sh test -m slow`). Each has a fast twin that stays in: the same
# check under XLA (second order), at the other sizes (identity), or the same
# 2-D taps against PyTorch in test_stn.py (kernels vs direct, 2-D, under XLA;
# wide images as plain ops).
SLOW_CASES = (
    "test_stn.py::test_second_order_gradient[plain-",
    "test_stn.py::test_identity_is_exact[False-(1, 5)]",
    "test_stn.py::test_identity_is_exact[True-(1, 5)]",
    "test_stn.py::test_identity_is_exact[False-(13, 6)]",
    "test_stn.py::test_identity_is_exact[True-(13, 6)]",
)
SLOW_PATTERNS = (
    ("test_stn_kernels.py::test_kernels_match_the_direct_sampler[xla-2d-", "-bicubic-c3]"),
    ("test_stn_kernels.py::test_kernels_match_the_direct_sampler[xla-2d-", "-nearest-c3]"),
    # The corner-by-corner reading of wide images: its XLA twin stays in.
    ("test_stn_kernels.py::test_kernels_match_the_direct_sampler[plain-", "-bilinear-c6]"),
    ("test_stn_kernels.py::test_kernels_match_the_direct_sampler[plain-", "-bilinear-c5]"),
)


def pytest_collection_modifyitems(items):
    for item in items:
        if (any(case in item.nodeid for case in SLOW_CASES)
                or any(start in item.nodeid and item.nodeid.endswith(end)
                       for start, end in SLOW_PATTERNS)):
            item.add_marker(pytest.mark.slow)
