"""Positional encodings of the stride-32 feature map (NHWC: [B, h, w, d_model])."""
import math

import flax.linen as nn
import jax.numpy as jnp

from detr_jax.architecture import LEARNED_POSITION_CELLS


class PositionEmbeddingSine(nn.Module):
  """Sine encoding of normalised (y, x) coordinates of the unpadded area.

  Channels: the first half encodes y, the second x; within each, sin and cos of the same
  frequency are interleaved. Coordinates are cumulative counts of real cells, divided by the
  count at the last row / column (+1e-6) and scaled by 2*pi.
  """
  num_pos_feats: int = 128
  temperature: float = 10000.0

  def __call__(self, mask):
    not_mask = (~mask).astype(jnp.float32)
    y = jnp.cumsum(not_mask, axis=1)
    x = jnp.cumsum(not_mask, axis=2)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    k = jnp.arange(self.num_pos_feats, dtype=jnp.float32)
    dim_t = self.temperature ** (2 * (k // 2) / self.num_pos_feats)

    def encode(coord):
      angles = coord[..., None] / dim_t
      b, h, w, _ = angles.shape
      return jnp.stack([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1).reshape(b, h, w, -1)

    return jnp.concatenate([encode(y), encode(x)], axis=-1)


class PositionEmbeddingLearned(nn.Module):
  """Learned row/column embeddings (at most 50 cells per axis); x channels first, then y."""
  num_pos_feats: int = 128

  @nn.compact
  def __call__(self, mask):
    _, h, w = mask.shape
    n = LEARNED_POSITION_CELLS
    if h > n or w > n:
      raise ValueError(f"learned position embedding supports at most {n}x{n} cells, got {h}x{w}")
    init = nn.initializers.uniform(1.0)
    row = nn.Embed(n, self.num_pos_feats, embedding_init=init, name="row_embed")(jnp.arange(h))
    col = nn.Embed(n, self.num_pos_feats, embedding_init=init, name="col_embed")(jnp.arange(w))
    pos = jnp.concatenate([jnp.broadcast_to(col[None], (h, w, self.num_pos_feats)),
                           jnp.broadcast_to(row[:, None], (h, w, self.num_pos_feats))], axis=-1)
    return jnp.broadcast_to(pos[None], (mask.shape[0], *pos.shape))
