"""Mutants of the one coordinate convention shared by stn, dsnt and coordconv."""
from . import Mutant

FILES = ("spatial_convention.py",)
TESTS = ["tests/test_stn.py", "tests/test_coordconv.py", "tests/test_dsnt.py",
         "tests/test_compat.py", "tests/test_properties.py"]

MUTANTS = [
    Mutant("convention-half-extent-swapped",
           "return (size - 1.0) / 2.0 if align_corners else size / 2.0",
           "return size / 2.0 if align_corners else (size - 1.0) / 2.0",
           "half_extent: the two conventions swapped"),
    Mutant("convention-centre-offset",
           "return (tf.cast(size, dtype) - 1.0) / 2.0",
           "return tf.cast(size, dtype) / 2.0",
           "centre: n / 2 instead of (n - 1) / 2 (half-pixel offset)"),
    Mutant("convention-to-normalized-sign",
           "tf.math.divide_no_nan(coord - centre(size, coord.dtype),",
           "tf.math.divide_no_nan(coord + centre(size, coord.dtype),",
           "pixel_to_normalized: adds the centre instead of subtracting it"),
    Mutant("convention-to-pixel-ignores-flag",
           "return coord * half_extent(size, align_corners, coord.dtype) + centre(size, coord.dtype)",
           "return coord * half_extent(size, False, coord.dtype) + centre(size, coord.dtype)",
           "normalized_to_pixel ignores align_corners"),
    Mutant("convention-pixel-centres-offset",
           "return pixel_to_normalized(tf.range(size, dtype=dtype), size, align_corners)",
           "return pixel_to_normalized(tf.range(size, dtype=dtype) + 0.5, size, align_corners)",
           "pixel_centers: half-pixel offset"),
    Mutant("convention-compute-dtype-all",
           "return tf.float64 if any(d == tf.float64 for d in dtypes) else tf.float32",
           "return tf.float64 if all(d == tf.float64 for d in dtypes) else tf.float32",
           "compute_dtype: float64 only when every input is float64"),
]
