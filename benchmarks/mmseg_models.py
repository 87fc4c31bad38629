"""mmsegmentation models for the benchmarks (and the tests), built from config dicts with random
weights: nothing is downloaded. mmseg stays optional: :func:`available` says whether it imports.

mmcv-lite ships without the compiled ``mmcv.ops``, which ``import mmseg.models`` imports for
heads these models do not use: :func:`stub_mmcv_ops` puts a module there whose names raise when
called.
"""

from __future__ import annotations

import sys
import types

__all__ = ["stub_mmcv_ops", "available", "build", "pspnet_r50_d8", "psp_head"]


class _MissingOps(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is not available (mmcv-lite has no compiled ops)")

        return missing


def stub_mmcv_ops() -> None:
    """Install the ``mmcv.ops`` stub unless a real one imports."""
    try:
        import mmcv.ops  # noqa: F401
    except ImportError:
        sys.modules["mmcv.ops"] = _MissingOps("mmcv.ops")


def available() -> bool:
    """Whether mmsegmentation imports (with the stub where needed)."""
    try:
        stub_mmcv_ops()
        import mmseg.models  # noqa: F401
    except ImportError:
        return False
    return True


def build(cfg: dict):
    """An mmseg model from a config dict (random weights)."""
    stub_mmcv_ops()
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return MODELS.build(cfg)


NORM = dict(type="BN", requires_grad=True)


def psp_head(in_channels=2048, channels=512, num_classes=19, in_index=3) -> dict:
    """mmseg's PSPNet decode head as its Cityscapes configs set it (BN instead of SyncBN);
    ``in_index=0`` for a head called on ``[x]`` alone."""
    return dict(type="PSPHead", in_channels=in_channels, in_index=in_index, channels=channels,
                pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=num_classes,
                norm_cfg=NORM, align_corners=False)  # fmt: skip


def pspnet_r50_d8(num_classes=19) -> dict:
    """``configs/_base_/models/pspnet_r50-d8.py`` of mmseg 1.2.2 (BN instead of SyncBN)."""
    return dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=NORM,
                      norm_eval=False, style="pytorch", contract_dilation=True),
        decode_head=psp_head(num_classes=num_classes),
        auxiliary_head=dict(type="FCNHead", in_channels=1024, in_index=2, channels=256,
                            num_convs=1, concat_input=False, dropout_ratio=0.1,
                            num_classes=num_classes, norm_cfg=NORM, align_corners=False),
    )  # fmt: skip
