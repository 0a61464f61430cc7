"""Configs (ml_collections) for the released DETR variants and their training, and config files.

The recipe lives here, each value with its reason: `model_config` (the architecture),
`training_config` (optimizer, loss and batch: the official defaults), `dataset_config` (the official
augmentation and padding buckets) and `coco_training_config` (the schedule in epochs of COCO); the
files in configs/ pick a variant and a schedule from these. Field names follow the official
command-line arguments (`hidden_dim`, `nheads`, `enc_layers`...), so a training checkpoint's `args`
maps onto them directly. `load_config` reads a config file
(configs/*.py) with command-line overrides (`--config.KEY=VALUE`) and checks the values; every
mistake there is a one-line `UserError`.
"""
import ast
import difflib
import importlib.machinery
import inspect
import os
import re
import types
from typing import Iterator, Sequence

import ml_collections
from absl import flags as absl_flags

from detr_jax.architecture import MASK_HEAD_GROUPS, RESNET_SPECS, mask_head_widths
from detr_jax.errors import UserError

# Values a config can choose from (checked by `check_config`).
BACKBONES = tuple(RESNET_SPECS)  # resnet18, resnet34, resnet50, resnet101
POSITION_EMBEDDINGS = ("sine", "learned")
DATASETS = ("synthetic", "coco", "coco_panoptic", "coco_custom", "tfds")
MATCHER_BACKENDS = ("scipy", "optax")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "backbone", "transformer", "all")
ATTENTION = ("reference", "xla", "cudnn")
COCO_EVALUATORS = ("hotcoco", "pycocotools")  # the same 12 COCO numbers; pycocotools is the reference
COCO_TRAIN_IMAGES = 118_287  # train2017

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
      backbone="resnet50",          # BACKBONES
      dilation=False,               # DC5: layer4 at stride 16 with dilated convs
      backbone_layers=4,            # 3: the transformer reads layer3 (stride 16, no layer4; not official, no panoptic)
      position_embedding="sine",    # POSITION_EMBEDDINGS
      hidden_dim=256,               # transformer width (the paper's base model, as every released one)
      nheads=8,
      enc_layers=6,                 # paper ablation (300 epochs): 0 layers 36.7 AP, 3: 40.1, 6: 40.6, 12: 41.6
      dec_layers=6,
      dim_feedforward=2048,
      dropout=0.1,                  # in every transformer layer
      pre_norm=False,               # post-norm, as the released models
      num_queries=100,              # the most objects predicted per image
      num_classes=91,               # max class id + 1; logits have num_classes + 1 (no-object last)
      aux_loss=True,                # the loss on every decoder layer's output too (the paper found it helps)
      masks=False,                  # True: the panoptic model (DETRsegm) with pred_masks
      # How the model computes (DTYPES, REMAT, ATTENTION; see detr_jax.models): none of these
      # changes the parameters, which stay float32.
      dtype="float32",              # bfloat16: convs, matmuls and attention in bf16, norms/softmax/heads/outputs in float32
      remat="none",                 # recompute the backbone's blocks and/or the transformer's layers in the backward pass
      attention="reference",        # xla / cudnn: jax.nn.dot_product_attention (no attention dropout: dropout must be 0 to train)
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
  """Training fields with the official recipe's values (docs/parity.md §12), `overrides` applied."""
  cfg = ml_collections.ConfigDict(dict(
      seed=42,                    # official (the official code adds the process index)
      total_steps=1000,
      global_batch_size=64,       # official: 64 images a step (16 GPUs x 4); split over all devices and hosts
      eval_batch_size=0,          # 0: same as global_batch_size
      lr=1e-4,                    # AdamW; kept for any batch size: linear lr scaling does not train (detr#48)
      lr_backbone=1e-5,           # 10x less for the ImageNet-pretrained backbone; <= 0 freezes the whole backbone
      weight_decay=1e-4,          # AdamW, on every parameter (biases and norms too), as the official code
      clip_max_norm=0.1,          # clips the global L2 norm of the gradients, as the official code
      lr_drop_step=0,             # lr x0.1 from this step on (0: never), warm-up included
      warmup_steps=0,             # lr rises linearly from 0 over the first warmup_steps steps
      freeze_detr=False,          # panoptic stage 2: train only bbox_attention + mask_head
      freeze_stem=True,           # conv1 + layer1 frozen (official); False when training from scratch
      init_from="",               # converted checkpoint (or backbone-only) to start from
      max_objects=100,            # targets are padded to this many objects per image
      grad_accum_steps=1,         # micro-batches per update: k of global_batch_size / k images each
      ema_decay=0.0,              # exponential moving average of the parameters (0: off); evaluated when on
      log_every=50,               # 0 disables
      eval_every=0,
      checkpoint_every=1000,
      batch_invariant_eval=False,  # evaluate with the padding isolated (see models.backbone.ResNet)
      num_pictures=8,
      picture_threshold=0.5,
      progress=True,
      tensorboard=True,           # TensorBoard event files in WORKDIR/tensorboard (metrics.jsonl is always written)
      coco_evaluator="hotcoco",   # COCO_EVALUATORS: hotcoco gives pycocotools' 12 numbers bit for bit, faster
      best_metric="",             # e.g. "eval/AP": keep the best checkpoint by it in WORKDIR/best ("" off)
      early_stopping_evals=0,     # stop after this many evaluations without a better best_metric (0: never)
      compilation_cache_dir="~/.cache/detr_jax/xla",  # persistent XLA cache ("" disables)
      # The official loss (docs/parity.md §8): matching costs and loss weights L1 5, GIoU 2, class 1 (the paper's
      # ablation: class + L1 35.8 AP, class + GIoU 39.9, all three 40.6); the no-object class weighs
      # eos_coef, since most of the queries match nothing.
      loss=ml_collections.ConfigDict(dict(
          eos_coef=0.1, set_cost_class=1.0, set_cost_bbox=5.0, set_cost_giou=2.0,
          bbox_loss_coef=5.0, giou_loss_coef=2.0, mask_loss_coef=1.0, dice_loss_coef=1.0,
          matcher_backend="scipy")),  # MATCHER_BACKENDS; scipy: exact Hungarian on the host, as the official
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
      name="coco",                  # DATASETS
      coco_path="",
      coco_panoptic_path="",
      masks=False,                  # load instance masks (needed by models with masks=True)
      train_images="", train_json="", val_images="", val_json="",
      tfds_name="coco/2017", tfds_data_dir="",
      augment=True,                 # official train augmentation; False: none
      # The official train augmentation: flip, then either a resize of the shorter side to one of
      # `scales` (the longer at most max_size), or a resize to one of crop_resize, a random crop of
      # crop_size (min, max) per side, then the same resize: objects at many scales and positions.
      scales=tuple(range(480, 801, 32)),
      max_size=1333,
      crop_resize=(400, 500, 600),
      crop_size=(384, 600),
      val_resize=True,              # the official val resize (below); False: images as they are
      val_size=800,                 # validation: the shorter side resized to 800 (max_size for the longer)
      bucket_sides=(640, 800, 1088, 1344),  # each padded side is one of these: few shapes, few compilations
      workers=-1,                   # grain worker processes; -1: min(8, CPUs); 0: threads only
  ))
  cfg.update(overrides)
  return cfg


