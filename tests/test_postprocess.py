"""PostProcessSegm and PostProcessPanoptic against the reference outputs in postprocess_small.*."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from detr_jax.panoptic_png import id2rgb, png_bytes, rgb2id
from detr_jax.postprocess import postprocess_panoptic, postprocess_segm
from helpers import fixture_path, load_npz


@pytest.fixture(scope="module")
def pp():
  return load_npz("postprocess_small.npz")


@pytest.fixture(scope="module")
def outputs():
  return load_npz("panoptic_small.npz")


@pytest.fixture(scope="module")
def reference():
  with open(fixture_path("postprocess_small.json")) as f:
    return json.load(f)


def _check_panoptic(results, pp, reference, case):
  assert len(results) == 2
  for i, result in enumerate(results):
    expected = reference[f"panoptic_{case}"][i]
    assert result["png_ids"].dtype == np.int32
    assert list(result["png_ids"].shape) == expected["id_map_shape"]
    np.testing.assert_array_equal(result["png_ids"], pp[f"panoptic_{case}_ids_{i}"])
    assert np.unique(result["png_ids"]).tolist() == expected["unique_ids"]
    assert result["segments_info"] == expected["segments_info"]


def test_segm_masks(pp, outputs):
  masks = postprocess_segm(outputs["pred_masks"], pp["processed_sizes"], pp["orig_target_sizes"])
  assert len(masks) == 2
  for i, mask in enumerate(masks):
    expected = pp[f"segm_masks_{i}"]
    assert mask.shape == expected.shape and mask.dtype == np.uint8
    assert (mask != expected).sum() <= 5  # only pixels whose logit is ~0 may flip; 0 flip today


def test_panoptic_model_outputs_empty(pp, outputs, reference):
  """No query passes 0.85: all-zero id maps, empty segments_info, no crash."""
  results = postprocess_panoptic(outputs["pred_logits"], outputs["pred_masks"], outputs["pred_boxes"],
                                 pp["processed_sizes"], pp["orig_target_sizes"])
  _check_panoptic(results, pp, reference, "model")


def test_panoptic_crafted(pp, reference):
  """Threshold, no-object, area <= 4 filter, first-pass stuff merge, PIL nearest resize."""
  results = postprocess_panoptic(pp["crafted_pred_logits"], pp["crafted_pred_masks"], pp["crafted_pred_boxes"],
                                 pp["processed_sizes"], pp["orig_target_sizes"])
  _check_panoptic(results, pp, reference, "crafted")


def test_panoptic_default_target_size(pp):
  results = postprocess_panoptic(pp["crafted_pred_logits"], pp["crafted_pred_masks"], pp["crafted_pred_boxes"],
                                 pp["processed_sizes"])
  for result, (h, w) in zip(results, pp["processed_sizes"].tolist()):
    assert result["png_ids"].shape == (h, w)
    assert sum(s["area"] for s in result["segments_info"]) == h * w
    assert all(s["area"] > 4 for s in result["segments_info"])


def test_id_rgb_round_trip_and_png(pp):
  ids = np.array([[0, 1, 255], [256, 65535, 16777215]], np.int32)
  rgb = id2rgb(ids)
  assert rgb.dtype == np.uint8 and rgb[1, 0].tolist() == [0, 1, 0] and rgb[0, 2].tolist() == [255, 0, 0]
  np.testing.assert_array_equal(rgb2id(rgb), ids)
  png_ids = pp["panoptic_crafted_ids_1"]
  decoded = rgb2id(np.asarray(Image.open(io.BytesIO(png_bytes(png_ids))).convert("RGB")))
  np.testing.assert_array_equal(decoded, png_ids)


def _softmax(logits):
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


def _top_keepable(logits, k):
  """The queries a model with mask_queries=k computes masks for (see DETRsegm)."""
  probs = _softmax(logits)
  keepable = np.where(probs.argmax(-1) != logits.shape[-1] - 1, probs.max(-1), -1.0)
  return np.argsort(-keepable, axis=-1, kind="stable")[:, :k]


def test_panoptic_from_the_top_k_query_masks_is_exact(pp, reference):
  logits, masks = pp["crafted_pred_logits"], pp["crafted_pred_masks"]
  probs = _softmax(logits)
  kept = ((probs.argmax(-1) != logits.shape[-1] - 1) & (probs.max(-1) > 0.85)).sum(-1).max()
  index = _top_keepable(logits, kept + 2)[:, ::-1]  # any order
  subset = np.take_along_axis(masks, index[:, :, None, None], axis=1)
  results = postprocess_panoptic(logits, subset, None, pp["processed_sizes"], pp["orig_target_sizes"],
                                 mask_query_index=index)
  _check_panoptic(results, pp, reference, "crafted")
  with pytest.raises(ValueError, match="queries are kept but masks were computed for 1"):
    postprocess_panoptic(logits, subset[:, :1], None, pp["processed_sizes"], mask_query_index=index[:, :1])
