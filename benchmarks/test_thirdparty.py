"""mmsegmentation's PSPHead at Cityscapes shapes on a GPU: converted (``pspnet.convert_ppm``)
beside the original in eager mode and under ``torch.compile``.

C = 2048 at 64x128 (512x1024 crops) and 128x256 (whole 1024x2048 images), ``align_corners=False``,
batch 2 (mmseg's per-GPU batch), float32 and bfloat16 (autocast), eval forward and training
forward + backward. Skipped without a CUDA device or without mmsegmentation. On CPU,
``python -m benchmarks.compare_thirdparty`` compares the whole PSPNet-R50-D8.
"""

from __future__ import annotations

import copy

import pytest
import torch

import pspnet
from pspnet.testing import randomize_batchnorm

from . import mmseg_models

PROVIDERS = ("eager", "compiled", "converted")


@pytest.fixture(scope="module")
def heads():
    if not torch.cuda.is_available():
        pytest.skip(
            "needs a CUDA device (the CPU comparison: python -m benchmarks.compare_thirdparty)"
        )
    if not mmseg_models.available():
        pytest.skip("needs mmsegmentation==1.2.2, mmengine==0.10.7, mmcv-lite==2.1.0, ftfy")
    torch.manual_seed(0)
    head = randomize_batchnorm(mmseg_models.build(mmseg_models.psp_head(in_index=0)), seed=1).cuda()
    converted = pspnet.convert_ppm(copy.deepcopy(head))
    return {
        "eager": head,
        "compiled": torch.compile(copy.deepcopy(head)),
        "converted": converted,
    }


@pytest.mark.parametrize("hw", [(64, 128), (128, 256)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_mmseg_psphead(benchmark, heads, provider, pass_, dtype, hw):
    head = heads[provider].train(pass_ == "fwd+bwd")
    x = torch.randn(2, 2048, *hw, device="cuda", requires_grad=pass_ == "fwd+bwd")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = head([x])
        if pass_ == "fwd+bwd":
            out.float().square().mean().backward()
        torch.cuda.synchronize()

    with torch.no_grad() if pass_ == "fwd" else torch.enable_grad():
        step()  # compile / warm-up
        benchmark.extra_info.update(case="mmseg-psphead", provider=provider, pass_=pass_,
                                    dtype=str(dtype), hw=list(hw))  # fmt: skip
        benchmark.pedantic(step, rounds=20, warmup_rounds=3)
