"""The official PSPNet pyramid pooling module written out in plain PyTorch: the tests' oracle."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class OfficialPPM(nn.Module):
    """The hszhao/semseg ``PPM``: same submodules and keys, plain ops (the definition)."""

    def __init__(self, in_dim, reduction_dim, bins):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x):
        out = [x]
        for f in self.features:
            out.append(F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True))
        return torch.cat(out, 1)
