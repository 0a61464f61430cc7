"""Our Flax model against the official PyTorch outputs and intermediates (public reference)."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from helpers import filled_state_dict, load_npz, small_config, small_full_config
from detr_jax.compare import run_model
from detr_jax.config import variant_config
from detr_jax.models import build_model
from detr_jax.reference_layout import reference_arrays
from detr_jax.torch_io.convert import convert_official
from detr_jax.torch_io.mapping import model_layout, to_flax

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module", params=["detection", "panoptic"])
def run(request, inputs):
  name = request.param
  cfg = small_config(name)
  params, report = convert_official(filled_state_dict(name), cfg)
  assert report.ok
  outputs, inter = run_model(small_full_config(name), params, inputs["images_padded"], inputs["mask"], intermediates=True)
  return name, reference_arrays(outputs, inter, cfg.num_queries, cfg.masks), load_npz(f"{name}_small.npz")


def test_every_reference_array_matches(run):
  name, ours, ref = run
  assert {"pred_logits", "pred_boxes", "aux_pred_logits", "aux_pred_boxes", "hs", "pos"} <= set(ref)
  failures = []
  for key, expected in ref.items():
    got = ours[key]
    assert got.shape == expected.shape, key
    if expected.dtype == bool:
      assert np.array_equal(got, expected), key
      continue
    err, scale = np.abs(got - expected).max(), np.abs(expected).max()
    if err > ATOL + RTOL * scale:
      failures.append(f"{key}: max abs err {err:.3g} (scale {scale:.3g})")
  assert not failures, failures


def test_parity_is_sensitive(run, inputs):
  """A tiny change of one weight must break parity: the comparison can fail."""
  name, ours, ref = run
  state = filled_state_dict(name)
  key = next(k for k in state if k.endswith("class_embed.bias"))
  state[key] = state[key] + 1e-2
  params, _ = convert_official(state, small_config(name))
  outputs, _ = run_model(small_full_config(name), params, inputs["images_padded"], inputs["mask"])
  assert np.abs(outputs["pred_logits"] - ref["pred_logits"]).max() > 1e-3


@pytest.mark.parametrize("variant", ["detr_resnet50", "detr_resnet101_dc5", "detr_resnet50_panoptic"])
def test_param_tree_matches_layout(variant):
  cfg = variant_config(variant).model
  model = build_model(cfg)
  x, m = np.zeros((1, 64, 96, 3), np.float32), np.zeros((1, 64, 96), bool)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, m)["params"]
  ours = {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}
  expected = {e.path: to_flax(e.kind, np.empty(e.shape, np.float32)).shape for e in model_layout(cfg)}
  assert ours == expected


def test_mask_queries_give_the_full_models_masks(inputs):
  """DETRsegm(mask_queries=K): the masks of the K selected queries equal the full model's (the
  reference's, which the full model matches: test_every_reference_array_matches)."""
  cfg = small_config("panoptic")
  params, _ = convert_official(filled_state_dict("panoptic"), cfg)
  images, mask = inputs["images_padded"].transpose(0, 2, 3, 1), inputs["mask"]  # NCHW -> NHWC
  top = jax.jit(build_model(cfg, mask_queries=5).apply)({"params": params}, images, mask)
  index = np.asarray(top["mask_query_index"])
  assert top["pred_masks"].shape[1] == 5 and len(set(index[0].tolist())) == 5
  full = load_npz("panoptic_small.npz")["pred_masks"]
  np.testing.assert_allclose(top["pred_masks"], np.take_along_axis(full, index[:, :, None, None], axis=1),
                             atol=ATOL * np.abs(full).max())
