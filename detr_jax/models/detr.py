"""DETR: backbone -> input_proj -> transformer -> class and box heads (+ aux outputs).

Inputs are NHWC images [B, H, W, 3] (normalised, zero-padded bottom/right) and a padding mask
[B, H, W] (True = padding). Boxes come out as (cx, cy, w, h) in [0, 1] of the unpadded image.

Mixed precision (`dtype` bfloat16, parameters float32): the backbone, input_proj and transformer
compute in bf16 (see their modules); the position encodings, the class and box heads (on the
decoder's float32 output, a negligible share of the work), the box sigmoid and every output are
float32, so the matcher and the losses see float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.architecture import BBOX_MLP_LAYERS
from detr_jax.models.backbone import Conv1x1, ResNet, downsample_mask
from detr_jax.models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from detr_jax.models.transformer import Transformer, TransformerConfig


class MLP(nn.Module):
  """Dense layers with ReLU between them (`layers_0` .. `layers_{n-1}`)."""
  hidden_dim: int
  output_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.output_dim if last else self.hidden_dim, name=f"layers_{i}")(x)
      x = x if last else nn.relu(x)
    return x


class DETR(nn.Module):
  """The detection model. Output dict (L decoder layers, C = num_classes + 1):

  pred_logits [B, Q, C], pred_boxes [B, Q, 4], and with aux_loss aux_pred_logits
  [L-1, B, Q, C], aux_pred_boxes [L-1, B, Q, 4] (decoder layers 0..L-2).
  """
  num_classes: int = 91
  num_queries: int = 100
  transformer_config: TransformerConfig = TransformerConfig()  # hidden_dim: also input_proj, queries, heads
  backbone: str = "resnet50"
  dilation: bool = False
  position_embedding: str = "sine"
  aux_loss: bool = True
  isolate_padding: bool = False  # batch-invariant features (see ResNet); official: False
  dtype: Any = jnp.float32  # compute dtype of the backbone and input_proj (the transformer's is in its config)
  remat_backbone: bool = False  # recompute each residual block in the backward pass
  backbone_layers: int = 4  # the transformer reads layer4 (C5, official) or, with 3, layer3 (C4, stride 16)
  matmul_1x1: bool = True  # 1x1 convolutions as matmuls (XLA) or convolutions (ONNX), see Conv1x1

  @property
  def hidden_dim(self) -> int:
    return self.transformer_config.hidden_dim

  @nn.compact
  def __call__(self, images, mask, deterministic: bool = True, return_internals: bool = False):
    levels = ResNet(self.backbone, self.dilation, self.dtype, self.remat_backbone, self.backbone_layers,
                    self.matmul_1x1, name="backbone")(
        images, mask if self.isolate_padding else None)
    masks = [downsample_mask(mask, f.shape[1:3]) for f in levels]
    for i, (feat, feat_mask) in enumerate(zip(levels, masks)):
      self.sow("intermediates", f"backbone_feat{i}", feat)
      self.sow("intermediates", f"backbone_mask{i}", feat_mask)
    if self.position_embedding == "sine":
      pos_embed = PositionEmbeddingSine(self.hidden_dim // 2, name="position_embedding")
    else:
      pos_embed = PositionEmbeddingLearned(self.hidden_dim // 2, name="position_embedding")
    pos = pos_embed(masks[-1])
    src_proj = Conv1x1(self.hidden_dim, dtype=self.dtype, as_matmul=self.matmul_1x1, name="input_proj")(levels[-1])
    query_embed = nn.Embed(self.num_queries, self.hidden_dim, embedding_init=nn.initializers.normal(1.0),
                           name="query_embed")(jnp.arange(self.num_queries))
    hs, memory = Transformer(self.transformer_config, name="transformer")(
        src_proj, masks[-1], query_embed, pos, deterministic)
    for key, value in (("pos", pos), ("src_proj", src_proj), ("memory", memory), ("hs", hs)):
      self.sow("intermediates", key, value)

    logits = nn.Dense(self.num_classes + 1, name="class_embed")(hs)  # float32, as hs
    boxes = jax.nn.sigmoid(MLP(self.hidden_dim, 4, BBOX_MLP_LAYERS, name="bbox_embed")(hs))
    outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    if self.aux_loss:
      outputs.update(aux_pred_logits=logits[:-1], aux_pred_boxes=boxes[:-1])
    if not return_internals:
      return outputs
    internals: dict[str, Any] = dict(levels=levels, mask=masks[-1], src_proj=src_proj, hs=hs, memory=memory)
    return outputs, internals
