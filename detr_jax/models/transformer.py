"""DETR's encoder-decoder transformer (batch-first: [B, tokens, d_model]).

Post-norm by default (`pre_norm=True` switches to pre-norm, which adds a final encoder norm).
Position encodings are added to queries and keys at every layer, never to values. The decoder
starts from zeros and returns every layer's output through its shared final LayerNorm.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from detr_jax.models.attention import MultiheadAttention


def layer_norm(name):
  """torch LayerNorm: eps 1e-5, two-pass variance."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


def feed_forward(x, dim_feedforward, dropout, deterministic):
  """linear1 -> ReLU -> dropout -> linear2, created in the calling layer's scope."""
  y = nn.relu(nn.Dense(dim_feedforward, name="linear1")(x))
  y = nn.Dropout(dropout)(y, deterministic=deterministic)
  return nn.Dense(x.shape[-1], name="linear2")(y)


class _LayerSpec(nn.Module):
  """Fields shared by the transformer layers and stacks."""
  num_heads: int
  dim_feedforward: int
  dropout: float
  pre_norm: bool


class EncoderLayer(_LayerSpec):

  @nn.compact
  def __call__(self, src, pos, padding_mask, deterministic):
    attn = MultiheadAttention(self.num_heads, self.dropout, name="self_attn")
    ffn = lambda x, det: feed_forward(x, self.dim_feedforward, self.dropout, det)
    norm1, norm2 = layer_norm("norm1"), layer_norm("norm2")
    drop = lambda x: nn.Dropout(self.dropout)(x, deterministic=deterministic)
    if self.pre_norm:
      y = norm1(src)
      qk = y + pos
      src = src + drop(attn(qk, qk, y, padding_mask, deterministic))
      return src + drop(ffn(norm2(src), deterministic))
    qk = src + pos
    src = norm1(src + drop(attn(qk, qk, src, padding_mask, deterministic)))
    return norm2(src + drop(ffn(src, deterministic)))


class DecoderLayer(_LayerSpec):

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, padding_mask, deterministic):
    self_attn = MultiheadAttention(self.num_heads, self.dropout, name="self_attn")
    cross_attn = MultiheadAttention(self.num_heads, self.dropout, name="multihead_attn")
    ffn = lambda x, det: feed_forward(x, self.dim_feedforward, self.dropout, det)
    norm1, norm2, norm3 = layer_norm("norm1"), layer_norm("norm2"), layer_norm("norm3")
    drop = lambda x: nn.Dropout(self.dropout)(x, deterministic=deterministic)
    if self.pre_norm:
      y = norm1(tgt)
      qk = y + query_pos
      tgt = tgt + drop(self_attn(qk, qk, y, None, deterministic))
      y = norm2(tgt)
      tgt = tgt + drop(cross_attn(y + query_pos, memory + pos, memory, padding_mask, deterministic))
      return tgt + drop(ffn(norm3(tgt), deterministic))
    qk = tgt + query_pos
    tgt = norm1(tgt + drop(self_attn(qk, qk, tgt, None, deterministic)))
    tgt = norm2(tgt + drop(cross_attn(tgt + query_pos, memory + pos, memory, padding_mask, deterministic)))
    return norm3(tgt + drop(ffn(tgt, deterministic)))


class Encoder(_LayerSpec):
  num_layers: int = 6

  @nn.compact
  def __call__(self, src, pos, padding_mask, deterministic):
    for i in range(self.num_layers):
      src = EncoderLayer(self.num_heads, self.dim_feedforward, self.dropout, self.pre_norm, name=f"layers_{i}")(
          src, pos, padding_mask, deterministic)
      self.sow("intermediates", "encoder_layer_out", src)
    return layer_norm("norm")(src) if self.pre_norm else src


class Decoder(_LayerSpec):
  num_layers: int = 6

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, padding_mask, deterministic):
    norm = layer_norm("norm")
    outputs = []
    for i in range(self.num_layers):
      tgt = DecoderLayer(self.num_heads, self.dim_feedforward, self.dropout, self.pre_norm,
                         name=f"layers_{i}")(tgt, memory, pos, query_pos, padding_mask, deterministic)
      self.sow("intermediates", "decoder_layer_out_prenorm", tgt)
      outputs.append(norm(tgt))
    return jnp.stack(outputs)


class Transformer(nn.Module):
  """src, pos [B, h, w, d]; padding_mask [B, h, w]; query_embed [Q, d].

  Returns hs [L, B, Q, d] (every decoder layer, normed) and memory [B, h, w, d].
  """
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dim_feedforward: int = 2048
  dropout: float = 0.1
  pre_norm: bool = False

  @nn.compact
  def __call__(self, src, padding_mask, query_embed, pos, deterministic: bool = True):
    b, h, w, d = src.shape
    src, pos = src.reshape(b, h * w, d), pos.reshape(b, h * w, d)
    padding_mask = padding_mask.reshape(b, h * w)
    spec = dict(num_heads=self.num_heads, dim_feedforward=self.dim_feedforward, dropout=self.dropout,
                pre_norm=self.pre_norm)
    memory = Encoder(num_layers=self.num_encoder_layers, **spec, name="encoder")(
        src, pos, padding_mask, deterministic)
    query_pos = jnp.broadcast_to(query_embed[None], (b, *query_embed.shape))
    hs = Decoder(num_layers=self.num_decoder_layers, **spec, name="decoder")(
        jnp.zeros_like(query_pos), memory, pos, query_pos, padding_mask, deterministic)
    return hs, memory.reshape(b, h, w, d)
