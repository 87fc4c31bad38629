"""The small models of the export tests (seeded, eval mode, random BatchNorm statistics)."""

import torch


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics and affine parameters (eval then differs from identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


#: The models exported once per session by ``onnx_exports``: name -> (builder, example size).
EXPORTED_MODELS = {
    "tiny_concat": ("tiny", "concat", (65, 65)),
    "tiny_concat_free": ("tiny", "concat_free", (65, 65)),
    "pspnet50": ("pspnet50", "concat_free", (65, 65)),
}


def build_export_model(kind: str, head: str):
    """A small eval-mode model for the export tests (seeded; random BatchNorm statistics)."""
    import pspnet
    from pspnet.train import TinyPSPNet

    torch.manual_seed(0)
    if kind == "tiny":
        model = TinyPSPNet(classes=3, width=4, head=head)
    else:
        model = pspnet.PSPNet(layers=50, classes=5, pretrained=False, head=head)
    return randomize_batchnorm(model).eval()
