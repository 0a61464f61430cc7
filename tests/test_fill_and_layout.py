"""Fill procedure v1 and the official key layout against the reference parameter lists."""
import json

import numpy as np
import pytest

from helpers import filled_state_dict, fixture_path, small_config
from detr_jax.config import VARIANTS, variant_config
from detr_jax.torch_io.mapping import model_layout


def _params_json(name):
  with open(fixture_path(f"params_{name}_small.json")) as f:
    return json.load(f)["params"]


@pytest.mark.parametrize("name", ["detection", "panoptic"])
def test_layout_matches_official_state_dict_order(name):
  ours = [(e.key, list(e.shape)) for e in model_layout(small_config(name))]
  assert ours == [(p["name"], p["shape"]) for p in _params_json(name)]


@pytest.mark.parametrize("name", ["detection", "panoptic"])
def test_fill_matches_reference_checksums(name):
  state = filled_state_dict(name)
  for p in _params_json(name):
    value = state[p["name"]]
    assert value.dtype == np.float32
    assert value.reshape(-1)[:3].tolist() == p["first"], p["name"]
    assert value.astype(np.float64).sum() == pytest.approx(p["sum_f64"], rel=1e-9, abs=1e-9), p["name"]


@pytest.mark.parametrize("name,keys", [("detr_resnet50", 458), ("detr_resnet50_dc5", 458),
                                       ("detr_resnet101", 713), ("detr_resnet101_dc5", 713),
                                       ("detr_resnet50_panoptic", 490), ("detr_resnet50_dc5_panoptic", 490),
                                       ("detr_resnet101_panoptic", 745)])
def test_released_variants_key_counts(name, keys):
  assert name in VARIANTS
  layout = model_layout(variant_config(name).model)
  assert len(layout) == len({e.key for e in layout}) == keys


def test_r50_parameter_count():
  """41,524,768 parameters + 106,240 frozen-BN buffer floats (docs/parity.md §13.1)."""
  layout = model_layout(variant_config("detr_resnet50").model)
  buffers = sum(int(np.prod(e.shape)) for e in layout if e.key.endswith(("running_mean", "running_var")))
  total = sum(int(np.prod(e.shape)) for e in layout)
  assert total - buffers - buffers == 41_524_768  # BN weight/bias are buffers too: as many as mean/var
  assert 2 * buffers == 106_240
