"""Sonnet 2 CoordConv modules: `coordconv.add_coords` then a Sonnet convolution.

The module holds configuration and the convolution's variables; all
coordinate maths lives in `coordconv.py`.

Example:
  >>> import tensorflow as tf
  >>> from coordconv_snt import CoordConv2D
  >>> conv = CoordConv2D(output_channels=16, kernel_shape=3, with_r=True)
  >>> conv(tf.zeros([8, 28, 32, 3])).shape
  TensorShape([8, 28, 32, 16])
  >>> conv.w.shape          # 3 input channels + x, y, r
  TensorShape([3, 3, 6, 16])
"""

import numbers
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import coordconv
from spatial_convention import (as_float_tensor, check_bool, check_option, check_positive_int,
                                check_rank, missing_extra)

try:
    import sonnet as snt
except ImportError as error:   # Sonnet is an optional extra
    raise missing_extra("sonnet", by="coordconv_snt", extra="sonnet") from error

__all__ = ["AddCoords", "CoordConv1D", "CoordConv2D", "CoordConv3D"]


@snt.allow_empty_variables
class AddCoords(snt.Module):
    """Appends coordinate channels: ``coordconv.add_coords`` as a module.

    ``[B, W, C]``, ``[B, H, W, C]`` or ``[B, D, H, W, C]`` (or channels
    first) -> the same with ``ndim (+1 for r)`` channels appended, in the
    order x (along the width), y (height), z (depth), r. No variables.

    Args:
      with_r: also append ``r = sqrt(x^2 + y^2 (+ z^2))``.
      align_corners: True (default): ``linspace(-1, 1, n)``; False: pixel
        centres ``(2 i + 1) / n - 1``.
      data_format: as in ``coordconv.add_coords`` (default channels-last),
        checked here.
      name: module name.

    Example:
      >>> import tensorflow as tf
      >>> AddCoords()(tf.zeros([1, 1, 3, 1]))[0, 0, :, 1].numpy()   # x
      array([-1.,  0.,  1.], dtype=float32)
    """

    def __init__(self, with_r: bool = False, align_corners: bool = True,
                 data_format: Optional[str] = None, name: Optional[str] = None):
        super().__init__(name=name)
        self.with_r = check_bool(with_r, name="with_r")
        self.align_corners = check_bool(align_corners, name="align_corners")
        self.data_format = coordconv.check_data_format(data_format)

    def __call__(self, inputs):
        return coordconv.add_coords(inputs, self.with_r, align_corners=self.align_corners,
                                    data_format=self.data_format)


class _CoordConvND(snt.Module):
    _NUM_SPATIAL: int = 0
    _CONV: Any = None
    _DATA_FORMATS: Tuple[str, ...] = ()

    def __init__(self, output_channels: int, kernel_shape: Union[int, Sequence[int]],
                 stride: Union[int, Sequence[int]] = 1, rate: Union[int, Sequence[int]] = 1,
                 padding: Union[str, Callable] = "SAME", with_bias: bool = True,
                 w_init: Optional[Any] = None, b_init: Optional[Any] = None,
                 data_format: Optional[str] = None, name: Optional[str] = None, *,
                 with_r: bool = False, align_corners: bool = True):
        super().__init__(name=name)
        n = self._NUM_SPATIAL
        data_format = check_option(
            self._DATA_FORMATS[0] if data_format is None else
            data_format.upper() if isinstance(data_format, str) else data_format,
            name="data_format", allowed=self._DATA_FORMATS)
        check_positive_int(output_channels, name="output_channels")
        self._check_ints(kernel_shape, "kernel_shape", n)
        self._check_ints(stride, "stride", n)
        self._check_ints(rate, "rate", n)
        if isinstance(padding, str):   # else a Sonnet padding callable
            padding = check_option(padding.upper(), name="padding", allowed=("SAME", "VALID"))
        self._with_r = check_bool(with_r, name="with_r")
        self._align_corners = check_bool(align_corners, name="align_corners")
        self._data_format = data_format
        self.output_channels = int(output_channels)
        self.conv = self._CONV(
            output_channels=int(output_channels), kernel_shape=kernel_shape,
            stride=stride, rate=rate, padding=padding,
            with_bias=with_bias, w_init=w_init, b_init=b_init,
            data_format=data_format, name="conv")

    @staticmethod
    def _check_ints(value, name, n):
        values = [value] if isinstance(value, numbers.Integral) else value
        try:
            values = list(values)
        except TypeError:
            values = None
        if (values is None or len(values) not in (1, n) or
                any(not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1
                    for v in values)):
            raise ValueError(f"{name} must be a positive int or a sequence of "
                             f"{n} positive ints; got {value!r}")

    @property
    def with_r(self):
        return self._with_r

    @property
    def num_coord_channels(self):
        """Channels appended before the convolution: spatial dims + with_r."""
        return self._NUM_SPATIAL + int(self._with_r)

    @property
    def w(self):
        """Kernel ``[*kernel_shape, C + num_coord_channels, output_channels]``.

        Exists after the first call. The last `num_coord_channels` input
        slices act on x, y, (z), (r)."""
        return self.conv.w

    @property
    def b(self):
        return self.conv.b

    def __call__(self, inputs):
        """Appends coordinate channels to `inputs`, then convolves.

        Args:
          inputs: ``[B, *spatial, C]`` (or channels-first per `data_format`);
            batch and spatial sizes may be unknown. Integer inputs are cast to
            float32; float dtypes are kept.
        Returns:
          The Sonnet convolution of ``add_coords(inputs)``.
        """
        inputs = as_float_tensor(inputs, name="inputs")
        check_rank(inputs, name="inputs", ranks=(self._NUM_SPATIAL + 2,),
                   layout=f"{self._data_format} for {type(self).__name__}")
        augmented = coordconv.add_coords(inputs, with_r=self._with_r,
                                         align_corners=self._align_corners,
                                         data_format=self._data_format)
        return self.conv(augmented)


