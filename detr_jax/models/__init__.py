"""Flax modules of DETR; `build_model` turns a model config into a module."""
import dataclasses

import ml_collections

from detr_jax.models.detr import DETR
from detr_jax.models.segmentation import DETRsegm
from detr_jax.models.transformer import TransformerConfig


def build_model(cfg: ml_collections.ConfigDict, isolate_padding: bool = False, mask_queries: int = 0):
  """DETR, or DETRsegm when cfg.masks, from a `detr_jax.config.model_config`.

  Inference options that leave the parameters unchanged: isolate_padding (batch-invariant
  backbone features, see `ResNet`); mask_queries (masks for the K likeliest queries, see `DETRsegm`).
  """
  transformer = TransformerConfig(**{f.name: cfg[f.name] for f in dataclasses.fields(TransformerConfig)})
  detr = DETR(num_classes=cfg.num_classes, num_queries=cfg.num_queries, transformer_config=transformer,
              backbone=cfg.backbone, dilation=cfg.dilation, position_embedding=cfg.position_embedding,
              aux_loss=cfg.aux_loss, isolate_padding=isolate_padding)
  return DETRsegm(detr, mask_queries=mask_queries) if cfg.masks else detr
