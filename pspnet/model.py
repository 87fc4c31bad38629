"""PSPNet (Zhao et al., CVPR 2017): dilated deep-stem ResNet, pyramid pooling module, heads.

A drop-in replacement for the official hszhao/semseg PyTorch ``PSPNet``: same constructor
arguments, module names and ``state_dict`` keys/shapes, same outputs on the official input sizes,
so its released checkpoints load (see :func:`pspnet.load_checkpoint`). Differences: any input
size works, bad arguments raise ``ValueError``, batch size 1 trains, the PPM is the fused one, and
``torch.compile(fullgraph=True)`` traces it without graph breaks.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from psp_kernels import upsample_cross_entropy

from . import export_ops
from .heads import concat_free_conv3x3
from .hooks import hooked
from .ppm import PPM
from .resnet import _LAYERS, Bottleneck, ResNet, resnet50, resnet101, resnet152

__all__ = ["PSPNet", "TinyPSPNet", "fused_loss_options"]

_BACKBONES = {50: resnet50, 101: resnet101, 152: resnet152}
_HEADS = ("concat", "concat_free")
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def fused_loss_options(criterion) -> dict | None:
    """The options of :func:`psp_kernels.upsample_cross_entropy` that compute ``criterion``, or
    ``None`` when it is not a plain ``nn.CrossEntropyLoss`` (a subclass with its own
    ``forward``, hooks of its own or global module hooks, label smoothing, ``reduction="none"``
    or an ``ignore_index`` that is not an integer keep the materialised path)."""
    if not isinstance(criterion, nn.CrossEntropyLoss):
        return None
    if type(criterion).forward is not nn.CrossEntropyLoss.forward:
        return None
    if hooked([criterion]):
        return None
    if criterion.label_smoothing != 0.0 or criterion.reduction not in ("mean", "sum"):
        return None
    try:  # an index-like ignore_index (a numpy integer) works in PyTorch's loss too
        ignore_index = operator.index(criterion.ignore_index)
    except TypeError:
        return None
    return dict(weight=criterion.weight, ignore_index=ignore_index, reduction=criterion.reduction)


def _head(in_dim: int, mid_dim: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, mid_dim, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_dim),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_dim, classes, kernel_size=1),
    )


class PSPNet(nn.Module):
    """Pyramid scene parsing network.

    Args (as the official PSPNet):
        layers: backbone depth, 50, 101 or 152 (deep-stem ResNet, output stride 8).
        bins: pyramid bin sizes of the PPM; ``2048 % len(bins) == 0`` (``32 * width``).
        dropout: ``Dropout2d`` probability in the heads.
        classes: number of classes (> 1).
        zoom_factor: 1, 2, 4 or 8: output resolution relative to the stride-8 features.
        use_ppm: use the pyramid pooling module (else the head sees the 2048 backbone channels).
        criterion: loss used in training when labels are given.
        pretrained: load the ImageNet backbone from ``backbone_path`` or, if found, from
            ``$PSPNET_HOME``, ``~/.cache/pspnet/`` or ``./initmodel/`` (``resnet{layers}_v2.pth``);
            without a file, warn once and keep the random initialisation (never downloads).

    Extensions (keyword only; the defaults keep the official behaviour):
        aux_weight: weight of the auxiliary loss used by :meth:`loss` (official training: 0.4).
        backbone_path: ImageNet backbone file to load (implies loading; must exist).
        head: ``"concat"`` (the paper's layout: the classifier's 3x3 conv runs over
            ``cat([x, up(bin_1), up(bin_2), ...])``) or ``"concat_free"`` (the same function and
            parameters, computed without the concat: the conv's pyramid half is applied at the
            bins' own resolution and upsampled afterwards, see :mod:`pspnet.heads`). The default,
            ``"concat_free"``, was chosen by measurement: on CPU, PSPNet-50 at 1x3x473x473 runs
            its forward 1.23x faster with 21% fewer FLOPs; ``"concat"`` gives the same outputs.

    Modules: ``layer0`` (deep stem + maxpool), ``layer1..layer4``, ``ppm``, ``cls``, ``aux``.

    Output size: for an input ``H x W`` the logits are ``((H-1)*zoom//8 + 1, (W-1)*zoom//8 + 1)``.
    That is the official ``(H-1)/8*zoom+1`` for the official ``8n+1`` sizes, the input size for
    ``zoom_factor=8`` whatever the size, and the stride-8 feature size for ``zoom_factor=1``.
    """

    def __init__(
        self,
        layers: int = 50,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        classes: int = 2,
        zoom_factor: int = 8,
        use_ppm: bool = True,
        criterion: nn.Module = nn.CrossEntropyLoss(ignore_index=255),  # noqa: B008 (official)
        pretrained: bool = True,
        *,
        aux_weight: float = 0.4,
        backbone_path=None,
        head: str = "concat_free",
        blocks: Sequence[int] | None = None,
        width: int = 64,
        head_channels: tuple[int, int] | None = None,
    ):
        super().__init__()
        if blocks is None and layers not in _BACKBONES:
            raise ValueError(f"layers must be 50, 101 or 152, got {layers!r}")
        custom = blocks is not None or width != 64
        if custom and (pretrained or backbone_path is not None):
            raise ValueError(
                "ImageNet backbones exist for the official ResNets only: pass pretrained=False "
                "(and no backbone_path) with custom blocks or width"
            )
        fea_dim = 32 * width
        try:
            bins = tuple(int(b) for b in bins)
        except TypeError as e:
            raise ValueError(f"bins must be a sequence of positive ints, got {bins!r}") from e
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"bins must be a non-empty sequence of positive ints, got {bins!r}")
        if fea_dim % len(bins) != 0:
            raise ValueError(
                f"{fea_dim} must be divisible by len(bins) (the PPM reduces {fea_dim} channels to "
                f"{fea_dim} // len(bins) per bin), got {len(bins)} bins"
            )
        if isinstance(classes, bool) or not isinstance(classes, int) or classes <= 1:
            raise ValueError(f"classes must be an int > 1, got {classes!r}")
        if zoom_factor not in (1, 2, 4, 8):
            raise ValueError(f"zoom_factor must be 1, 2, 4 or 8, got {zoom_factor!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
        self.layers = layers
        self.bins = bins
        self.zoom_factor = zoom_factor
        self.use_ppm = bool(use_ppm)
        self.criterion = criterion
        self.aux_weight = float(aux_weight)
        self.head = head

        dilated = dict(deep_base=True, replace_stride_with_dilation=[False, True, True])
        if custom:
            blocks = tuple(blocks) if blocks is not None else None
            resnet = ResNet(Bottleneck, blocks or _LAYERS[layers], width=width, **dilated)
        else:
            resnet = _BACKBONES[layers](
                pretrained=pretrained, backbone_path=backbone_path, **dilated
            )
        self.layer0 = resnet.stem()
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4

        cls_mid, aux_mid = head_channels or (8 * width, 4 * width)
        if self.use_ppm:
            self.ppm = PPM(fea_dim, fea_dim // len(bins), bins)
        self.cls = _head(fea_dim * (2 if self.use_ppm else 1), cls_mid, classes, dropout)
        self.aux = _head(16 * width, aux_mid, classes, dropout)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Logit size for an ``h x w`` input: ``((h-1)*zoom//8 + 1, (w-1)*zoom//8 + 1)``."""
        z = self.zoom_factor
        return (h - 1) * z // 8 + 1, (w - 1) * z // 8 + 1

    def _upsample(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.zoom_factor == 1:  # the output size is the feature size (ceil(H/8))
            return x
        if export_ops.exporting():  # plain ops exact at every (symbolic) size
            return export_ops.upsample(x, size, align_corners=True)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Segment ``x`` of shape ``(N, 3, H, W)`` (any ``H, W``).

        In training mode with labels ``y`` (``(N, H', W')`` class indices, ``H' x W'`` the output
        size, 255 ignored by the default criterion) returns ``(prediction, main_loss, aux_loss)``
        like the official model, with ``prediction = logits.argmax(1)``; combine the losses with
        :meth:`loss`. Otherwise (eval mode, or no labels) returns the logits
        ``(N, classes, H', W')``; ``H' x W'`` is the input size for ``zoom_factor=8``.

        With an ``nn.CrossEntropyLoss`` criterion (any ``weight``, ``ignore_index``, ``"mean"``
        or ``"sum"``; see :func:`fused_loss_options`) the losses and the prediction come from
        :func:`psp_kernels.upsample_cross_entropy` on the stride-8 logits: the same values,
        without the full-resolution logits, their log-probabilities or their gradient. Any other
        criterion sees the upsampled logits, as in the official model.
        """
        if x.dim() != 4:
            raise ValueError(f"x must be (N, 3, H, W), got shape {tuple(x.shape)}")
        size = self.output_size(x.shape[-2], x.shape[-1])

        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x_tmp = self.layer3(x)
        x = self._classify(self.layer4(x_tmp))

        if self.training and y is not None:
            fused = fused_loss_options(self.criterion)
            if fused is not None and y.dtype in _LABEL_DTYPES and tuple(y.shape[1:]) == size:
                return self._fused_losses(x, self.aux(x_tmp), y, fused)
            x = self._upsample(x, size)
            aux = self._upsample(self.aux(x_tmp), size)
            main_loss = self.criterion(x, y)
            aux_loss = self.criterion(aux, y)
            return x.max(1)[1], main_loss, aux_loss
        return self._upsample(x, size)

    def _fused_losses(self, logits, aux_logits, y, options):
        """``(prediction, main_loss, aux_loss)`` from the stride-8 logits: the cross-entropy of
        their upsampling to the labels' size, which is never built
        (:func:`psp_kernels.upsample_cross_entropy`; the same values as the criterion on
        :meth:`_upsample`'s output)."""
        main_loss, pred = upsample_cross_entropy(logits, y, align_corners=True,
                                                 return_prediction=True, **options)  # fmt: skip
        aux_loss = upsample_cross_entropy(aux_logits, y, align_corners=True, **options)
        return pred, main_loss, aux_loss

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        """PPM + main head on the layer4 features."""
        if not self.use_ppm:
            return self.cls(x)
        if self.head == "concat":
            return self.cls(self.ppm(x))
        conv, rest = self.cls[0], list(self.cls)[1:]
        x = concat_free_conv3x3(x, self.ppm.pyramid(x), conv.weight, align_corners=True)
        for module in rest:
            x = module(x)
        return x

    def loss(self, main_loss: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
        """The training objective ``main_loss + aux_weight * aux_loss`` (official: weight 0.4)."""
        return main_loss + self.aux_weight * aux_loss

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, bins={self.bins}, zoom_factor={self.zoom_factor}, "
            f"use_ppm={self.use_ppm}, aux_weight={self.aux_weight}, head={self.head!r}"
        )


class TinyPSPNet(PSPNet):
    """A narrow PSPNet for CPU runs and tests: the same modules (``layer0..layer4``, ``ppm``,
    ``cls``, ``aux``), forward and losses as :class:`PSPNet`, with a one-block-per-stage
    bottleneck ResNet of base width ``width`` (features ``32 * width`` instead of 2048) and
    ``4 * width`` middle channels in both heads; never pretrained."""

    def __init__(
        self,
        classes: int = 2,
        width: int = 16,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        zoom_factor: int = 8,
        use_ppm: bool = True,
        criterion: nn.Module | None = None,
        aux_weight: float = 0.4,
        head: str | None = None,
    ):
        w = int(width)
        if w < 1:
            raise ValueError(f"tiny_width must be >= 1, got {width}")
        if not bins:
            raise ValueError(f"bins must be a non-empty sequence of positive ints, got {bins!r}")
        if (32 * w) % len(bins):
            raise ValueError(f"32 * tiny_width must be divisible by len(bins) = {len(bins)}")
        super().__init__(
            bins=bins,
            dropout=dropout,
            classes=classes,
            zoom_factor=zoom_factor,
            use_ppm=use_ppm,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(ignore_index=255),
            pretrained=False,
            aux_weight=aux_weight,
            **({} if head is None else {"head": head}),
            blocks=(1, 1, 1, 1),
            width=w,
            head_channels=(4 * w, 4 * w),
        )
        self.layers = "tiny"
