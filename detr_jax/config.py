"""Model configs (ml_collections) for the released DETR variants.

Field names follow the official command-line arguments (`hidden_dim`, `nheads`, `enc_layers`...),
so a training checkpoint's `args` maps onto them directly.
"""
import ml_collections

# Released checkpoints: name -> overrides of the default (DETR R50, COCO detection).
VARIANTS = {
    "detr_resnet50": {},
    "detr_resnet50_dc5": {"dilation": True},
    "detr_resnet101": {"backbone": "resnet101"},
    "detr_resnet101_dc5": {"backbone": "resnet101", "dilation": True},
    "detr_resnet50_panoptic": {"masks": True, "num_classes": 250},
    "detr_resnet50_dc5_panoptic": {"dilation": True, "masks": True, "num_classes": 250},
    "detr_resnet101_panoptic": {"backbone": "resnet101", "masks": True, "num_classes": 250},
}


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The official defaults (main.py) with `overrides` applied."""
  cfg = ml_collections.ConfigDict(dict(
      backbone="resnet50",          # resnet18 | resnet34 | resnet50 | resnet101
      dilation=False,               # DC5: layer4 at stride 16 with dilated convs
      position_embedding="sine",    # sine | learned
      hidden_dim=256,
      nheads=8,
      enc_layers=6,
      dec_layers=6,
      dim_feedforward=2048,
      dropout=0.1,
      pre_norm=False,
      num_queries=100,
      num_classes=91,               # max class id + 1; logits have num_classes + 1 (no-object last)
      aux_loss=True,
      masks=False,                  # True: the panoptic model (DETRsegm) with pred_masks
  ))
  unknown = set(overrides) - set(cfg.keys())
  if unknown:
    raise KeyError(f"unknown model config keys {sorted(unknown)}; expected some of {sorted(cfg.keys())}")
  cfg.update(overrides)
  return cfg


def variant_config(name: str) -> ml_collections.ConfigDict:
  """Full config (with a `model` field) of a released variant, e.g. "detr_resnet50_dc5"."""
  if name not in VARIANTS:
    raise KeyError(f"unknown model {name!r}; expected one of {', '.join(VARIANTS)}")
  return ml_collections.ConfigDict({"name": name, "model": model_config(**VARIANTS[name])})
