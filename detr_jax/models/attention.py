"""Multi-head attention with the semantics of torch.nn.MultiheadAttention (batch-first here).

Parameters mirror torch's packed layout: `in_proj` holds the q, k and v projections side by side
(kernel [d, 3d], torch rows 0:d, d:2d, 2d:3d), then `out_proj`. q is scaled by head_dim^-0.5
after its bias; dropout acts on each attention weight independently.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def padding_to_attention_mask(key_padding_mask: jnp.ndarray) -> jnp.ndarray:
  """[B, K] True = padding (torch) -> [B, 1, 1, K] True = attend (flax convention)."""
  return ~key_padding_mask[:, None, None, :]


class MultiheadAttention(nn.Module):
  """query [B, Q, d], key/value [B, K, d], key_padding_mask [B, K] (True = ignore) -> [B, Q, d]."""
  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, query, key, value, key_padding_mask: Optional[jnp.ndarray] = None,
               deterministic: bool = True):
    d = query.shape[-1]
    head_dim = d // self.num_heads
    kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d))
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
    if query is key:  # self-attention: one matmul for q and k
      q, k = jnp.split(query @ kernel[:, :2 * d] + bias[:2 * d], 2, axis=-1)
    else:
      q = query @ kernel[:, :d] + bias[:d]
      k = key @ kernel[:, d:2 * d] + bias[d:2 * d]
    v = value @ kernel[:, 2 * d:] + bias[2 * d:]
    q = q * head_dim ** -0.5

    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    logits = jnp.einsum("bqhc,bkhc->bhqk", split(q), split(k))
    if key_padding_mask is not None:
      logits = jnp.where(padding_to_attention_mask(key_padding_mask), logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhc->bqhc", weights, split(v)).reshape(*query.shape[:-1], d)
    return nn.Dense(d, name="out_proj")(out)
