"""Kernel 1: fused multi-bin adaptive average pooling + 1x1 convolution (``psp_kernels.pyramid_pool_conv``)."""
