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


def training_config(**overrides) -> ml_collections.ConfigDict:
  """Training fields with the official recipe's values (SPEC section 6.1), `overrides` applied."""
  cfg = ml_collections.ConfigDict(dict(
      seed=42,
      total_steps=1000,
      global_batch_size=64,       # split over all devices of all hosts
      eval_batch_size=0,          # 0: same as global_batch_size
      lr=1e-4,
      lr_backbone=1e-5,           # <= 0 freezes the whole backbone
      weight_decay=1e-4,
      clip_max_norm=0.1,
      lr_drop_step=0,             # lr x0.1 from this step on (0: never)
      warmup_steps=0,
      freeze_detr=False,          # panoptic stage 2: train only bbox_attention + mask_head
      freeze_stem=True,           # conv1 + layer1 frozen (official); False when training from scratch
      init_from="",               # converted checkpoint (or backbone-only) to start from
      max_objects=100,            # targets are padded to this many objects per image
      log_every=50,               # 0 disables
      eval_every=0,
      checkpoint_every=1000,
      batch_invariant_eval=False,  # evaluate with the padding isolated (see models.backbone.ResNet)
      num_pictures=8,
      picture_threshold=0.5,
      progress=True,
      compilation_cache_dir="~/.cache/detr_jax/xla",  # persistent XLA cache ("" disables)
      loss=ml_collections.ConfigDict(dict(
          eos_coef=0.1, set_cost_class=1.0, set_cost_bbox=5.0, set_cost_giou=2.0,
          bbox_loss_coef=5.0, giou_loss_coef=2.0, mask_loss_coef=1.0, dice_loss_coef=1.0,
          matcher_backend="scipy")),
  ))
  cfg.update(overrides)
  return cfg


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """Data settings: which source, the official transforms, padding buckets and loader workers.

  name: coco (`coco_path` in the official layout), coco_panoptic (+ `coco_panoptic_path`),
  coco_custom (`train_images`/`train_json`/`val_images`/`val_json`), tfds (`tfds_name`,
  `tfds_data_dir`), synthetic.
  """
  cfg = ml_collections.ConfigDict(dict(
      name="coco",
      coco_path="",
      coco_panoptic_path="",
      masks=False,                  # load instance masks (needed by models with masks=True)
      train_images="", train_json="", val_images="", val_json="",
      tfds_name="coco/2017", tfds_data_dir="",
      augment=True,                 # official train augmentation; False: none (and no val resize)
      scales=tuple(range(480, 801, 32)),
      max_size=1333,
      crop_resize=(400, 500, 600),
      crop_size=(384, 600),
      val_size=800,
      bucket_sides=(640, 800, 1088, 1344),  # each padded side is one of these
      workers=-1,                   # grain worker processes; -1: min(8, CPUs); 0: threads only
  ))
  cfg.update(overrides)
  return cfg


def coco_training_config(variant: str, epochs: int = 500, lr_drop_epoch: int = 400, **overrides):
  """The official recipe (SPEC 6.1) for `variant` on COCO, in steps of the global batch 64."""
  steps_per_epoch = 118_287 // 64  # train2017 images, drop_last
  cfg = training_config(total_steps=epochs * steps_per_epoch, lr_drop_step=lr_drop_epoch * steps_per_epoch,
                        checkpoint_every=steps_per_epoch, eval_every=10 * steps_per_epoch, log_every=100)
  cfg.name = variant
  cfg.model = model_config(**VARIANTS[variant])
  cfg.dataset = dataset_config(name="coco_panoptic" if cfg.model.num_classes == 250 else "coco",
                               masks=cfg.model.masks)
  cfg.update(overrides)
  return cfg


def panoptic_training_config(variant: str, stage: str) -> ml_collections.ConfigDict:
  """The two-stage panoptic recipe (SPEC 6.1) for a panoptic `variant` on COCO panoptic.

  stage "boxes": a box-only DETR with the panoptic class set (250), 300 epochs, lr drop at 200.
  stage "masks": the panoptic model, initialised from the stage-1 model (`init_from`), with the
  detector frozen: only bbox_attention and the mask head train, 25 epochs, lr drop at 15.
  """
  if stage == "boxes":
    cfg = coco_training_config(variant, epochs=300, lr_drop_epoch=200)
    cfg.model.masks = cfg.dataset.masks = False
    return cfg
  if stage == "masks":
    return coco_training_config(variant, epochs=25, lr_drop_epoch=15, freeze_detr=True)
  raise ValueError(f"unknown panoptic stage {stage!r}; expected 'boxes' or 'masks'")
