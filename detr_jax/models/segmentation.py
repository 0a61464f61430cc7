"""The panoptic head: MHAttentionMap and MaskHeadSmallConv on top of a DETR (NHWC).

Mixed precision (the DETR's `dtype` bfloat16): the linear layers and convolutions compute in bf16;
the attention maps' logits and softmax, and each GroupNorm's statistics and normalisation, are
float32; pred_masks is float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.architecture import MASK_HEAD_GROUPS, mask_head_widths
from detr_jax.models.backbone import Conv1x1
from detr_jax.models.detr import DETR
from detr_jax.ops.resize import resize_nearest


class MHAttentionMap(nn.Module):
  """Attention maps of each query over the encoder memory.

  q [B, Q, d], memory [B, h, w, d], mask [B, h, w] (True = padding) -> [B, Q, heads, h, w].
  The softmax runs jointly over (heads, h, w); padded cells are exactly 0.
  """
  hidden_dim: int
  num_heads: int
  dtype: Any = jnp.float32  # of q_linear, k_linear and the logits' matmul; the softmax is float32

  @nn.compact
  def __call__(self, q, memory, mask):
    head_dim = self.hidden_dim // self.num_heads
    q = nn.Dense(self.hidden_dim, dtype=self.dtype, name="q_linear")(q)
    k = nn.Dense(self.hidden_dim, dtype=self.dtype, name="k_linear")(memory)  # a 1x1 conv over the map
    qh = q.reshape(*q.shape[:2], self.num_heads, head_dim) * head_dim ** -0.5
    kh = k.reshape(*k.shape[:3], self.num_heads, head_dim)
    weights = jnp.einsum("bqnc,bhwnc->bqnhw", qh, kh, preferred_element_type=jnp.float32)
    weights = jnp.where(mask[:, None, None], -jnp.inf, weights)
    b, nq = weights.shape[:2]
    return jax.nn.softmax(weights.reshape(b, nq, -1), axis=-1).reshape(weights.shape)


class GroupNorm(nn.Module):
  """torch GroupNorm(MASK_HEAD_GROUPS) of x [N, h, w, C]: eps 1e-5, two-pass variance (the mean of
  the squared deviations), statistics and normalisation in float32, output in `dtype`; parameters
  `scale` and `bias` [C], as nn.GroupNorm's. The normalisation is one multiply-add per channel
  (x * s + t, s = scale / std, t = bias - mean * s). Written out rather than nn.GroupNorm(
  use_fast_variance=False), which jax2onnx exports with a per-group constant check and group-wise
  broadcasts: onnxruntime's all-query mask head took 1.8 s longer (detr_jax/onnx_runtime.py)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, channels = x.shape[0], x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    x = x.astype(jnp.float32)
    groups = x.reshape(*x.shape[:-1], MASK_HEAD_GROUPS, channels // MASK_HEAD_GROUPS)
    axes = (*range(1, x.ndim - 1), x.ndim)  # h, w and the channels of a group
    mean = groups.mean(axes, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.square(groups - mean).mean(axes, keepdims=True) + 1e-5)
    s = inv_std * scale.reshape(MASK_HEAD_GROUPS, -1)  # [N, 1, 1, groups, C / groups]
    t = bias.reshape(MASK_HEAD_GROUPS, -1) - mean * s
    per_channel = lambda a: a.reshape(n, *(1,) * (x.ndim - 2), channels)
    return (x * per_channel(s) + per_channel(t)).astype(self.dtype)


class SharedPlusPerQueryConv(nn.Module):
  """The 3x3 conv (padding 1, with bias) of the channel concatenation [shared, per_query], where
  `shared` [B, h, w, C1] is the same for every query and per_query is [B * Q, h, w, C2]: the conv is
  linear, so the shared channels' share is computed once per image and added to each query's.
  Parameters are those of nn.Conv(features, (3, 3)) on C1 + C2 channels. -> [B * Q, h, w, features].
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, shared, per_query):
    c1 = shared.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c1 + per_query.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    shared, per_query, kernel, bias = nn.dtypes.promote_dtype(shared, per_query, kernel, bias, dtype=self.dtype)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    common = conv(shared, kernel[:, :, :c1]) + bias
    y = conv(per_query, kernel[:, :, c1:])
    b = shared.shape[0]
    return (y.reshape(b, -1, *y.shape[1:]) + common[:, None]).reshape(y.shape)


class MaskHeadSmallConv(nn.Module):
  """FPN-style conv head producing one mask logit map per query at stride 4.

  x [B, h, w, d] (input_proj of layer4), bbox_mask [B, Q, heads, h, w], fpns = [layer3, layer2,
  layer1] features -> [B, Q, H4, W4] (float32).
  """
  hidden_dim: int
  dtype: Any = jnp.float32  # of the convolutions and activations

  @nn.compact
  def __call__(self, x, bbox_mask, fpns):
    b, nq, heads, h, w = bbox_mask.shape
    dims = mask_head_widths(self.hidden_dim, heads)
    conv = lambda features, name: nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)
    bbox_mask = bbox_mask.transpose(0, 1, 3, 4, 2).reshape(b * nq, h, w, heads)

    def gn_relu(x, k):
      x = GroupNorm(self.dtype, name=f"gn{k}")(x)
      self.sow("intermediates", f"mask_head_gn{k}", x)
      return nn.relu(x)

    conv_gn_relu = lambda x, k: gn_relu(conv(dims[k - 1], f"lay{k}")(x), k)
    # lay1 reads [x broadcast to every query, the query's attention maps]
    x = conv_gn_relu(gn_relu(SharedPlusPerQueryConv(dims[0], self.dtype, name="lay1")(x, bbox_mask), 1), 2)
    for k, fpn in enumerate(fpns, start=1):
      adapted = Conv1x1(dims[k], dtype=self.dtype, name=f"adapter{k}")(fpn)
      self.sow("intermediates", f"mask_head_adapter{k}", adapted)
      fh, fw = adapted.shape[1:3]
      x = resize_nearest(x, (fh, fw)).reshape(b, nq, fh, fw, -1) + adapted[:, None]
      x = conv_gn_relu(x.reshape(b * nq, fh, fw, -1), k + 2)
    x = conv(1, "out_lay")(x)
    return x.reshape(b, nq, *x.shape[1:3]).astype(jnp.float32)


class DETRsegm(nn.Module):
  """DETR with the panoptic mask head; adds pred_masks [B, Q, H4, W4] (stride-4 logits).

  mask_queries K > 0 (inference): masks only for the K queries most likely to be kept by the
  panoptic post-processing (highest top score among those whose top class is not no-object);
  pred_masks is then [B, K, H4, W4] and mask_query_index [B, K] says which queries they are. The
  mask head treats queries independently, so these masks equal the full model's.
  """
  detr: DETR
  mask_queries: int = 0

  @nn.compact
  def __call__(self, images, mask, deterministic: bool = True):
    outputs, internals = self.detr(images, mask, deterministic, return_internals=True)
    hidden_dim, num_heads = self.detr.hidden_dim, self.detr.transformer_config.nheads
    queries = internals["hs"][-1]
    if self.mask_queries:
      probs = jax.nn.softmax(outputs["pred_logits"], axis=-1)
      thing_or_stuff = probs.argmax(-1) != probs.shape[-1] - 1
      _, index = jax.lax.top_k(jnp.where(thing_or_stuff, probs.max(-1), -1.0), self.mask_queries)
      queries = jnp.take_along_axis(queries, index[..., None], axis=1)
      outputs = {**outputs, "mask_query_index": index}
    bbox_mask = MHAttentionMap(hidden_dim, num_heads, self.detr.dtype, name="bbox_attention")(
        queries, internals["memory"], internals["mask"])
    self.sow("intermediates", "bbox_mask", bbox_mask)
    levels = internals["levels"]
    masks = MaskHeadSmallConv(hidden_dim, self.detr.dtype, name="mask_head")(
        internals["src_proj"], bbox_mask, [levels[2], levels[1], levels[0]])
    return {**outputs, "pred_masks": masks}
