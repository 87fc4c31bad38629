"""Kernel 2: fused bilinear upsampling of the branches + concat with x (``psp_kernels.upsample_concat``)."""
