"""DETR's encoder-decoder transformer (batch-first: [B, tokens, d_model]).

Post-norm by default (`pre_norm=True` switches to pre-norm, which adds a final encoder norm).
Position encodings are added to queries and keys at every layer, never to values. The decoder
starts from zeros and returns every layer's output through its shared final LayerNorm.
Every module here takes one `TransformerConfig`.

Mixed precision (`dtype` bfloat16): the linear layers and attention compute in bf16 and the
tokens between them are bf16; each LayerNorm computes its statistics and normalises in float32
(flax) and hands bf16 on, except the decoder's final norm, whose float32 output feeds the heads.
`remat` recomputes each encoder / decoder layer in the backward pass instead of storing its
activations (same values and gradients, less memory, one more forward pass of the layers).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from detr_jax.models.attention import MultiheadAttention


def layer_norm(name, dtype=jnp.float32):
  """torch LayerNorm: eps 1e-5, two-pass variance; statistics in float32, output in `dtype`."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def feed_forward(x, dim_feedforward, dropout, deterministic, dtype):
  """linear1 -> ReLU -> dropout -> linear2, created in the calling layer's scope."""
  y = nn.relu(nn.Dense(dim_feedforward, dtype=dtype, name="linear1")(x))
  y = nn.Dropout(dropout)(y, deterministic=deterministic)
  return nn.Dense(x.shape[-1], dtype=dtype, name="linear2")(y)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the encoder-decoder; defaults and names are the official arguments'."""
  hidden_dim: int = 256  # d_model: width of every token
  nheads: int = 8
  enc_layers: int = 6
  dec_layers: int = 6
  dim_feedforward: int = 2048
  dropout: float = 0.1  # after attention weights, in the feed-forward block and on each residual branch
  pre_norm: bool = False
  dtype: Any = jnp.float32  # compute dtype (float32 or bfloat16); parameters are float32
  remat: bool = False  # recompute each layer in the backward pass
  attention: str = "reference"  # attention.IMPLEMENTATIONS


def _attention(cfg: TransformerConfig, name: str) -> MultiheadAttention:
  return MultiheadAttention(cfg.nheads, cfg.dropout, cfg.dtype, cfg.attention, name=name)


def _remat(cls, cfg: TransformerConfig, deterministic_argnum: int):
  """`cls`, rematerialised when cfg.remat; its `deterministic` argument (self is 0) is static."""
  return nn.remat(cls, static_argnums=(deterministic_argnum,)) if cfg.remat else cls


class EncoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, src, pos, padding_mask, deterministic):
    cfg = self.config
    attn = _attention(cfg, "self_attn")
    ffn = lambda x, det: feed_forward(x, cfg.dim_feedforward, cfg.dropout, det, cfg.dtype)
    norm1, norm2 = layer_norm("norm1", cfg.dtype), layer_norm("norm2", cfg.dtype)
    drop = lambda x: nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    if cfg.pre_norm:
      y = norm1(src)
      qk = y + pos
      src = src + drop(attn(qk, qk, y, padding_mask, deterministic))
      return src + drop(ffn(norm2(src), deterministic))
    qk = src + pos
    src = norm1(src + drop(attn(qk, qk, src, padding_mask, deterministic)))
    return norm2(src + drop(ffn(src, deterministic)))


class DecoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, padding_mask, deterministic):
    cfg = self.config
    self_attn, cross_attn = _attention(cfg, "self_attn"), _attention(cfg, "multihead_attn")
    ffn = lambda x, det: feed_forward(x, cfg.dim_feedforward, cfg.dropout, det, cfg.dtype)
    norm1, norm2, norm3 = (layer_norm(f"norm{i}", cfg.dtype) for i in (1, 2, 3))
    drop = lambda x: nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    if cfg.pre_norm:
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


class Encoder(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, src, pos, padding_mask, deterministic):
    layer = _remat(EncoderLayer, self.config, 4)
    for i in range(self.config.enc_layers):
      src = layer(self.config, name=f"layers_{i}")(src, pos, padding_mask, deterministic)
      self.sow("intermediates", "encoder_layer_out", src)
    return layer_norm("norm", self.config.dtype)(src) if self.config.pre_norm else src


class Decoder(nn.Module):
  """Returns every layer's output through the shared final norm, in float32 (it feeds the heads)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, padding_mask, deterministic):
    layer = _remat(DecoderLayer, self.config, 6)
    norm = layer_norm("norm")
    outputs = []
    for i in range(self.config.dec_layers):
      tgt = layer(self.config, name=f"layers_{i}")(tgt, memory, pos, query_pos, padding_mask, deterministic)
      self.sow("intermediates", "decoder_layer_out_prenorm", tgt)
      outputs.append(norm(tgt))
    return jnp.stack(outputs)


class Transformer(nn.Module):
  """src, pos [B, h, w, d]; padding_mask [B, h, w]; query_embed [Q, d].

  Returns hs [L, B, Q, d] (every decoder layer, normed; float32) and memory [B, h, w, d] (in the
  compute dtype).
  """
  config: TransformerConfig = TransformerConfig()

  @nn.compact
  def __call__(self, src, padding_mask, query_embed, pos, deterministic: bool = True):
    b, h, w, d = src.shape
    dtype = self.config.dtype
    src, pos = src.reshape(b, h * w, d).astype(dtype), pos.reshape(b, h * w, d).astype(dtype)
    padding_mask = padding_mask.reshape(b, h * w)
    memory = Encoder(self.config, name="encoder")(src, pos, padding_mask, deterministic)
    query_pos = jnp.broadcast_to(query_embed[None], (b, *query_embed.shape)).astype(dtype)
    hs = Decoder(self.config, name="decoder")(
        jnp.zeros_like(query_pos), memory, pos, query_pos, padding_mask, deterministic)
    return hs, memory.reshape(b, h, w, d)
