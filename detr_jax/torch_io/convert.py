"""Official state dict <-> our Flax parameters, with a report of every key that does not fit."""
from dataclasses import dataclass, field

import numpy as np
from flax import traverse_util

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


def convert_official(state_dict: dict, model_cfg) -> tuple[dict, KeyReport]:
  """Params for `model_cfg` from an official DETR / DETRsegm state dict, plus the key report."""
  layout = model_layout(model_cfg)
  report = check_keys(state_dict, layout)
  return (state_dict_to_params(state_dict, layout) if report.ok else None), report


def convert_torchvision_resnet(state_dict: dict, arch: str) -> tuple[dict, KeyReport]:
  """Backbone params from a torchvision ImageNet ResNet (fc.* and num_batches_tracked ignored)."""
  layout = list(resnet_layout(arch))
  report = check_keys(state_dict, layout, ignore=lambda k: k.startswith("fc.") or k.endswith("num_batches_tracked"))
  return (state_dict_to_params(state_dict, layout) if report.ok else None), report