def coco_training_config(variant: str, epochs: int = 500, lr_drop_epoch: int = 400, **overrides):
  """The official recipe (docs/parity.md §12.2) for `variant` on COCO: global batch 64, schedule in epochs.

  The released models trained 500 epochs with the lr dropped x0.1 at 400 (42.0 AP for R50; the
  paper's 300/200 gives 40.6). A checkpoint every epoch (as the official code) and an evaluation
  every 10 (the official code evaluates every epoch; fewer saves time).

  total_steps, lr_drop_step, checkpoint_every and eval_every are references to the number of
  steps per epoch, which follows global_batch_size: --config.global_batch_size=32 doubles them
  (until `load_config` resolves them), and setting one of them leaves the others as they are.
  """
  global_batch_size = ml_collections.FieldReference(64)
  steps_per_epoch = COCO_TRAIN_IMAGES // global_batch_size  # drop_last
  epochs_in_steps = lambda n: n * steps_per_epoch  # a new reference each, set independently
  cfg = training_config(global_batch_size=global_batch_size, total_steps=epochs_in_steps(epochs),
                        lr_drop_step=epochs_in_steps(lr_drop_epoch), checkpoint_every=epochs_in_steps(1),
                        eval_every=epochs_in_steps(10), log_every=100)
  cfg.name = variant
  cfg.model = model_config(**VARIANTS[variant])
  cfg.dataset = dataset_config(name="coco_panoptic" if cfg.model.num_classes == 250 else "coco",
                               masks=cfg.model.masks)
  cfg.update(overrides)
  return cfg


