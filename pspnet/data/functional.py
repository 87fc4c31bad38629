"""The tensor operations under PSPNet's augmentations (:mod:`pspnet.data.transforms`): resize,
rotate, blur and pad images ``(N, C, H, W)`` with their labels ``(N, H, W)``, and the input checks
the transforms share. Deterministic: the random parameters are drawn by the transforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["MEAN", "STD", "resize", "rotate", "gaussian_blur", "pad_to"]

#: ImageNet mean and std of the RGB channels, in 0..255 units
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _batchify(image, label, name="transform"):
    """Return ``(image4, label3_or_None, single)`` after checking shapes and dtypes."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(
            f"{name}: image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        if image.dtype == torch.uint8:
            image = image.float()
        else:
            raise TypeError(f"{name}: image must be a float or uint8 tensor, got {image.dtype}")
    single = image.dim() == 3
    img = image.unsqueeze(0) if single else image
    lab = None
    if label is not None:
        if not isinstance(label, torch.Tensor):
            raise TypeError(f"{name}: label must be a torch.Tensor, got {type(label).__name__}")
        if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
            raise TypeError(f"{name}: label must be an integer tensor, got {label.dtype}")
        expected = img.shape[-2:] if single else (img.shape[0], *img.shape[-2:])
        if tuple(label.shape) != tuple(expected):
            raise ValueError(
                f"{name}: label shape {tuple(label.shape)} does not match the image "
                f"(expected {tuple(expected)} for image {tuple(image.shape)})"
            )
        if label.device != image.device:
            raise ValueError(
                f"{name}: image and label are on different devices ({image.device}, {label.device})"
            )
        lab = label.long()
        lab = lab.unsqueeze(0) if single else lab
    return img, lab, single


def _unbatch(img, lab, single):
    if single:
        return img[0], (None if lab is None else lab[0])
    return img, lab


def _rand(n, generator):
    """``n`` uniform [0, 1) draws from ``generator`` (or the global RNG), returned on the CPU."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()


def _pair(value, name):
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
        return lo, hi
    raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")


def _size2(size, name):
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of them, got {size!r}")
    return int(size[0]), int(size[1])


def _channel_vector(values, img, name):
    """``values`` (number or per-channel sequence) as a ``(1, C, 1, 1)`` tensor like ``img``."""
    c = img.shape[1]
    t = torch.as_tensor(values, dtype=img.dtype, device=img.device).flatten()
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"{name} has {t.numel()} values but the image has {c} channels")
    return t.view(1, c, 1, 1)


def _check_fill(padding, ignore_index):
    if padding is not None and not isinstance(padding, int | float):
        padding = [float(p) for p in padding]
    return padding, int(ignore_index)


def resize(image, label, size, antialias=False):
    """Resize ``(N, C, H, W)`` images bilinearly and ``(N, H, W)`` labels by nearest neighbour.

    Both use half-pixel centres (``align_corners=False`` / ``nearest-exact``), so image and label
    stay aligned.
    """
    size = _size2(size, "size")
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=antialias
        )
        if label is not None:
            label = (
                F.interpolate(label[:, None].float(), size=size, mode="nearest-exact")[:, 0]
                .round()
                .long()
            )
    return image, label


def rotate(image, label, angles, padding=MEAN, ignore_index=255):
    """Rotate each sample of ``(N, C, H, W)`` / ``(N, H, W)`` by ``angles[i]`` degrees
    (counter-clockwise positive) about the image centre; see :class:`RandRotate`."""
    n, _, h, w = image.shape
    a = torch.as_tensor(angles, dtype=torch.float64).flatten() * (math.pi / 180.0)
    if a.numel() != n:
        raise ValueError(f"rotate: got {a.numel()} angles for {n} samples")
    c, s = torch.cos(a), torch.sin(a)
    # output normalised coords -> input normalised coords (inverse map of a rotation in pixel units)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = c
    theta[:, 0, 1] = -s * (h / w)
    theta[:, 1, 0] = s * (w / h)
    theta[:, 1, 1] = c
    grid_dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    theta = theta.to(device=image.device, dtype=grid_dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    fill = (
        _channel_vector(padding, image, "padding")
        if padding is not None
        else torch.zeros((), dtype=image.dtype, device=image.device)
    )
    src = (image - fill).to(grid_dtype)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.to(image.dtype) + fill
    lab_out = None
    if label is not None:
        shifted = (label + 1).to(grid_dtype)[:, None]  # 0 marks "outside the source"
        sampled = F.grid_sample(
            shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0]
        sampled = sampled.round().long()
        lab_out = torch.where(sampled == 0, torch.full_like(sampled, ignore_index), sampled - 1)
    return out, lab_out


def _gaussian_kernel1d(radius, sigma, dtype, device):
    if sigma is None or sigma <= 0:  # OpenCV's default for a given kernel size
        sigma = 0.3 * ((radius - 1) * 0.5 - 1) + 0.8
    x = torch.arange(radius, dtype=torch.float64) - (radius - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(image, radius=5, sigma=None):
    """Separable Gaussian blur of ``(N, C, H, W)`` with an odd ``radius`` x ``radius`` kernel
    (``sigma=None``: OpenCV's default sigma for that size), reflect-101 borders."""
    if radius < 1 or radius % 2 == 0:
        raise ValueError(f"radius must be a positive odd int, got {radius}")
    if radius == 1:
        return image
    n, c, h, w = image.shape
    k = _gaussian_kernel1d(radius, sigma, image.dtype, image.device)
    p = radius // 2
    mode = "reflect" if (h > p and w > p) else "replicate"
    x = F.pad(image, (p, p, p, p), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, radius).expand(c, 1, 1, radius), groups=c)
    x = F.conv2d(x, k.view(1, 1, radius, 1).expand(c, 1, radius, 1), groups=c)
    return x


def pad_to(image, label, size, padding=MEAN, ignore_index=255):
    """Pad ``(N, C, H, W)`` / ``(N, H, W)`` symmetrically up to at least ``size`` (image with
    ``padding`` per channel, label with ``ignore_index``)."""
    ch, cw = _size2(size, "size")
    n, c, h, w = image.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    top, left = ph // 2, pw // 2
    fill = (
        _channel_vector(padding, image, "padding")
        if padding is not None
        else torch.zeros(1, c, 1, 1, dtype=image.dtype, device=image.device)
    )
    out = fill.expand(n, c, h + ph, w + pw).clone()
    out[:, :, top : top + h, left : left + w] = image
    lab = None
    if label is not None:
        lab = torch.full((n, h + ph, w + pw), ignore_index, dtype=label.dtype, device=label.device)
        lab[:, top : top + h, left : left + w] = label
    return out, lab
