"""PSPNet with fused pyramid pooling kernels: a drop-in replacement for the official PyTorch PSPNet."""

from .ppm import PPM, convert_ppm

__all__ = ["PPM", "convert_ppm"]
__version__ = "0.1.0"
