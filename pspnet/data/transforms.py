"""PSPNet's training augmentations as tensor operations (torch only, CPU or CUDA).

Every transform is a callable ``t(image, label, generator=None) -> (image, label)``:

- ``image``: float tensor ``(3, H, W)`` or a batch ``(N, 3, H, W)``, RGB values 0..255 before
  :class:`Normalize` (uint8 input is converted to float32);
- ``label``: integer tensor ``(H, W)`` / ``(N, H, W)`` of class ids or the ignore index, or ``None``
  (then only the image is transformed and ``None`` is returned in its place);
- ``generator``: optional :class:`torch.Generator`; all randomness is drawn from it, so the same
  generator state gives the same output. Without one the global RNG is used.

On a batch each sample gets its own random parameters. The size-preserving transforms are
vectorised; :class:`RandScale` changes each sample's size differently, so a :class:`Compose`
that contains it runs a batch one sample at a time and stacks the results (which the final crop
makes equal).

The pipeline of the paper (and of the official code): random scale 0.5-2.0, random rotation
-10..10 degrees (probability 0.5), Gaussian blur (probability 0.5), horizontal flip (probability
0.5), random crop padded to the crop size (image padding = mean, label padding = ignore index),
normalisation. Images are resampled bilinearly, labels by nearest neighbour.
"""

from __future__ import annotations

import math

import torch

from .functional import (
    MEAN,
    STD,
    _batchify,
    _channel_vector,
    _check_fill,
    _pair,
    _rand,
    _size2,
    _unbatch,
    gaussian_blur,
    pad_to,
    resize,
    rotate,
)

__all__ = [
    "MEAN",
    "STD",
    "Compose",
    "Normalize",
    "RandScale",
    "RandRotate",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "Crop",
    "train_transform",
    "eval_transform",
    # the operations, from pspnet.data.functional
    "resize",
    "rotate",
    "gaussian_blur",
    "pad_to",
]


