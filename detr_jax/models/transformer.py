"""DETR's encoder-decoder transformer (batch-first: [B, tokens, d_model]).

Post-norm by default (`pre_norm=True` switches to pre-norm, which adds a final encoder norm).
Position encodings are added to queries and keys at every layer, never to values. The decoder
starts from zeros and returns every layer's output through its shared final LayerNorm.
Every module here takes one `TransformerConfig`.
"""
import dataclasses

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


class EncoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, src, pos, padding_mask, deterministic):
    cfg = self.config
    attn = MultiheadAttention(cfg.nheads, cfg.dropout, name="self_attn")
    ffn = lambda x, det: feed_forward(x, cfg.dim_feedforward, cfg.dropout, det)
    norm1, norm2 = layer_norm("norm1"), layer_norm("norm2")
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
    self_attn = MultiheadAttention(cfg.nheads, cfg.dropout, name="self_attn")
    cross_attn = MultiheadAttention(cfg.nheads, cfg.dropout, name="multihead_attn")
    ffn = lambda x, det: feed_forward(x, cfg.dim_feedforward, cfg.dropout, det)
    norm1, norm2, norm3 = layer_norm("norm1"), layer_norm("norm2"), layer_norm("norm3")
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
    for i in range(self.config.enc_layers):
      src = EncoderLayer(self.config, name=f"layers_{i}")(src, pos, padding_mask, deterministic)
      self.sow("intermediates", "encoder_layer_out", src)
    return layer_norm("norm")(src) if self.config.pre_norm else src


class Decoder(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, padding_mask, deterministic):
    norm = layer_norm("norm")
    outputs = []
    for i in range(self.config.dec_layers):
      tgt = DecoderLayer(self.config, name=f"layers_{i}")(tgt, memory, pos, query_pos, padding_mask, deterministic)
      self.sow("intermediates", "decoder_layer_out_prenorm", tgt)
      outputs.append(norm(tgt))
    return jnp.stack(outputs)


class Transformer(nn.Module):
  """src, pos [B, h, w, d]; padding_mask [B, h, w]; query_embed [Q, d].

  Returns hs [L, B, Q, d] (every decoder layer, normed) and memory [B, h, w, d].
  """
  config: TransformerConfig = TransformerConfig()

  @nn.compact
  def __call__(self, src, padding_mask, query_embed, pos, deterministic: bool = True):
    b, h, w, d = src.shape
    src, pos = src.reshape(b, h * w, d), pos.reshape(b, h * w, d)
    padding_mask = padding_mask.reshape(b, h * w)
    memory = Encoder(self.config, name="encoder")(src, pos, padding_mask, deterministic)
    query_pos = jnp.broadcast_to(query_embed[None], (b, *query_embed.shape))
    hs = Decoder(self.config, name="decoder")(
        jnp.zeros_like(query_pos), memory, pos, query_pos, padding_mask, deterministic)
    return hs, memory.reshape(b, h, w, d)