def panoptic_training_config(variant: str, stage: str) -> ml_collections.ConfigDict:
  """The two-stage panoptic recipe (docs/parity.md §12.3) for a panoptic `variant` on COCO panoptic.

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
  raise UserError(f"unknown panoptic stage {stage!r}; expected 'boxes' or 'masks'")


# Checked by `check_config` where the config has them (a sequence: each of its numbers).
NON_NEGATIVE = ("total_steps", "ema_decay", "early_stopping_evals", "lr_drop_step", "warmup_steps", "eval_batch_size", "log_every", "eval_every",
                "checkpoint_every", "num_pictures", "lr", "weight_decay", "clip_max_norm", "model.enc_layers",
                "loss.eos_coef", "loss.set_cost_class", "loss.set_cost_bbox", "loss.set_cost_giou",
                "loss.bbox_loss_coef", "loss.giou_loss_coef", "loss.mask_loss_coef", "loss.dice_loss_coef",
                "dataset.num_train", "dataset.num_val", "dataset.num_objects")
POSITIVE = ("global_batch_size", "grad_accum_steps", "max_objects", "model.hidden_dim", "model.nheads", "model.dec_layers",
            "model.dim_feedforward", "model.num_queries", "dataset.scales", "dataset.max_size",
            "dataset.crop_resize", "dataset.crop_size", "dataset.val_size", "dataset.bucket_sides",
            "dataset.image_size", "dataset.object_size")
AT_MOST_ONE = ("picture_threshold", "ema_decay", "dataset.object_size")
CHOICES = {"model.backbone": BACKBONES, "model.position_embedding": POSITION_EMBEDDINGS,
           "dataset.name": DATASETS, "loss.matcher_backend": MATCHER_BACKENDS,
           "coco_evaluator": COCO_EVALUATORS, "model.dtype": DTYPES, "model.remat": REMAT,
           "model.attention": ATTENTION}
MIN_MAX = ("dataset.crop_size", "dataset.num_objects", "dataset.object_size")  # (min, max): min <= max


def load_config(spec: str, overrides: Sequence[tuple[str, str | None]] = ()) -> ml_collections.ConfigDict:
  """The config of file `spec` with `overrides` (see `apply_overrides`) applied, its references
  resolved (plain values from here on), checked by `check_config` and locked (no new fields)."""
  config = load_config_file(spec)
  apply_overrides(config, overrides)
  check_config(config)  # first: a zero global_batch_size would break the steps per epoch
  config = config.copy_and_resolve_references()
  config.lock()
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """get_config() of a config file; `spec` is FILE, or FILE:ARG for get_config(ARG) (a panoptic stage)."""
  path, has_arg, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config file {path} {'is not a file' if os.path.exists(path) else 'does not exist'}")
  module = types.ModuleType("config_file")
  module.__file__ = path
  try:
    importlib.machinery.SourceFileLoader(module.__name__, path).exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {path}, line {e.lineno}: {e.msg}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise UserError(f"config file {path} defines no get_config()")
  params = inspect.signature(get_config).parameters.values()
  if has_arg and not params:
    raise UserError(f"config file {path} takes no argument, got {spec}")
  required = [p.name for p in params if p.default is inspect.Parameter.empty]
  if required and not has_arg:
    raise UserError(f"config file {path} needs an argument: {path}:{required[0].upper()}")
  return get_config(arg) if has_arg else get_config()


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
  """Separates the overrides `--config.KEY=VALUE` from the other command-line arguments.

  Returns (the other arguments, [(KEY, VALUE)]). Also accepted: `--config.KEY VALUE` (the next
  argument, unless it starts with "-" and is not a number), a bare `--config.KEY` (VALUE None: a
  boolean set to true) and `--noconfig.KEY` (VALUE "false").
  """
  pattern = re.compile(r"--?(no)?config\.([^=]+)(?:=(.*))?", re.DOTALL)
  is_value = lambda word: not word.startswith("-") or re.fullmatch(r"-\.?\d.*", word) is not None
  rest, overrides, i = [], [], 0
  while i < len(args):
    match = pattern.fullmatch(args[i])
    i += 1
    if not match:
      rest.append(args[i - 1])
      continue
    negated, key, value = match.groups()
    if negated:
      if value is not None:
        raise UserError(f"--noconfig.{key} takes no value; use --config.{key}={value}")
      value = "false"
    elif value is None and i < len(args) and is_value(args[i]):
      value, i = args[i], i + 1
    overrides.append((key, value))
  return rest, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str | None]]) -> None:
  """Sets each (KEY, VALUE) of `overrides` in `config`, in order.

  KEY is the dotted path of an existing field ("model.hidden_dim"); VALUE is parsed as the field's
  type (a tuple as a Python literal, "(640, 800)"); None sets a boolean field to true.
  """
  for key, text in overrides:
    names = key.split(".")
    node = config
    for depth, name in enumerate(names):
      if not isinstance(node, ml_collections.ConfigDict):
        raise UserError(f"config key {key}: {'.'.join(names[:depth])} is a value, not a section")
      if name not in node:
        _unknown_key(config, names, depth, node)
      if depth < len(names) - 1:
        node = node[name]
    node[names[-1]] = _parse_value(key, node.get_type(names[-1]), node[names[-1]], text)


def _unknown_key(config: ml_collections.ConfigDict, names: list[str], depth: int,
                 section: ml_collections.ConfigDict):
  """Raises the error for the unknown key `names` (its part at `depth`, absent from `section`),
  suggesting the closest fields (or sections) in that section, else fields of a close name elsewhere."""
  key, before, after = ".".join(names), names[:depth], names[depth + 1:]
  is_section = lambda name: isinstance(section[name], ml_collections.ConfigDict)
  same_kind = [name for name in section.keys() if is_section(name) == bool(after)]
  near = [".".join(before + [match] + after) for match in difflib.get_close_matches(names[depth], same_kind)]
  if not near:
    leaves = list(_field_paths(config))
    for match in difflib.get_close_matches(names[-1], {path.rsplit(".", 1)[-1] for path in leaves}):
      near += [path for path in leaves if path.rsplit(".", 1)[-1] == match]
  if near:
    raise UserError(f"unknown config key {key}; did you mean {' or '.join(near[:3])}?")
  where = f"section {'.'.join(before)}" if before else "the config"
  raise UserError(f"unknown config key {key}; {where} has {', '.join(section.keys())}")


def _parse_value(key: str, field_type: type, default, text: str | None):
  """`text` as a value of `field_type`, for the field `key` whose current value is `default`."""
  if field_type is bool and text is None:
    return True
  if text is None:
    raise UserError(f"config key {key} needs a value: --config.{key}=VALUE")
  if isinstance(field_type, type) and issubclass(field_type, ml_collections.ConfigDict):
    first = next(iter(default.keys()))
    raise UserError(f"config key {key} is a section; set its fields, e.g. --config.{key}.{first}")
  if field_type is str:
    return text
  if field_type in (tuple, list):
    return _parse_sequence(key, default, text)
  parser, expected = {bool: (absl_flags.BooleanParser(), "true or false"),
                      int: (absl_flags.IntegerParser(), "an integer"),
                      float: (absl_flags.FloatParser(), "a number")}.get(field_type, (None, None))
  if parser is None:  # a field without a type (None by default): a Python literal, or else a string
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  try:
    return parser.parse(text)
  except ValueError:
    raise UserError(f"config key {key}: {text!r} is not {expected} (default {default!r})") from None


def _parse_sequence(key: str, default, text: str) -> tuple:
  """A tuple from a Python literal ("(640, 800)", "640, 800" or "640"), with the element type of `default`."""
  error = UserError(f"config key {key}: {text!r} is not a tuple like {default!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise error from None
  value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  allowed = {type(v) for v in default}  # the default's element types (a bool is no int); an int is a float too
  if allowed == {float}:
    allowed.add(int)
  if not value or (allowed and any(type(v) not in allowed for v in value)):
    raise error
  return tuple(float(v) for v in value) if float in allowed else value


def _lookup(config: ml_collections.ConfigDict, key: str):
  """The value at dotted `key`, None where the config has no such field."""
  node = config
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return None
    node = node[name]
  return node


def _numbers(value) -> list:
  """The numbers of a field's value: itself, or every number of a (nested) sequence."""
  if isinstance(value, (tuple, list)):
    return [number for item in value for number in _numbers(item)]
  return [value]


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
  """Raises a UserError for a value that cannot work, in any section: a negative step count, rate,
  loss weight or size (POSITIVE, NON_NEGATIVE, AT_MOST_ONE, MIN_MAX), an unknown choice (CHOICES), a
  model the modules cannot build (`_check_model`), a global or eval batch that does not split over
  `device_count` devices, or a device's share that does not split into grad_accum_steps micro-batches."""
  for key in POSITIVE + NON_NEGATIVE + AT_MOST_ONE:
    value = _lookup(config, key)
    if value is None:
      continue
    for number in _numbers(value):
      if number < 0 or (number == 0 and key in POSITIVE) or (number > 1 and key in AT_MOST_ONE):
        bound = "<= 1" if number > 1 else "> 0" if key in POSITIVE else ">= 0"
        raise UserError(f"config key {key} must be {bound}, got {value}")
  for key in MIN_MAX:
    value = _lookup(config, key)
    if value is not None and (len(value) != 2 or value[0] > value[1]):
      raise UserError(f"config key {key} must be (min, max) with min <= max, got {value}")
  dropout = _lookup(config, "model.dropout")
  if dropout is not None and not 0 <= dropout < 1:
    raise UserError(f"config key model.dropout must be >= 0 and < 1, got {dropout}")
  if _lookup(config, "dataset.workers") is not None and config.dataset.workers < -1:
    raise UserError(f"config key dataset.workers must be >= 0, or -1 for min(8, CPUs), got {config.dataset.workers}")
  for key, choices in CHOICES.items():
    value = _lookup(config, key)
    if value is not None and value not in choices:
      raise UserError(f"config key {key} is {value!r}; expected one of {', '.join(choices)}")
  if "model" in config:
    _check_model(config.model)
  if device_count:
    eval_batch_size = config.eval_batch_size or config.global_batch_size
    for kind, batch in (("global", config.global_batch_size), ("eval", eval_batch_size)):
      if batch % device_count:
        raise UserError(f"{kind} batch size {batch} must be divisible by the number of devices ({device_count})")
    per_device, accum = config.global_batch_size // device_count, config.get("grad_accum_steps", 1)
    if per_device % accum:
      raise UserError(f"config key grad_accum_steps ({accum}) must divide the images per device (global batch size "
                      f"{config.global_batch_size} / {device_count} devices = {per_device})")


