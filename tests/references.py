"""Independent references shared by the test files: NumPy from the
definitions, PyTorch's affine_grid / grid_sample / convolutions in float64.

Nothing here imports the project's modules. Images are NHWC NumPy arrays or
torch tensors (PyTorch's own functions see NCHW), grids [B, H, W, 2] of
normalised (x, y) in the project's (and PyTorch's) convention.
"""
import numpy as np
import torch

F = torch.nn.functional


def pixel_centres(n, align_corners):
    """Normalised centres of n pixels: linspace(-1, 1, n) (0 for n == 1), or (2i + 1) / n - 1."""
    if align_corners:
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    return (2.0 * np.arange(n) + 1.0) / n - 1.0


def np_unnormalize(coord, size, align_corners):
    """Normalised -> pixel coordinates (pixel i centred at i)."""
    if align_corners:
        return (coord + 1.0) / 2.0 * (size - 1)
    return ((coord + 1.0) * size - 1.0) / 2.0


def np_affine_grid(theta, out_h, out_w, align_corners):
    """[B, 2, 3] affine or [B, 3, 3] projective theta applied to the output pixel centres."""
    xs, ys = np.meshgrid(pixel_centres(out_w, align_corners), pixel_centres(out_h, align_corners))
    pts = np.stack([xs, ys, np.ones_like(xs)], -1)           # [Ho, Wo, 3]
    out = np.einsum("bij,hwj->bhwi", theta, pts)
    if theta.shape[1] == 3:
        return out[..., :2] / out[..., 2:3]
    return out


def torch_grid(theta, out_h, out_w, align_corners):
    """PyTorch's affine_grid for affine theta ([B, 6] / [B, 2, 3]); the homography
    written out for projective theta ([B, 8] with h22 = 1 / [B, 3, 3])."""
    b = theta.shape[0]
    if tuple(theta.shape[1:]) in ((6,), (2, 3)):
        return F.affine_grid(theta.reshape(b, 2, 3), (b, 1, out_h, out_w),
                             align_corners=align_corners)
    if tuple(theta.shape[1:]) == (8,):
        theta = torch.cat([theta, torch.ones(b, 1, dtype=theta.dtype)], 1)
    xs, ys = np.meshgrid(pixel_centres(out_w, align_corners), pixel_centres(out_h, align_corners))
    pts = torch.tensor(np.stack([xs, ys, np.ones_like(xs)], -1), dtype=theta.dtype)
    out = torch.einsum("bij,hwj->bhwi", theta.reshape(b, 3, 3), pts)
    return out[..., :2] / out[..., 2:]


def torch_sample(img, grid, **kwargs):
    """grid_sample on NHWC torch tensors; kwargs as PyTorch's (mode, padding_mode, align_corners)."""
    return F.grid_sample(img.permute(0, 3, 1, 2), grid, **kwargs).permute(0, 2, 3, 1)


def torch_stn(img, theta, out_dims=None, *, align_corners=False, padding_mode="zeros",
              interpolation="bilinear"):
    """spatial_transformer_network on torch tensors (NHWC), differentiable."""
    h, w = out_dims or img.shape[1:3]
    return torch_sample(img, torch_grid(theta, h, w, align_corners), mode=interpolation,
                        padding_mode=padding_mode, align_corners=align_corners)


def torch_warp(img, theta, out_dims=None, *, dy=None, **kwargs):
    """``torch_stn`` in float64 on NumPy (or TF) arrays, NHWC in and out.

    With ``dy`` (the output's upstream gradient) also returns the gradients
    to ``img`` and ``theta``.
    """
    ti = torch.tensor(np.asarray(img, np.float64)).requires_grad_(dy is not None)
    tt = torch.tensor(np.asarray(theta, np.float64)).requires_grad_(dy is not None)
    out = torch_stn(ti, tt, out_dims, **kwargs)
    if dy is None:
        return out.detach().numpy()
    out.backward(torch.tensor(np.asarray(dy, np.float64)))
    return out.detach().numpy(), ti.grad.numpy(), tt.grad.numpy()


def np_coords(spatial, with_r=False, align_corners=True):
    """CoordConv channels for spatial sizes [W] / [H, W] / [D, H, W]: x (last
    axis), y, z, then r, channels-last."""
    grids = np.meshgrid(*[pixel_centres(n, align_corners) for n in spatial], indexing="ij")
    channels = [grids[a] for a in reversed(range(len(spatial)))]
    if with_r:
        channels.append(np.sqrt(sum(c ** 2 for c in channels)))
    return np.stack(channels, axis=-1)


def torch_add_coords(x, with_r=False, align_corners=True):
    """x [B, *spatial, C] (torch) with the coordinate channels appended."""
    coords = torch.tensor(np_coords(x.shape[1:-1], with_r, align_corners), dtype=x.dtype)
    return torch.cat([x, coords.expand(x.shape[:1] + coords.shape)], dim=-1)


def torch_conv_same(x, w):
    """TF's stride-1 'SAME' convolution on channels-last torch tensors.

    x [B, *spatial, C], w [*kernel, C, out] (TF's layout). TF pads
    ``k - 1`` in total per axis, the odd one after.
    """
    n = x.dim() - 2
    pads = []
    for k in reversed(w.shape[:n]):       # F.pad lists the last axis first
        pads += [(k - 1) // 2, k - 1 - (k - 1) // 2]
    channels_first = x.permute(0, n + 1, *range(1, n + 1))
    weight = w.permute(n + 1, n, *range(n))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    out = conv(F.pad(channels_first, pads), weight)
    return out.permute(0, *range(2, n + 2), 1)
