"""Flax modules of DETR; `build_model` turns a model config into a module."""
import dataclasses

import jax.numpy as jnp
import ml_collections

from detr_jax.models.detr import DETR
from detr_jax.models.segmentation import DETRsegm
from detr_jax.models.transformer import TransformerConfig

# Model config fields added after the first release, with the official value that a config saved
# before they existed stands for: the backbone's depth, and how the model computes.
ADDED_FIELD_DEFAULTS = {"backbone_layers": 4, "dtype": "float32", "remat": "none", "attention": "reference"}


def build_model(cfg: ml_collections.ConfigDict, isolate_padding: bool = False, mask_queries: int = 0,
                for_onnx: bool = False):
  """DETR, or DETRsegm when cfg.masks, from a `detr_jax.config.model_config`.

  Inference options that leave the parameters unchanged: isolate_padding (batch-invariant
  backbone features, see `ResNet`); mask_queries (masks for the K likeliest queries, see `DETRsegm`);
  for_onnx (1x1 convolutions as convolutions, which ONNX runtimes run fastest, see `Conv1x1`).
  """
  added = {key: cfg.get(key, default) for key, default in ADDED_FIELD_DEFAULTS.items()}
  dtype = jnp.dtype(added["dtype"])
  architecture = {f.name for f in dataclasses.fields(TransformerConfig)} - {"dtype", "remat", "attention"}
  transformer = TransformerConfig(**{name: cfg[name] for name in architecture}, dtype=dtype,
                                  remat=added["remat"] in ("transformer", "all"), attention=added["attention"])
  detr = DETR(num_classes=cfg.num_classes, num_queries=cfg.num_queries, transformer_config=transformer,
              backbone=cfg.backbone, dilation=cfg.dilation, position_embedding=cfg.position_embedding,
              aux_loss=cfg.aux_loss, isolate_padding=isolate_padding, dtype=dtype,
              remat_backbone=added["remat"] in ("backbone", "all"), backbone_layers=added["backbone_layers"],
              matmul_1x1=not for_onnx)
  return DETRsegm(detr, mask_queries=mask_queries) if cfg.masks else detr
