"""Mutants of CoordConv: channel order, the r channel, the convention, arguments."""
from . import Mutant

FILES = ("coordconv.py",)
TESTS = ["tests/test_coordconv.py", "tests/test_coordconv_snt.py", "tests/test_compat.py"]
ARGS = ("-k", "coordconv")   # of test_compat, only the coordconv cases

MUTANTS = [
    Mutant("coordconv-xy-order",
           "for a in reversed(range(n)):",
           "for a in range(n):",
           "channels in axis order (y, x) instead of (x, y)"),
    Mutant("coordconv-r-squared",
           "channels.append(tf.sqrt(tf.add_n([tf.square(c) for c in channels])))",
           "channels.append(tf.add_n([tf.square(c) for c in channels]))",
           "r channel holds r squared"),
    Mutant("coordconv-channels-convention",
           "spatial_convention.pixel_centers(sizes[a], align_corners, compute_dtype)",
           "spatial_convention.pixel_centers(sizes[a], True, compute_dtype)",
           "coord_channels ignores align_corners"),
    Mutant("coordconv-conv-convention",
           "augmented = add_coords(inputs, with_r=with_r, align_corners=align_corners,",
           "augmented = add_coords(inputs, with_r=with_r, align_corners=True,",
           "coord_conv ignores align_corners"),
    Mutant("coordconv-conv-dilations",
           "padding=padding.upper(), dilations=dilations,",
           "padding=padding.upper(), dilations=None,",
           "coord_conv ignores dilations"),
    Mutant("coordconv-convnd-convention",
           'align_corners=align_corners, name=name or "coord_conv3d")',
           'align_corners=True, name=name or "coord_conv3d")',
           "coord_conv3d does not pass align_corners on (each of coord_conv1d/2d/3d "
           "passes it itself)"),
    Mutant("coordconv-convnd-dilations",
           'with_r, dilations=dilations, data_format=data_format,\n'
           '                      align_corners=align_corners, name=name or "coord_conv1d")',
           'with_r, dilations=None, data_format=data_format,\n'
           '                      align_corners=align_corners, name=name or "coord_conv1d")',
           "coord_conv1d does not pass dilations on (each of coord_conv1d/2d/3d passes "
           "them itself)"),
    Mutant("coordconv-channels-first-sizes",
           "spatial = [dyn[2 + i] for i in range(num_spatial)]",
           "spatial = [dyn[1 + i] for i in range(num_spatial)]",
           "channels-first: spatial sizes read one axis early"),
    Mutant("coordconv_snt-convention",
           "align_corners=self._align_corners,",
           "align_corners=True,",
           "CoordConv*D ignores align_corners",
           files=("coordconv_snt.py",)),
]
