"""The small models of the export tests (seeded, eval mode, random BatchNorm statistics)."""

import torch

from pspnet.testing import randomize_batchnorm

#: The models exported once per session by ``onnx_exports``: name -> (builder, example size).
EXPORTED_MODELS = {
    "tiny_concat": ("tiny", "concat", (65, 65)),
    "tiny_concat_free": ("tiny", "concat_free", (65, 65)),
    "pspnet50": ("pspnet50", "concat_free", (65, 65)),
}


def build_export_model(kind: str, head: str):
    """A small eval-mode model for the export tests (seeded; random BatchNorm statistics)."""
    import pspnet
    from pspnet.model import TinyPSPNet

    torch.manual_seed(0)
    if kind == "tiny":
        model = TinyPSPNet(classes=3, width=4, head=head)
    else:
        model = pspnet.PSPNet(layers=50, classes=5, pretrained=False, head=head)
    return randomize_batchnorm(model, seed=1).eval()