class Compose:
    """Apply ``transforms`` in order, passing the generator to each.

    A batch given to a Compose that contains a size-changing per-sample transform
    (:class:`RandScale`) is processed one sample at a time and stacked at the end; the final sizes
    must then agree (end the pipeline with a :class:`Crop`).
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    @property
    def per_sample_size(self) -> bool:
        return any(getattr(t, "per_sample_size", False) for t in self.transforms)

    def __call__(self, image, label=None, generator=None):
        if isinstance(image, torch.Tensor) and image.dim() == 4 and self.per_sample_size:
            if label is not None:
                _batchify(image, label, "Compose")  # shape checks
            outs = [
                self._run(image[i], None if label is None else label[i], generator)
                for i in range(image.shape[0])
            ]
            sizes = {tuple(o[0].shape) for o in outs}
            if len(sizes) > 1:
                raise ValueError(
                    "Compose: per-sample outputs of a batch have different sizes "
                    f"{sorted(sizes)}; end the pipeline with a Crop to batch them"
                )
            img = torch.stack([o[0] for o in outs])
            lab = None if label is None else torch.stack([o[1] for o in outs])
            return img, lab
        return self._run(image, label, generator)

    def _run(self, image, label, generator):
        for t in self.transforms:
            image, label = t(image, label, generator=generator)
        return image, label

    def __repr__(self):
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class Normalize:
    """``(image - mean) / std`` per channel (``std=None``: subtract the mean only)."""

    def __init__(self, mean=MEAN, std=STD):
        self.mean = mean
        self.std = std

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "Normalize")
        img = img - _channel_vector(self.mean, img, "mean")
        if self.std is not None:
            std = _channel_vector(self.std, img, "std")
            if bool((std == 0).any()):
                raise ValueError("Normalize: std contains zeros")
            img = img / std
        return _unbatch(img, lab, single)

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandScale:
    """Resize by a random factor in ``scale`` (image bilinear, label nearest).

    ``aspect_ratio=(lo, hi)`` additionally stretches by a random ratio ``r`` (width * sqrt(r),
    height / sqrt(r)). The new size is ``round(H * s)``, ``round(W * s)`` (at least 1).
    On a batch every sample gets its own factor: the samples are resized one by one and stacked
    when their sizes agree (use it inside :class:`Compose` with a :class:`Crop` for batches).
    """

    per_sample_size = True

    def __init__(self, scale=(0.5, 2.0), aspect_ratio=None, antialias=False):
        self.scale = _pair(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.aspect_ratio = None if aspect_ratio is None else _pair(aspect_ratio, "aspect_ratio")
        if self.aspect_ratio is not None and self.aspect_ratio[0] <= 0:
            raise ValueError(f"aspect_ratio must be positive, got {aspect_ratio}")
        self.antialias = bool(antialias)

    def sample_factors(self, generator=None):
        """Draw ``(scale_h, scale_w)`` for one sample."""
        lo, hi = self.scale
        s = lo + (hi - lo) * float(_rand(1, generator)[0])
        sh = sw = s
        if self.aspect_ratio is not None:
            alo, ahi = self.aspect_ratio
            r = math.sqrt(alo + (ahi - alo) * float(_rand(1, generator)[0]))
            sw, sh = s * r, s / r
        return sh, sw

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "RandScale")
        outs = []
        for i in range(img.shape[0]):
            sh, sw = self.sample_factors(generator)
            h, w = img.shape[-2:]
            size = (max(1, int(round(h * sh))), max(1, int(round(w * sw))))
            outs.append(
                resize(
                    img[i : i + 1],
                    None if lab is None else lab[i : i + 1],
                    size,
                    antialias=self.antialias,
                )
            )
        sizes = {tuple(o[0].shape) for o in outs}
        if len(sizes) > 1:
            raise ValueError(
                "RandScale: the samples of a batch got different sizes; apply it per sample or "
                "inside a Compose that ends with a Crop"
            )
        img = torch.cat([o[0] for o in outs])
        lab = None if lab is None else torch.cat([o[1] for o in outs])
        return _unbatch(img, lab, single)

    def __repr__(self):
        return f"RandScale(scale={self.scale}, aspect_ratio={self.aspect_ratio})"


class RandRotate:
    """Rotate by a random angle in ``rotate`` degrees (counter-clockwise positive) about the centre,
    with probability ``p``, keeping the size.

    Image: bilinear, areas outside the source filled with ``padding`` (the mean by default).
    Label: nearest neighbour, areas outside filled with ``ignore_index``.
    """

    def __init__(self, rotate=(-10, 10), padding=MEAN, ignore_index=255, p=0.5):
        self.rotate = _pair(rotate, "rotate")
        self.padding, self.ignore_index = _check_fill(padding, ignore_index)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "RandRotate")
        n = img.shape[0]
        apply = _rand(n, generator) < self.p
        lo, hi = self.rotate
        angles = lo + (hi - lo) * _rand(n, generator)
        idx = torch.nonzero(apply).flatten()
        if idx.numel():
            img_r, lab_r = rotate(
                img[idx.to(img.device)],
                None if lab is None else lab[idx.to(img.device)],
                angles[idx],
                padding=self.padding,
                ignore_index=self.ignore_index,
            )
            img = img.clone()
            img[idx.to(img.device)] = img_r
            if lab is not None:
                lab = lab.clone()
                lab[idx.to(img.device)] = lab_r
        return _unbatch(img, lab, single)

    def __repr__(self):
        return f"RandRotate(rotate={self.rotate}, p={self.p}, ignore_index={self.ignore_index})"


class RandomGaussianBlur:
    """With probability ``p``, blur the image (not the label) with a ``radius`` x ``radius``
    Gaussian (sigma from the kernel size as in OpenCV when ``sigma`` is None)."""

    def __init__(self, radius=5, sigma=None, p=0.5):
        if not isinstance(radius, int) or radius < 1 or radius % 2 == 0:
            raise ValueError(f"radius must be a positive odd int, got {radius!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.radius, self.sigma, self.p = radius, sigma, float(p)

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "RandomGaussianBlur")
        apply = _rand(img.shape[0], generator) < self.p
        idx = torch.nonzero(apply).flatten().to(img.device)
        if idx.numel():
            img = img.clone()
            img[idx] = gaussian_blur(img[idx], self.radius, self.sigma)
        return _unbatch(img, lab, single)

    def __repr__(self):
        return f"RandomGaussianBlur(radius={self.radius}, sigma={self.sigma}, p={self.p})"


class RandomHorizontalFlip:
    """With probability ``p`` (per sample), mirror image and label left-right."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "RandomHorizontalFlip")
        apply = _rand(img.shape[0], generator) < self.p
        idx = torch.nonzero(apply).flatten().to(img.device)
        if idx.numel():
            img = img.clone()
            img[idx] = img[idx].flip(-1)
            if lab is not None:
                lab = lab.clone()
                lab[idx] = lab[idx].flip(-1)
        return _unbatch(img, lab, single)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Crop:
    """Crop to ``size`` (int or ``(h, w)``); ``crop_type`` ``"rand"`` (training) or ``"center"``.

    An image smaller than the crop is first padded symmetrically (image with ``padding``, the
    mean by default; label with ``ignore_index``), as in the official code.
    """

    def __init__(self, size, crop_type="rand", padding=MEAN, ignore_index=255):
        self.size = _size2(size, "size")
        if crop_type not in ("rand", "center"):
            raise ValueError(f"crop_type must be 'rand' or 'center', got {crop_type!r}")
        self.crop_type = crop_type
        self.padding, self.ignore_index = _check_fill(padding, ignore_index)

    def __call__(self, image, label=None, generator=None):
        img, lab, single = _batchify(image, label, "Crop")
        img, lab = pad_to(img, lab, self.size, self.padding, self.ignore_index)
        n, _, h, w = img.shape
        ch, cw = self.size
        if self.crop_type == "rand":
            offs_h = (_rand(n, generator) * (h - ch + 1)).long().clamp_(max=h - ch).tolist()
            offs_w = (_rand(n, generator) * (w - cw + 1)).long().clamp_(max=w - cw).tolist()
        else:
            offs_h, offs_w = [(h - ch) // 2] * n, [(w - cw) // 2] * n
        if len(set(offs_h)) == 1 and len(set(offs_w)) == 1:
            oh, ow = offs_h[0], offs_w[0]
            img = img[..., oh : oh + ch, ow : ow + cw]
            lab = None if lab is None else lab[..., oh : oh + ch, ow : ow + cw]
        else:
            img = torch.stack(
                [
                    img[i, :, oh : oh + ch, ow : ow + cw]
                    for i, (oh, ow) in enumerate(zip(offs_h, offs_w))
                ]
            )
            if lab is not None:
                lab = torch.stack(
                    [
                        lab[i, oh : oh + ch, ow : ow + cw]
                        for i, (oh, ow) in enumerate(zip(offs_h, offs_w))
                    ]
                )
        return _unbatch(img.contiguous(), None if lab is None else lab.contiguous(), single)

    def __repr__(self):
        return (
            f"Crop(size={self.size}, crop_type={self.crop_type!r}, "
            f"ignore_index={self.ignore_index})"
        )


def train_transform(
    crop_size,
    scale=(0.5, 2.0),
    rotate=(-10, 10),
    blur=True,
    flip=True,
    ignore_index=255,
    mean=MEAN,
    std=STD,
):
    """The paper's training augmentation: RandScale -> RandRotate -> RandomGaussianBlur ->
    RandomHorizontalFlip -> random Crop (padded with mean / ignore_index) -> Normalize.

    ``scale=None`` / ``rotate=None`` / ``blur=False`` / ``flip=False`` drop that step.
    """
    steps = []
    if scale is not None:
        steps.append(RandScale(scale))
    if rotate is not None:
        steps.append(RandRotate(rotate, padding=mean, ignore_index=ignore_index))
    if blur:
        steps.append(RandomGaussianBlur())
    if flip:
        steps.append(RandomHorizontalFlip())
    steps.append(Crop(crop_size, "rand", padding=mean, ignore_index=ignore_index))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def eval_transform(mean=MEAN, std=STD):
    """Normalisation only (evaluation resizes / slides the window itself)."""
    return Compose([Normalize(mean, std)])