class CoordConv1D(_CoordConvND):
    """1-D CoordConv: appends x (and r = abs(x)), then `snt.Conv1D`.

    Arguments are those of `snt.Conv1D` (data_format 'NWC' or 'NCW') plus
    keyword-only `with_r` and `align_corners` (see `coordconv.add_coords`).

    Example:
      >>> import tensorflow as tf
      >>> CoordConv1D(output_channels=4, kernel_shape=3)(tf.zeros([2, 10, 1])).shape
      TensorShape([2, 10, 4])
    """
    _NUM_SPATIAL = 1
    _CONV = snt.Conv1D
    _DATA_FORMATS = ("NWC", "NCW")


class CoordConv2D(_CoordConvND):
    """2-D CoordConv: ``snt.Conv2D(...)(coordconv.add_coords(inputs, with_r))``.

    Arguments are those of ``snt.Conv2D`` (``output_channels``,
    ``kernel_shape``, ``stride``, ``rate``, ``padding``, ``with_bias``,
    ``w_init``, ``b_init``, ``data_format`` 'NHWC' (default) or 'NCHW',
    ``name``) plus, keyword only, ``with_r`` (also append
    r = sqrt(x^2 + y^2)) and ``align_corners`` (the coordinate convention,
    see ``coordconv.add_coords``; default True: linspace(-1, 1, n)).

    The internal convolution is `self.conv`; its kernel `self.w` has
    ``C + 2 (+1)`` input channels: the input's, then x, y, (r).

    Example:
      >>> import tensorflow as tf
      >>> conv = CoordConv2D(output_channels=16, kernel_shape=3, with_r=True)
      >>> conv(tf.zeros([8, 28, 32, 3])).shape
      TensorShape([8, 28, 32, 16])
      >>> conv.w.shape          # 3 input channels + x, y, r
      TensorShape([3, 3, 6, 16])
    """
    _NUM_SPATIAL = 2
    _CONV = snt.Conv2D
    _DATA_FORMATS = ("NHWC", "NCHW")


class CoordConv3D(_CoordConvND):
    """3-D CoordConv: appends x, y, z (and r), then `snt.Conv3D`.

    Arguments are those of `snt.Conv3D` (data_format 'NDHWC' or 'NCDHW') plus
    keyword-only `with_r` and `align_corners`.

    Example:
      >>> import tensorflow as tf
      >>> CoordConv3D(output_channels=2, kernel_shape=3)(tf.zeros([1, 4, 5, 6, 1])).shape
      TensorShape([1, 4, 5, 6, 2])
    """
    _NUM_SPATIAL = 3
    _CONV = snt.Conv3D
    _DATA_FORMATS = ("NDHWC", "NCDHW")
