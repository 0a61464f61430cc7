"""Official state dict <-> our Flax parameters, with a report of every key that does not fit."""
import argparse
from collections import Counter
from dataclasses import dataclass, field

import ml_collections
import numpy as np
from flax import traverse_util

from detr_jax.architecture import RESNET_SPECS
from detr_jax.config import VARIANTS, model_config, variant_config
from detr_jax.errors import UserError
from detr_jax.fill import fill_v1
from detr_jax.torch_io.mapping import Entry, flax_shape, model_layout, resnet_layout, to_flax, to_torch


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
    """Every problem, one per line."""
    return ([f"missing key: {k}" for k in self.missing] + [f"unexpected key: {k}" for k in self.unexpected]
            + [f"shape mismatch: {k}" for k in self.mismatched])

  def summary(self, first: int = 2, more_hint: str = "") -> str:
    """One line: the count of each kind of problem and its first `first` keys (then `more_hint`)."""
    parts = []
    for items, what in ((self.missing, "missing"), (self.unexpected, "unexpected"), (self.mismatched, "mis-shaped")):
      if items:
        more = f"; ... {len(items) - first} more" if len(items) > first else ""
        parts.append(f"{len(items)} {what} key{'s' if len(items) > 1 else ''} ({'; '.join(items[:first])}{more})")
    truncated = max(len(self.missing), len(self.unexpected), len(self.mismatched)) > first
    return ", ".join(parts) + (f" {more_hint}" if truncated and more_hint else "")


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
  """Official state dict (float32, official order) from our Flax params.

  Raises UserError, naming the parameters, when params do not fit the layout exactly.
  """
  flat = {"/".join(path): value for path, value in traverse_util.flatten_dict(params).items()}
  expected = {"/".join(e.path): flax_shape(e.kind, e.shape) for e in layout}
  report = KeyReport(missing=[p for p in expected if p not in flat],
                     unexpected=[p for p in flat if p not in expected],
                     mismatched=[f"{p}: got {np.shape(v)}, expected {expected[p]}" for p, v in flat.items()
                                 if p in expected and np.shape(v) != expected[p]])
  if not report.ok:
    raise UserError(f"parameters do not fit the model in the config: {report.summary()}")
  return {e.key: to_torch(e.kind, np.asarray(flat["/".join(e.path)], np.float32)) for e in layout}


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


def filled_params(model_cfg, seed: int = 0) -> dict:
  """Our parameter tree of `model_cfg` as a converted official checkpoint filled with fill
  procedure v1 (`seed`) holds it: deterministic weights for tests and benchmarks."""
  params, report = convert_official(fill_v1([(e.key, e.shape) for e in model_layout(model_cfg)], seed), model_cfg)
  assert report.ok, report  # the layout is generated from the same config
  return params


def convert_torchvision_resnet(state_dict: dict, arch: str) -> tuple[dict, KeyReport]:
  """Backbone params from a torchvision ImageNet ResNet (fc.* and num_batches_tracked ignored)."""
  layout = list(resnet_layout(arch))
  report = check_keys(state_dict, layout, ignore=lambda k: k.startswith("fc.") or k.endswith("num_batches_tracked"))
  return (state_dict_to_params(state_dict, layout) if report.ok else None), report


def split_checkpoint(obj) -> tuple[dict, object]:
  """(state dict, training args or None) from `{"model": sd, "args": ...}` or a bare state dict.

  A state dict maps str keys to tensors (numpy arrays); anything else is a UserError.
  """
  if not isinstance(obj, dict):
    raise UserError(f"expected a dict (state dict or {{'model': state dict}}), got {type(obj).__name__}")
  nested = isinstance(obj.get("model"), dict)
  state_dict, args = (obj["model"], obj.get("args")) if nested else (obj, None)
  where = "its 'model' entry" if nested else "the file"
  if not state_dict:
    raise UserError(f"no state dict found: {where} is an empty dict")
  for key, value in state_dict.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      raise UserError(f"no state dict found: {where} maps {str(key)[:80]!r} to a {type(value).__name__}, "
                      "expected str keys and tensors")
  return state_dict, args


def is_torchvision_resnet(state_dict: dict) -> bool:
  return "conv1.weight" in state_dict and "fc.weight" in state_dict