def _check_model(model: ml_collections.ConfigDict) -> None:
  """Raises a UserError for an architecture the modules cannot build (see detr_jax.architecture)."""
  d, heads = model.hidden_dim, model.nheads
  if d % heads:
    raise UserError(f"config key model.hidden_dim ({d}) must be divisible by model.nheads ({heads})")
  per_axis = 2 if model.position_embedding == "learned" else 4  # half the channels for y, half for x (sin/cos pairs)
  if d % per_axis:
    raise UserError(f"config key model.hidden_dim ({d}) must be a multiple of {per_axis} for the "
                    f"{model.position_embedding} position embedding")
  if model.dilation and not RESNET_SPECS[model.backbone][1]:
    raise UserError(f"config key model.dilation (DC5) needs a bottleneck backbone (resnet50, resnet101), "
                    f"not {model.backbone}")
  layers = model.get("backbone_layers", 4)
  if layers not in (3, 4):
    raise UserError(f"config key model.backbone_layers must be 4 (official) or 3 (the transformer reads layer3), "
                    f"got {layers!r}")
  if layers != 4 and (model.dilation or model.masks):
    raise UserError(f"config key model.backbone_layers={layers} leaves out layer4, which model.dilation (DC5) and "
                    f"model.masks (the panoptic head) need: use 4")
  attention = model.get("attention", "reference")
  if attention != "reference" and model.dropout > 0:
    raise UserError(f"config key model.attention={attention!r} has no dropout on the attention weights (the official "
                    f"model drops them there): use it with model.dropout=0, or model.attention='reference'")
  if attention == "cudnn" and model.get("dtype", "float32") != "bfloat16":
    raise UserError("config key model.attention='cudnn' (cuDNN flash attention) needs model.dtype='bfloat16'")
  if attention == "cudnn" and (d // heads % 8 or d // heads > 128):
    raise UserError(f"config key model.attention='cudnn' needs a head width (model.hidden_dim / model.nheads) that "
                    f"is a multiple of 8 and at most 128, got {d // heads}")
  widths = mask_head_widths(d, heads)
  if model.masks and any(width % MASK_HEAD_GROUPS for width in widths):
    raise UserError(f"model.masks=True: the mask head's widths {widths} (model.hidden_dim + model.nheads, then "
                    f"hidden_dim / 2, 4, 8, 16) must be multiples of {MASK_HEAD_GROUPS} (its GroupNorm groups)")


def _field_paths(config: ml_collections.ConfigDict, prefix: str = "", leaves_only: bool = True) -> Iterator[str]:
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      if not leaves_only:
        yield prefix + name
      yield from _field_paths(value, f"{prefix}{name}.", leaves_only)
    else:
      yield prefix + name


def format_config(config: ml_collections.ConfigDict) -> str:
  """One `KEY=VALUE` line per field, KEY dotted as `--config.KEY=VALUE` takes it."""
  return "\n".join(f"{path}={_lookup(config, path)}" for path in _field_paths(config))
