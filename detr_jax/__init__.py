"""detr-jax: DETR (Carion et al. 2020) in JAX/Flax, with parity to the official PyTorch code.

This package root imports nothing heavy, so numpy-only helpers (``detr_jax.fill``,
``detr_jax.torch_io``) can be used from a torch environment without jax.
"""
