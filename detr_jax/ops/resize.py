"""Resizing with the exact index rules of torch.nn.functional.interpolate (NHWC arrays).

Shapes are static, so the sampling indices and weights (`detr_jax.ops.sampling`) are computed with
numpy at trace time.
"""
import jax.numpy as jnp
import numpy as np

from detr_jax.ops.sampling import bilinear_matrix, torch_nearest_indices


def resize_nearest(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch `interpolate(mode="nearest")` of x [B, H, W, ...] to `size` = (h, w)."""
  rows = torch_nearest_indices(x.shape[1], size[0])
  cols = torch_nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch `interpolate(mode="bilinear", align_corners=False)` of x [B, H, W, ...]."""
  wy = jnp.asarray(bilinear_matrix(x.shape[1], size[0]))
  wx = jnp.asarray(bilinear_matrix(x.shape[2], size[1]))
  return jnp.einsum("yh,bhw...,xw->byx...", wy, x, wx, precision="highest")


def conv3x3_of_resize_nearest(x: jnp.ndarray, kernel: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """The 3x3 convolution (padding 1, no bias) of `resize_nearest(x, size)`, without upsampling x.

  x [B, h, w, C], kernel [3, 3, C, F] (HWIO) -> [B, H, W, F]. Each output pixel reads 9 upsampled
  pixels, each of them a source pixel, so the 9 taps' products are computed at the source resolution
  (one [C, 9 F] matmul) and the output sums, per tap, the product of the source pixel that tap reads
  (zero outside the image). For a 2x upsampling this is a quarter of the convolution's
  multiplications; the sums are the same up to float rounding.
  """
  b, h, w, c = x.shape
  f = kernel.shape[-1]
  taps = (x @ kernel.transpose(2, 0, 1, 3).reshape(c, 9 * f)).reshape(b, h, w, 9, f)
  taps = jnp.pad(taps, ((0, 0), (0, 1), (0, 1), (0, 0), (0, 0)))  # index h / w: the zero padding

  def source(size_in, size_out, offset):  # the source index that tap `offset` (0..2) of each output reads
    index = np.append(torch_nearest_indices(size_in, size_out), size_in)  # size_in: the zero padding
    return index[np.arange(size_out) + offset - 1]  # output -1 wraps around to the padding too

  out = 0
  for dy in range(3):
    rows = source(h, size[0], dy)[:, None]
    for dx in range(3):
      out = out + taps[:, rows, source(w, size[1], dx)[None, :], 3 * dy + dx]
  return out
