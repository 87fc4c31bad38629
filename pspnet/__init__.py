"""PSPNet with fused pyramid pooling kernels: a drop-in replacement for the official PyTorch PSPNet.

Light on purpose: only the model pieces are imported here (training, data and evaluation code live
in their own submodules and are imported on use).
"""

from .checkpoint import load_checkpoint
from .convert import convert_ppm
from .export import export_onnx, export_program
from .model import PSPNet, TinyPSPNet
from .ppm import PPM
from .resnet import Bottleneck, ResNet, resnet50, resnet101, resnet152

__all__ = [
    "PPM",
    "convert_ppm",
    "PSPNet",
    "TinyPSPNet",
    "load_checkpoint",
    "export_onnx",
    "export_program",
    "ResNet",
    "Bottleneck",
    "resnet50",
    "resnet101",
    "resnet152",
]
__version__ = "0.1.0"
