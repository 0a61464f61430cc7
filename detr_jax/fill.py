"""Fill procedure v1: deterministic DETR weights rebuilt with numpy from a seed.

The public reference data was produced by the official PyTorch model filled this way; the
rules (order, distributions, gains) are those of the reference README. numpy only.
"""
import math
from typing import Iterable, Sequence

import numpy as np

_GAINS = (
    (("out_proj.weight", "linear2.weight"), 0.5),
    (("multihead_attn.in_proj_weight",), 2.5),
    (("bbox_attention.q_linear.weight", "bbox_attention.k_linear.weight"), 2.0),
    (("mask_head.adapter1.weight", "mask_head.adapter2.weight", "mask_head.adapter3.weight"), 0.1),
)


def _gain(name: str) -> float:
  for suffixes, gain in _GAINS:
    if name.endswith(suffixes):
      return gain
  return 1.0


def fill_v1(named_shapes: Iterable[tuple[str, Sequence[int]]], seed: int) -> dict[str, np.ndarray]:
  """Returns {official key: float32 array} for keys given in official state_dict order."""
  named_shapes = [(name, tuple(shape)) for name, shape in named_shapes]
  d_model = next((s[1] for n, s in named_shapes if n.endswith("query_embed.weight")), None)
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in named_shapes:
    if name.endswith("running_var"):
      v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("running_mean"):
      v = rng.normal(0.0, 0.1, shape)
    elif len(shape) == 1 and name.endswith("weight"):
      v = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("bias"):
      v = rng.normal(0.0, 0.05, shape)
    elif name.endswith("query_embed.weight"):
      v = rng.normal(0.0, 3.0, shape)
    else:
      fan_in = math.prod(shape[1:])
      v = rng.normal(0.0, _gain(name) / math.sqrt(fan_in), shape)
      if name.endswith("mask_head.lay1.weight"):
        v[:, d_model:, :, :] *= 10000.0
    state[name] = v.astype(np.float32)
  return state
