"""Triton kernels, one family per module, each beside its plain-PyTorch reference."""
