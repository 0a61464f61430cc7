"""Official state dict <-> our Flax parameters, with a report of every key that does not fit."""
from dataclasses import dataclass, field

import ml_collections
import numpy as np
from flax import traverse_util

from detr_jax.config import VARIANTS, model_config, variant_config
from detr_jax.models.backbone import RESNET_SPECS
from detr_jax.torch_io.mapping import Entry, model_layout, resnet_layout, to_flax, to_torch


@dataclass
class KeyReport:
  """Keys of a state dict checked against the expected layout."""
  missing: list[str] = field(default_factory=list)
  unexpected: list[str] = field(default_factory=list)
  mismatched: list[str] = field(default_factory=list)  # "key: got (..), expected (..)"

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def lines(self) -> list[str]:
    return ([f"missing key: {k}" for k in self.missing] + [f"unexpected key: {k}" for k in self.unexpected]
            + [f"shape mismatch: {k}" for k in self.mismatched])


def check_keys(state_dict: dict, layout: list[Entry], ignore=lambda key: False) -> KeyReport:
  """Compares names and shapes of `state_dict` with `layout`; `ignore(key)` skips extra keys."""
  expected = {e.key: e.shape for e in layout}
  report = KeyReport()
  report.missing = [k for k in expected if k not in state_dict]
  report.unexpected = [k for k in state_dict if k not in expected and not ignore(k)]
  report.mismatched = [f"{k}: got {tuple(np.shape(v))}, expected {expected[k]}" for k, v in state_dict.items()
                       if k in expected and tuple(np.shape(v)) != expected[k]]
  return report


def state_dict_to_params(state_dict: dict, layout: list[Entry]) -> dict:
  """Nested Flax params (float32 numpy) from the layout's keys of an official state dict."""
  flat = {e.path: to_flax(e.kind, np.asarray(state_dict[e.key], np.float32)) for e in layout}
  return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: dict, layout: list[Entry]) -> dict[str, np.ndarray]:
  """Official state dict (float32, official order) from our Flax params."""
  flat = traverse_util.flatten_dict(params)
  return {e.key: to_torch(e.kind, np.asarray(flat[e.path], np.float32)) for e in layout}


def convert_official(state_dict: dict, model_cfg, reinit_class_head: bool = False) -> tuple[dict, KeyReport]:
  """Params for `model_cfg` from an official DETR / DETRsegm state dict, plus the key report.

  With `reinit_class_head`, class_embed is not taken from the state dict but freshly
  initialised for model_cfg.num_classes (fine-tuning on another label set). Params are None
  when the report is not ok.
  """
  layout = model_layout(model_cfg)
  if reinit_class_head:
    layout = [e for e in layout if "class_embed" not in e.path]
  report = check_keys(state_dict, layout, ignore=lambda k: reinit_class_head and "class_embed." in k)
  if not report.ok:
    return None, report
  params = state_dict_to_params(state_dict, layout)
  if reinit_class_head:
    params = _fresh_class_head(params, model_cfg.num_classes)
  return params, report


def convert_torchvision_resnet(state_dict: dict, arch: str) -> tuple[dict, KeyReport]:
  """Backbone params from a torchvision ImageNet ResNet (fc.* and num_batches_tracked ignored)."""
  layout = list(resnet_layout(arch))
  report = check_keys(state_dict, layout, ignore=lambda k: k.startswith("fc.") or k.endswith("num_batches_tracked"))
  return (state_dict_to_params(state_dict, layout) if report.ok else None), report


def split_checkpoint(obj) -> tuple[dict, object]:
  """(state dict, training args or None) from `{"model": sd, "args": ...}` or a bare state dict."""
  if not isinstance(obj, dict):
    raise ValueError(f"expected a dict (state dict or {{'model': state dict}}), got {type(obj).__name__}")
  if "model" in obj and isinstance(obj["model"], dict):
    return obj["model"], obj.get("args")
  if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
    return obj, None
  raise ValueError(f"no state dict found: top-level keys are {sorted(map(str, obj))[:8]}")


def is_torchvision_resnet(state_dict: dict) -> bool:
  return "conv1.weight" in state_dict and "fc.weight" in state_dict


def infer_resnet_arch(state_dict: dict, prefix: str = "") -> str:
  """resnet18/34/50/101 from the block counts and block type of a (prefixed) ResNet state dict."""
  bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
  layer3 = sum(1 for k in state_dict if k.startswith(f"{prefix}layer3.") and k.endswith(".conv1.weight"))
  for arch, (blocks, is_bottleneck) in RESNET_SPECS.items():
    if is_bottleneck == bottleneck and blocks[2] == layer3:
      return arch
  raise ValueError(f"unrecognised ResNet: {layer3} blocks in layer3, bottleneck={bottleneck}")


def _count_layers(state_dict, prefix):
  return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def infer_model_config(state_dict: dict, args=None) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Model config of an official checkpoint from its training `args` or else its keys and shapes.

  Returns the config and notes on what could not be seen (DC5 and nheads leave no trace in the
  weights).
  """
  notes = []
  p = "detr." if any(k.startswith("detr.") for k in state_dict) else ""
  if f"{p}query_embed.weight" not in state_dict or f"{p}class_embed.weight" not in state_dict:
    raise ValueError("not a DETR checkpoint: no query_embed.weight / class_embed.weight")
  num_queries, hidden_dim = state_dict[f"{p}query_embed.weight"].shape
  overrides = dict(
      backbone=infer_resnet_arch(state_dict, f"{p}backbone.0.body."),
      hidden_dim=int(hidden_dim), num_queries=int(num_queries),
      num_classes=int(state_dict[f"{p}class_embed.weight"].shape[0]) - 1,
      enc_layers=_count_layers(state_dict, f"{p}transformer.encoder.layers."),
      dec_layers=_count_layers(state_dict, f"{p}transformer.decoder.layers."),
      dim_feedforward=int(state_dict[f"{p}transformer.decoder.layers.0.linear1.weight"].shape[0]),
      pre_norm=f"{p}transformer.encoder.norm.weight" in state_dict,
      position_embedding="learned" if f"{p}backbone.1.row_embed.weight" in state_dict else "sine",
      masks=bool(p),
  )
  if args is not None:
    for name in ("dilation", "nheads", "dropout"):
      if hasattr(args, name):
        overrides[name] = type(model_config()[name])(getattr(args, name))
    notes.append("architecture read from the checkpoint's training args")
  else:
    notes.append("DC5 (dilation) cannot be seen in the weights: assuming no dilation; pass --model "
                 "..._dc5 for a DC5 checkpoint")
    notes.append("nheads cannot be seen in the weights: assuming 8")
  return model_config(**overrides), notes


def variant_name(cfg) -> str:
  """Name of the released variant with this architecture, or "custom"."""
  for name in VARIANTS:
    if variant_config(name).model.to_dict() == {**cfg.to_dict(), "dropout": 0.1, "aux_loss": True}:
      return name
  return "custom"


def _fresh_class_head(params: dict, num_classes: int, seed: int = 0) -> dict:
  """Adds a freshly initialised class_embed with num_classes + 1 outputs (inside `detr` if any)."""
  import jax
  from flax import linen as nn
  parent = params["detr"] if "detr" in params else params
  d = parent["query_embed"]["embedding"].shape[1]
  kernel = nn.initializers.lecun_normal()(jax.random.PRNGKey(seed), (d, num_classes + 1))
  parent["class_embed"] = {"kernel": np.asarray(kernel), "bias": np.zeros(num_classes + 1, np.float32)}
  return params
