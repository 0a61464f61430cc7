"""Backbone depths, DC5, pre-norm and learned position encodings against the official code.

Fixtures in tests/fixtures/extra were produced by tools/dump_torch_reference.py (see the README
there): small models filled with fill procedure v1 on the public reference inputs.
"""
import json

import ml_collections
import numpy as np
import pytest

from helpers import fixture_path, load_npz
from detr_jax.compare import run_model
from detr_jax.config import model_config
from detr_jax.fill import fill_v1
from detr_jax.reference_layout import OUTPUT_KEYS
from detr_jax.torch_io.convert import convert_official
from detr_jax.torch_io.mapping import model_layout

CASES = ["r50_dc5_detection", "r18_prenorm_learned", "r34_detection", "r101_dc5_panoptic"]


@pytest.mark.parametrize("case", CASES)
def test_variant_matches_official(case, inputs):
  with open(fixture_path(f"extra/{case}.json")) as f:
    spec = json.load(f)
  cfg = model_config(**spec["args"])
  layout = model_layout(cfg)
  assert [(e.key, list(e.shape)) for e in layout] == [(p["name"], p["shape"]) for p in spec["params"]]
  params, report = convert_official(fill_v1([(e.key, e.shape) for e in layout], spec["seed"]), cfg)
  assert report.ok
  config = ml_collections.ConfigDict({"name": case, "model": cfg})
  outputs, inter = run_model(config, params, inputs["images_padded"], inputs["mask"], intermediates=True)
  ref = load_npz(f"extra/{case}.npz")
  sown = {k: v for k, v in (inter["detr"] if cfg.masks else inter).items()}
  ours = dict(outputs, backbone_last_chmean=np.asarray(sown["backbone_feat3"][0]).mean(axis=(1, 2)),
              backbone_mask_last=np.asarray(sown["backbone_mask3"][0]))
  for key in [k for k in OUTPUT_KEYS if k in ref] + ["backbone_last_chmean"]:
    err, scale = np.abs(ours[key] - ref[key]).max(), np.abs(ref[key]).max()
    assert err <= 1e-4 + 1e-4 * scale, f"{key}: {err:.3g} (scale {scale:.3g})"
  assert np.array_equal(ours["backbone_mask_last"], ref["backbone_mask_last"])
