"""Kernel 3: the cross-entropy of bilinearly upsampled logits, from the low-resolution logits
(``psp_kernels.upsample_cross_entropy``)."""
