"""HuggingFace transformers DETR folders (config.json + weights) <-> the official layout.

A HF model folder holds `config.json` and `model.safetensors` or `pytorch_model.bin`, both read
without torch. Key names: those of the files transformers 4 and 5 write (`model.backbone.
conv_encoder.model.*`, separate `q_proj/k_proj/v_proj`, `fc1`, `class_labels_classifier`, ...),
and transformers 5's module names (`model.backbone.model.*`, `o_proj`, `mlp.fc1`, the mask head's
`conv1.conv` ...) that a state dict saved directly carries. config.json: transformers 4 (top-level
`backbone`, `use_timm_backbone`, `dilation`) and 5 (nested `backbone_config`).

Supported: DetrForObjectDetection and DetrForSegmentation (model_type "detr") with a timm ResNet-
18/34/50/101 backbone (DC5: `dilation`, or output_stride 16), ReLU, post-norm, sine or learned
position embedding. The HF layout is the official one renamed, with each attention's `in_proj`
split into q/k/v (rows 0:d, d:2d, 2d:3d). The learned position embedding is
`model.position_embedding.*` in transformers 5 files and `model.backbone.position_embedding.*` in
transformers 4 files (transformers 5 does not load the latter); both are read, the first written.
"""
import json
import os
import re
from typing import NamedTuple

import ml_collections
import ml_dtypes  # noqa: F401  (registers bfloat16, so safetensors' numpy reader can return it)
import numpy as np

from detr_jax.architecture import MASK_HEAD_GROUPS, RESNET_SPECS, mask_head_widths
from detr_jax.config import model_config
from detr_jax.errors import UserError
from detr_jax.torch_io.mapping import Entry, model_layout

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
ARCHITECTURES = {"DetrForObjectDetection": False, "DetrForSegmentation": True}  # name: masks

# Official key prefix -> HF file key prefix (inside `detr.` for DetrForSegmentation).
_PREFIXES = (
    ("backbone.0.body.", "model.backbone.conv_encoder.model."),
    ("backbone.1.row_embed.", "model.position_embedding.row_embeddings."),
    ("backbone.1.col_embed.", "model.position_embedding.column_embeddings."),
    ("input_proj.", "model.input_projection."),
    ("query_embed.", "model.query_position_embeddings."),
    ("class_embed.", "class_labels_classifier."),
    ("bbox_embed.", "bbox_predictor."),
    ("transformer.decoder.norm.", "model.decoder.layernorm."),
)
_LAYER_MODULES = {"linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm", "multihead_attn": "encoder_attn",
                  "norm3": "final_layer_norm"}  # norm2: final_layer_norm (encoder), encoder_attn_layer_norm (decoder)
