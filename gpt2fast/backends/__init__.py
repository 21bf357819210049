"""Backends that run consensus iterations; each offers the interface of ``torch_backend.TorchEngine``."""
