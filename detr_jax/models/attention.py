"""Multi-head attention with the semantics of torch.nn.MultiheadAttention (batch-first here).

Parameters mirror torch's packed layout: `in_proj` holds the q, k and v projections side by side
(kernel [d, 3d], torch rows 0:d, d:2d, 2d:3d), then `out_proj`. q is scaled by head_dim^-0.5
after its bias; dropout acts on each attention weight independently.

Implementations (`implementation`, the config's `model.attention`):
- "reference": the official computation step by step (logits, softmax, dropout on the weights).
- "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation (cuDNN: the fused
  flash-attention kernel of NVIDIA GPUs, bfloat16 only). The key padding mask is exact there: a
  boolean mask, never sequence lengths (the padding of a flattened feature map is not a suffix).
  Neither has dropout on the attention weights, so they refuse to train with dropout > 0.
The logits and the softmax are float32 whatever the compute dtype; the weights meet v in `dtype`.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.errors import UserError

IMPLEMENTATIONS = ("reference", "xla", "cudnn")


def padding_to_attention_mask(key_padding_mask: jnp.ndarray) -> jnp.ndarray:
  """[B, K] True = padding (torch) -> [B, 1, 1, K] True = attend (flax convention)."""
  return ~key_padding_mask[:, None, None, :]


def reference_attention(q, k, v, key_padding_mask, dropout):
  """q [B, Q, h, c] (scaled), k, v [B, K, h, c], key_padding_mask [B, K] or None -> [B, Q, h, c].

  dropout: a function applied to the float32 weights [B, h, Q, K]."""
  heads_first = lambda t: t.transpose(0, 2, 1, 3)  # [B, h, L, c]: plain batched matmuls (ONNX MatMul)
  logits = jnp.matmul(heads_first(q), heads_first(k).swapaxes(-1, -2), preferred_element_type=jnp.float32)
  if key_padding_mask is not None:  # + 0 or + -inf: exact, and cheaper than a select over [B, h, Q, K]
    logits = logits + jnp.where(padding_to_attention_mask(key_padding_mask), 0.0, -jnp.inf)
  weights = dropout(jax.nn.softmax(logits, axis=-1))
  return heads_first(jnp.matmul(weights.astype(v.dtype), heads_first(v)))


def fused_attention(q, k, v, key_padding_mask, implementation):
  """`reference_attention` without dropout through jax.nn.dot_product_attention (same shapes).

  cuDNN wants a mask with the queries' length and, in training, even sequence lengths: the mask
  is broadcast over the queries and an odd length gets one more (masked) key or query."""
  mask = None if key_padding_mask is None else padding_to_attention_mask(key_padding_mask)
  if implementation == "cudnn":
    if jax.default_backend() != "gpu":
      raise UserError(f"model.attention='cudnn' needs an NVIDIA GPU; this backend is {jax.default_backend()}")
    num_queries, num_keys = q.shape[1], k.shape[1]
    pad = lambda t, n: jnp.pad(t, ((0, 0), (0, n % 2), (0, 0), (0, 0)))
    q, k, v = pad(q, num_queries), pad(k, num_keys), pad(v, num_keys)
    if mask is None:
      mask = jnp.ones((q.shape[0], 1, 1, num_keys), bool)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, num_keys % 2)))
    mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation="cudnn")[:, :num_queries]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation=implementation)


def _linear(x, kernel, bias):
  """x [..., d] @ kernel [d, n] + bias [n] as one 2-D matmul (what nn.Dense computes; the ONNX
  export gets a Gemm rather than an Einsum)."""
  return (x.reshape(-1, x.shape[-1]) @ kernel + bias).reshape(*x.shape[:-1], kernel.shape[-1])


class MultiheadAttention(nn.Module):
  """query [B, Q, d], key/value [B, K, d], key_padding_mask [B, K] (True = ignore) -> [B, Q, d].

  dtype: of the projections and the attention matmuls (parameters stay float32)."""
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  implementation: str = "reference"  # IMPLEMENTATIONS

  @nn.compact
  def __call__(self, query, key, value, key_padding_mask: Optional[jnp.ndarray] = None,
               deterministic: bool = True):
    d = query.shape[-1]
    head_dim = d // self.num_heads
    kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d))
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
    is_self_attention = query is key
    query, key, value, kernel, bias = nn.dtypes.promote_dtype(query, key, value, kernel, bias, dtype=self.dtype)
    project = lambda x, rows: _linear(x, kernel[:, rows], bias[rows])
    if is_self_attention:  # one matmul for q and k
      q, k = jnp.split(project(query, slice(0, 2 * d)), 2, axis=-1)
    else:
      q = project(query, slice(0, d))
      k = project(key, slice(d, 2 * d))
    v = project(value, slice(2 * d, 3 * d))
    q = q * head_dim ** -0.5

    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    if self.implementation == "reference":
      dropout = lambda w: nn.Dropout(self.dropout)(w, deterministic=deterministic)
      out = reference_attention(split(q), split(k), split(v), key_padding_mask, dropout)
    else:
      if self.dropout > 0 and not deterministic:
        raise UserError(f"model.attention={self.implementation!r} has no dropout on the attention weights: "
                        "train it with model.dropout=0, or use model.attention='reference'")
      out = fused_attention(split(q), split(k), split(v), key_padding_mask, self.implementation)
    return nn.Dense(d, dtype=self.dtype, name="out_proj")(out.reshape(*out.shape[:-2], d))