# Other spellings -> the file names above: transformers 5's module names (a state dict saved
# without save_pretrained; save_pretrained writes transformers 4's names) and transformers 4's
# place of the learned position embedding.
_ALIASES = (
    (r"(^|\.)model\.backbone\.model\.", r"\1model.backbone.conv_encoder.model."),
    (r"(^|\.)model\.backbone\.position_embedding\.", r"\1model.position_embedding."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.layers\.(\d+)\.mlp\.(fc[12])\.", r".layers.\1.\2."),
    (r"^bbox_attention\.([qk])_proj\.", r"bbox_attention.\1_linear."),
    (r"^mask_head\.conv([12])\.conv\.", r"mask_head.lay\1."),
    (r"^mask_head\.conv([12])\.norm\.", r"mask_head.gn\1."),
    (r"^mask_head\.fpn_stages\.(\d)\.fpn_adapter\.", lambda m: f"mask_head.adapter{int(m[1]) + 1}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.conv\.", lambda m: f"mask_head.lay{int(m[1]) + 3}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.norm\.", lambda m: f"mask_head.gn{int(m[1]) + 3}."),
    (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
)
_LFS_POINTER = b"version https://git-lfs"  # a clone without `git lfs` holds these instead of the files
_TIMM_RESNET = re.compile(r"(?:timm/)?(resnet(?:18|34|50|101))(?:\.\w+)?")


class HfEntry(NamedTuple):
  """One tensor of the HF layout: its key and shape, the official key it comes from, and which
  third (0 q, 1 k, 2 v) of that key's in_proj it is (None: the whole tensor)."""
  key: str
  shape: tuple[int, ...]
  official_key: str
  part: int | None


def _hf_key(official_key: str) -> str:
  prefix = "detr." if official_key.startswith("detr.") else ""
  body = official_key[len(prefix):]
  layer = re.fullmatch(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)", body)
  if layer:
    part, index, module, rest = layer.groups()
    if module == "norm2":
      module = "final_layer_norm" if part == "encoder" else "encoder_attn_layer_norm"
    return f"{prefix}model.{part}.layers.{index}.{_LAYER_MODULES.get(module, module)}.{rest}"
  for official, hf in _PREFIXES:
    if body.startswith(official):
      return prefix + hf + body[len(official):]
  return official_key  # bbox_attention.*, mask_head.*: the same names


def hf_layout(model_cfg) -> list[HfEntry]:
  """The HF keys and shapes of a model config (the official layout renamed, in_proj split)."""
  entries = []
  for e in model_layout(model_cfg):
    key = _hf_key(e.key)
    attention = re.fullmatch(r"(.+)\.in_proj_(weight|bias)", key)
    if attention:
      d = e.shape[0] // 3
      entries += [HfEntry(f"{attention[1]}.{qkv}_proj.{attention[2]}", (d,) + e.shape[1:], e.key, part)
                  for part, qkv in enumerate("qkv")]
    else:
      entries.append(HfEntry(key, e.shape, e.key, None))
  return entries


def file_key_names(state_dict: dict) -> dict:
  """The state dict with every key spelled as transformers writes it to files (see _ALIASES)."""
  renamed = {}
  for key, value in state_dict.items():
    for pattern, replacement in _ALIASES:
      key = re.sub(pattern, replacement, key)
    renamed[key] = value
  return renamed


def key_layout(model_cfg) -> list[Entry]:
  """hf_layout as `Entry`s (key and shape only), for `convert.check_keys`."""
  return [Entry(e.key, e.shape, (), "copy") for e in hf_layout(model_cfg)]


def to_official(state_dict: dict, model_cfg) -> dict:
  """Official state dict from a HF one checked against key_layout (q/k/v stacked into in_proj).

  Only the layout's tensors that `state_dict` holds are converted (the caller drops those it
  re-initialises, e.g. the class head)."""
  parts = {}
  for e in hf_layout(model_cfg):
    if e.key in state_dict:
      parts.setdefault(e.official_key, []).append(state_dict[e.key])
  return {key: values[0] if len(values) == 1 else np.concatenate(values) for key, values in parts.items()}


def from_official(state_dict: dict, model_cfg) -> dict:
  """HF state dict (file key names) from an official one."""
  out = {}
  for e in hf_layout(model_cfg):
    value = state_dict[e.official_key]
    out[e.key] = value if e.part is None else np.ascontiguousarray(np.split(value, 3)[e.part])
  return out


def write_folder(folder: str, config: dict, state_dict: dict) -> None:
  """Writes config.json and model.safetensors (float32, metadata format "pt" as transformers expects)
  into `folder` atomically: a temporary folder beside it, then renamed (replacing `folder` if it exists)."""
  import shutil
  import tempfile

  from safetensors.numpy import save_file

  path = os.path.abspath(folder)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
      new, old = os.path.join(staging, "new"), os.path.join(staging, "old")
      os.mkdir(new)
      with open(os.path.join(new, CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
      save_file({k: np.asarray(v, np.float32) for k, v in state_dict.items()}, os.path.join(new, SAFETENSORS),
                metadata={"format": "pt"})
      if os.path.lexists(path):
        os.rename(path, old)
      os.rename(new, path)
    finally:
      shutil.rmtree(staging)
  except OSError as e:
    reason = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else e.strerror or str(e)
    raise UserError(f"{folder}: cannot write the HuggingFace folder ({reason})") from e


def is_hf_folder(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def load_weights(folder: str) -> tuple[dict, str]:
  """(state dict of numpy arrays, the file read): model.safetensors, else pytorch_model.bin."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  from detr_jax.torch_io.convert import split_checkpoint
  from detr_jax.torch_io.pth import load_pth

  for name in (SAFETENSORS, PYTORCH_BIN):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      try:
        with open(path, "rb") as f:
          head = f.read(len(_LFS_POINTER))
      except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
      if head == _LFS_POINTER:
        raise UserError(f"{path} is a Git LFS pointer, not the weights: fetch them (git lfs pull)")
      if name == PYTORCH_BIN:
        obj = load_pth(path)  # its errors name the file
        try:
          return split_checkpoint(obj)[0], path
        except UserError as e:
          raise UserError(f"{path}: {e}") from None
      try:
        return load_file(path), path
      except (SafetensorError, TypeError, OSError) as e:  # a damaged header or data, an unknown dtype
        raise UserError(f"{path}: unreadable safetensors file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
  sharded = [f for f in (SAFETENSORS + ".index.json", PYTORCH_BIN + ".index.json")
             if os.path.isfile(os.path.join(folder, f))]
  if sharded:
    raise UserError(f"{folder}: sharded weights ({sharded[0]}) are not supported; save the model as one file "
                    f"(save_pretrained(..., max_shard_size='2GB'))")
  raise UserError(f"{folder}: no {SAFETENSORS} or {PYTORCH_BIN} next to {CONFIG}")


def _get(config: dict, key: str, kind: type, default, path: str):
  """config[key] (or `default`), which must be a `kind` (int, float, bool, dict; a bool is no number)."""
  value = config.get(key, default)
  number = isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
  if not (isinstance(value, bool) if kind is bool else number if kind in (int, float) else isinstance(value, kind)):
    raise UserError(f"{path}: {key} is {value!r:.80}, expected {'a number' if kind is float else kind.__name__}")
  return value


def _backbone(config: dict, path: str) -> tuple[str, bool]:
  """(resnet arch, DC5) from the timm backbone settings of a transformers 4 or 5 config."""
  sub = config.get("backbone_config")
  if isinstance(sub, dict) and sub:  # transformers 5 (or 4 with a HF backbone)
    kind = sub.get("model_type")
    if kind != "timm_backbone":
      what = "HF's own ResNet (its embedder/encoder.stages names)" if kind == "resnet" else repr(kind)
      raise UserError(f"{path}: backbone_config.model_type is {kind!r}: {what} backbones are not supported, only "
                      "timm ResNets (model_type 'timm_backbone', as facebook/detr-resnet-50)")
    name, stride, indices = sub.get("backbone"), sub.get("output_stride"), sub.get("out_indices")
    where = "backbone_config."
  elif config.get("use_timm_backbone", True) is not True:
    raise UserError(f"{path}: use_timm_backbone is {config.get('use_timm_backbone')!r} without a backbone_config; "
                    "only timm ResNet backbones are supported")
  else:  # transformers 4
    kwargs = config.get("backbone_kwargs") or {}
    name, indices = config.get("backbone", "resnet50"), kwargs.get("out_indices")
    dilation = config.get("dilation") is not None and _get(config, "dilation", bool, False, path)
    stride = kwargs.get("output_stride", 16 if dilation else None)
    where = ""
  match = _TIMM_RESNET.fullmatch(name) if isinstance(name, str) else None
  if not match:
    raise UserError(f"{path}: {where}backbone is {name!r}; supported: the timm ResNets "
                    f"{', '.join(RESNET_SPECS)} (optionally with a weight tag, e.g. resnet50.a1_in1k)")
  arch = match[1]
  if stride not in (None, 32, 16):
    raise UserError(f"{path}: {where}output_stride is {stride!r}; supported: 32, or 16 (DC5)")
  if indices is not None and (not isinstance(indices, list) or indices[-1:] not in ([4], [-1])):
    raise UserError(f"{path}: {where}out_indices is {indices!r}; expected the stages ending with the last, "
                    "[1, 2, 3, 4]")
  dilation = stride == 16
  if dilation and not RESNET_SPECS[arch][1]:
    raise UserError(f"{path}: DC5 (dilation / output_stride 16) with {arch}: detr-jax has DC5 only for bottleneck "
                    "backbones (resnet50, resnet101)")
  return arch, dilation


def read_config(folder: str) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Our checkpoint config ({name, model, class_names}) of a HF DETR folder's config.json, and notes.

  Every unsupported setting is a UserError naming config.json and the key.
  """
  path = os.path.join(folder, CONFIG)
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except OSError as e:
    raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
  if config.get("model_type") != "detr":
    raise UserError(f"{path}: model_type is {config.get('model_type')!r}; only 'detr' (DetrForObjectDetection, "
                    "DetrForSegmentation) is supported")
  architectures = config.get("architectures") or []
  known = [a for a in architectures if a in ARCHITECTURES] if isinstance(architectures, list) else []
  if not known:
    raise UserError(f"{path}: architectures is {architectures!r}; expected DetrForObjectDetection or "
                    "DetrForSegmentation (a model with its detection head)")
  masks = ARCHITECTURES[known[0]]
  for key, expected in (("activation_function", "relu"), ("num_channels", 3)):
    if config.get(key, expected) != expected:
      raise UserError(f"{path}: {key} is {config.get(key)!r}; only {expected!r} is supported (as the official DETR)")
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
    if config.get(a, 8) != config.get(b, 8):
      raise UserError(f"{path}: {a} ({config.get(a)}) differs from {b} ({config.get(b)}); detr-jax uses one value "
                      "for both")
  position = config.get("position_embedding_type", "sine")
  if position not in ("sine", "learned"):
    raise UserError(f"{path}: position_embedding_type is {position!r}; expected 'sine' or 'learned'")
  id2label = _get(config, "id2label", dict, {}, path)
  try:
    labels = {int(k): str(v) for k, v in id2label.items()}
  except ValueError:
    raise UserError(f"{path}: id2label keys must be class ids (\"0\", \"1\", ...)") from None
  if not labels or min(labels) < 0:
    raise UserError(f"{path}: id2label must name the classes (ids 0 and up), got {id2label!r:.80}")
  num_classes = max(labels) + 1
  backbone, dilation = _backbone(config, path)
  sizes = {key: _get(config, key, int, default, path) for key, default in (
      ("d_model", 256), ("encoder_attention_heads", 8), ("encoder_layers", 6), ("decoder_layers", 6),
      ("encoder_ffn_dim", 2048), ("num_queries", 100))}
  dropout = _get(config, "dropout", float, 0.1, path)
  model = model_config(backbone=backbone, dilation=dilation, position_embedding=position, hidden_dim=sizes["d_model"],
                       nheads=sizes["encoder_attention_heads"], enc_layers=sizes["encoder_layers"],
                       dec_layers=sizes["decoder_layers"], dim_feedforward=sizes["encoder_ffn_dim"],
                       num_queries=sizes["num_queries"], num_classes=num_classes, dropout=float(dropout), masks=masks)
  d, heads = model.hidden_dim, model.nheads
  if d < 1 or heads < 1 or d % heads or d % (2 if position == "learned" else 4):
    raise UserError(f"{path}: d_model {d} must be divisible by encoder_attention_heads ({heads}) and by "
                    f"{2 if position == 'learned' else 4} ({position} position embedding)")
  widths = mask_head_widths(d, heads)
  if masks and any(w % MASK_HEAD_GROUPS for w in widths):
    raise UserError(f"{path}: the mask head's widths {widths} (d_model + heads, d_model / 2, 4, 8, 16) must be "
                    f"multiples of {MASK_HEAD_GROUPS}, as detr-jax's GroupNorm needs")
  notes = []
  if config.get("auxiliary_loss"):
    notes.append("auxiliary_loss is true in config.json: transformers then applies the decoder's final LayerNorm "
                 "between decoder layers as well, so its outputs for this folder differ from the official "
                 "DETR's, which detr-jax computes")
  names = [labels.get(i, str(i)) for i in range(num_classes)]
  from detr_jax.torch_io.convert import variant_name
  return ml_collections.ConfigDict({"name": variant_name(model), "model": model, "class_names": names}), notes


def export_config(cfg, class_names) -> dict:
  """config.json (transformers 4 style, which transformers 5 reads too) for our model config `cfg.model`."""
  m = cfg.model
  if m.pre_norm:
    raise UserError("pre_norm models have no transformers DETR counterpart (its layers are post-norm)")
  id2label = {str(i): str(name) for i, name in enumerate(class_names)}
  return {
      "architectures": ["DetrForSegmentation" if m.masks else "DetrForObjectDetection"],
      "model_type": "detr",
      "use_timm_backbone": True, "backbone": m.backbone, "use_pretrained_backbone": False, "dilation": bool(m.dilation),
      "num_channels": 3, "d_model": m.hidden_dim,
      "encoder_layers": m.enc_layers, "decoder_layers": m.dec_layers,
      "encoder_attention_heads": m.nheads, "decoder_attention_heads": m.nheads,
      "encoder_ffn_dim": m.dim_feedforward, "decoder_ffn_dim": m.dim_feedforward,
      "num_queries": m.num_queries, "position_embedding_type": m.position_embedding,
      "activation_function": "relu", "dropout": float(m.dropout), "auxiliary_loss": False,
      "id2label": id2label, "label2id": {name: int(i) for i, name in id2label.items()},
  }
