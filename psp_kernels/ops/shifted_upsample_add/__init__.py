"""The concat-free head op: nine 3x3-shifted bilinear upsamplings of tiny maps added to a feature map
(``psp_kernels.shifted_upsample_add``)."""
