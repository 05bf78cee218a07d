"""Inference backends behind one interface (base.Backend). Each module imports its library lazily,
so importing this package costs nothing and never pulls torch, tensorrt or CUDA."""

from .base import Backend, BackendUnavailable, check_outputs

__all__ = ["Backend", "BackendUnavailable", "check_outputs"]
