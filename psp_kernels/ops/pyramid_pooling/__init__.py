"""The whole PPM forward in one read of x: kernel 1 + kernel 2 fused at the op level (``psp_kernels.pyramid_pooling``)."""
