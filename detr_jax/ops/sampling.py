"""The sampling rules of torch.nn.functional.interpolate, in numpy: which source pixels (and with what
weights) make each output pixel. Used on the host by the data transforms and at trace time by
`detr_jax.ops.resize`.
"""
import numpy as np


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of torch's legacy `mode="nearest"`: min(floor(dst * in / out), in - 1).

  torch computes the scale and the product in float32, so we do too.
  """
  if in_size == out_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation weights of torch bilinear, align_corners=False, no antialias."""
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights.astype(np.float32)
