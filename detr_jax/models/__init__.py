"""Flax modules of DETR; `build_model` turns a model config into a module."""
import ml_collections

from detr_jax.models.detr import DETR
from detr_jax.models.segmentation import DETRsegm


def build_model(cfg: ml_collections.ConfigDict, isolate_padding: bool = False, mask_queries: int = 0):
  """DETR, or DETRsegm when cfg.masks, from a `detr_jax.config.model_config`.

  Inference options that leave the parameters unchanged: isolate_padding (batch-invariant
  backbone features, see `ResNet`); mask_queries (masks for the K likeliest queries, see `DETRsegm`).
  """
  detr = DETR(num_classes=cfg.num_classes, num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim,
              num_heads=cfg.nheads, enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
              dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout, pre_norm=cfg.pre_norm,
              backbone=cfg.backbone, dilation=cfg.dilation,
              position_embedding=cfg.position_embedding, aux_loss=cfg.aux_loss,
              isolate_padding=isolate_padding)
  return DETRsegm(detr, mask_queries=mask_queries) if cfg.masks else detr
