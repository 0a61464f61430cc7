"""Torch-free reading and writing of PyTorch checkpoint files."""
from detr_jax.torch_io.pth import PthError, load_pth, save_pth

__all__ = ["PthError", "load_pth", "save_pth"]
