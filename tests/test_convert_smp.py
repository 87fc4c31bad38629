"""pspnet.convert_ppm on segmentation_models_pytorch's PSPNet and UPerNet, against smp itself.

smp needs torchvision, whose PyPI build does not install beside the pinned CPU torch of CI: these
tests run where smp imports (a separate environment, see the README) and skip elsewhere.
"""

import pytest
import torch

from tests.thirdparty import check_converted

smp = pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation_models_pytorch is not importable here (its torchvision does not "
    "install beside the pinned CPU torch)",
)

ENCODER = dict(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=3)


def test_pspnet_decoder_x_last_one_by_one_bias():
    """x last, a 1x1 conv after the concat, and the bin-1 branch's conv bias without norm."""
    check_converted(
        lambda: smp.PSPNet(**ENCODER, encoder_depth=3, psp_out_channels=16),
        lambda dtype: torch.randn(2, 3, 64, 64, dtype=dtype),
        label="smp PSPNet",
    )


def test_upernet_psp_module():
    check_converted(
        lambda: smp.UPerNet(**ENCODER, decoder_channels=16),
        lambda dtype: torch.randn(2, 3, 64, 64, dtype=dtype),
        label="smp UPerNet",
    )
