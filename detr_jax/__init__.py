"""detr-jax: DETR (Carion et al. 2020) in JAX/Flax, with parity to the official PyTorch code.

The package root imports nothing. These modules import neither jax nor flax
(tests/test_worker_imports.py): ``detr_jax.fill`` and ``detr_jax.torch_io`` (the .pth reader and
writer, and ``torch_io.mapping``, the official key layout), usable from a torch environment; and
the data side that grain's worker processes run (the ``detr_jax.data`` sources, transforms and
batching). ``detr_jax.torch_io.convert`` needs flax.
"""