def infer_resnet_arch(state_dict: dict, prefix: str = "") -> str:
  """resnet18/34/50/101 from the block counts and block type of a (prefixed) ResNet state dict."""
  bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
  layer3 = sum(1 for k in state_dict if k.startswith(f"{prefix}layer3.") and k.endswith(".conv1.weight"))
  for arch, (blocks, is_bottleneck) in RESNET_SPECS.items():
    if is_bottleneck == bottleneck and blocks[2] == layer3:
      return arch
  raise UserError(f"unrecognised ResNet under {prefix or 'the top level'!r}: {layer3} blocks in layer3 "
                  f"({prefix}layer3.N.conv1.weight), {'bottleneck' if bottleneck else 'basic'} blocks")


def _count_layers(state_dict, prefix):
  return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def _agreed_size(state_dict: dict, witnesses, default: int) -> int:
  """The size most tensors agree on; witnesses are (key, ndim, axis), absent or other-rank ones skipped.

  One mis-shaped tensor thus cannot change the inferred architecture: it is outvoted and reported
  by `check_keys` as itself.
  """
  sizes = [int(state_dict[k].shape[axis]) for k, ndim, axis in witnesses
           if k in state_dict and state_dict[k].ndim == ndim]
  return Counter(sizes).most_common(1)[0][0] if sizes else default


def _training_args(args) -> dict:
  """dilation, nheads, dropout from an official training `args` Namespace (checked types)."""
  fields = vars(args) if isinstance(args, argparse.Namespace) else {}
  out = {}
  for name, types in (("dilation", (bool,)), ("nheads", (int,)), ("dropout", (float, int))):
    if name in fields:
      value = fields[name]
      if not isinstance(value, types) or (name != "dilation" and isinstance(value, bool)):
        raise UserError(f"training args: {name} is {value!r}, expected a {types[0].__name__}")
      out[name] = types[0](value)
  return out


def infer_model_config(state_dict: dict, args=None) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Model config of an official checkpoint from its training `args` or else its keys and shapes.

  Each size is the one most of the tensors that show it agree on. Returns the config and notes on
  what could not be seen (DC5 and nheads leave no trace in the weights).
  """
  notes = []
  p = "detr." if any(k.startswith("detr.") for k in state_dict) else ""
  if f"{p}query_embed.weight" not in state_dict or f"{p}class_embed.weight" not in state_dict:
    raise UserError(f"not a DETR checkpoint: no {p}query_embed.weight / {p}class_embed.weight")
  defaults = model_config()
  layers = [k.rsplit(".", 2)[0] for k in state_dict
            if k.startswith(f"{p}transformer.") and k.endswith(".linear1.weight")]
  norms = [k for k in state_dict if k.startswith(f"{p}transformer.") and ".norm" in k]
  hidden_dim = _agreed_size(state_dict, [(f"{p}query_embed.weight", 2, 1), (f"{p}class_embed.weight", 2, 1),
                                         (f"{p}input_proj.weight", 4, 0), (f"{p}input_proj.bias", 1, 0)]
                            + [(k, 1, 0) for k in norms], defaults.hidden_dim)
  dim_feedforward = _agreed_size(state_dict, [w for layer in layers for w in (
      (f"{layer}.linear1.weight", 2, 0), (f"{layer}.linear1.bias", 1, 0), (f"{layer}.linear2.weight", 2, 1))],
                                 defaults.dim_feedforward)
  num_classes = _agreed_size(state_dict, [(f"{p}class_embed.weight", 2, 0), (f"{p}class_embed.bias", 1, 0)],
                             defaults.num_classes + 1) - 1
  if num_classes < 1:
    raise UserError(f"{p}class_embed has {num_classes + 1} outputs; expected at least 2 (classes + no-object)")
  overrides = dict(
      backbone=infer_resnet_arch(state_dict, f"{p}backbone.0.body."),
      hidden_dim=hidden_dim, dim_feedforward=dim_feedforward, num_classes=num_classes,
      num_queries=_agreed_size(state_dict, [(f"{p}query_embed.weight", 2, 0)], defaults.num_queries),
      enc_layers=_count_layers(state_dict, f"{p}transformer.encoder.layers."),
      dec_layers=_count_layers(state_dict, f"{p}transformer.decoder.layers."),
      pre_norm=f"{p}transformer.encoder.norm.weight" in state_dict,
      position_embedding="learned" if f"{p}backbone.1.row_embed.weight" in state_dict else "sine",
      masks=bool(p),
  )
  from_args = _training_args(args)
  overrides.update(from_args)
  if from_args:
    notes.append(f"{', '.join(from_args)} read from the checkpoint's training args")
  if "dilation" not in from_args:
    notes.append("DC5 (dilation) cannot be seen in the weights: assuming no dilation; pass --model "
                 "..._dc5 for a DC5 checkpoint")
  if "nheads" not in from_args:
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
