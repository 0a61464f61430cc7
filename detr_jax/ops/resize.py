"""Resizing with the exact index rules of torch.nn.functional.interpolate (NHWC arrays).

Shapes are static, so the sampling indices and weights (`detr_jax.ops.sampling`) are computed with
numpy at trace time.
"""
import jax.numpy as jnp

from detr_jax.ops.sampling import bilinear_matrix, torch_nearest_indices


def resize_nearest(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch `interpolate(mode="nearest")` of x [B, H, W, ...] to `size` = (h, w)."""
  rows = torch_nearest_indices(x.shape[1], size[0])
  cols = torch_nearest_indices(x.shape[2], size[1])
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)  # one ONNX Gather each (x[:, rows]: transposes)


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch `interpolate(mode="bilinear", align_corners=False)` of x [B, H, W, ...]."""
  wy = jnp.asarray(bilinear_matrix(x.shape[1], size[0]))
  wx = jnp.asarray(bilinear_matrix(x.shape[2], size[1]))
  return jnp.einsum("yh,bhw...,xw->byx...", wy, x, wx, precision="highest")
