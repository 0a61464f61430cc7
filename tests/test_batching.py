"""collate: normalisation, bottom/right zero padding, normalised cxcywh targets, clear errors."""
import numpy as np
import pytest

from detr_jax.data.batching import collate
from detr_jax.data.synthetic import SyntheticShapes

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _example(image_id, h, w, boxes, labels):
  rng = np.random.default_rng(image_id)
  masks = np.zeros((len(labels), h, w), bool)
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    masks[k, y0:y1, x0:x1] = True
  return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
          "boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int32), "masks": masks, "image_id": image_id,
          "orig_size": np.array([2 * h, 2 * w], np.int32)}


def test_padding_normalisation_and_targets():
  a = _example(5, 20, 40, [(2, 4, 12, 10), (0, 0, 40, 20)], [3, 1])
  b = _example(6, 30, 16, [], [])
  batch = collate([a, b], pad_to=(32, 48), max_objects=3, with_masks=True)
  assert batch["images"].shape == (2, 32, 48, 3) and batch["images"].dtype == np.float32
  np.testing.assert_array_equal(batch["images"][0, :20, :40], (a["image"].astype(np.float32) / 255 - MEAN) / STD)
  assert not batch["images"][0, 20:].any() and not batch["images"][0, :, 40:].any()
  assert not batch["images"][1, 30:].any() and not batch["images"][1, :, 16:].any()
  expected_mask = np.ones((2, 32, 48), bool)
  expected_mask[0, :20, :40] = expected_mask[1, :30, :16] = False
  np.testing.assert_array_equal(batch["mask"], expected_mask)
  f = np.float32
  assert batch["boxes"].dtype == np.float32
  assert batch["boxes"][0, 0].tolist() == [f(7) / f(40), f(7) / f(20), f(10) / f(40), f(6) / f(20)]
  assert batch["boxes"][0, 1].tolist() == [0.5, 0.5, 1.0, 1.0]
  assert not batch["boxes"][0, 2].any() and not batch["boxes"][1].any()
  assert batch["labels"].tolist() == [[3, 1, 0], [0, 0, 0]] and batch["labels"].dtype == np.int32
  assert batch["valid"].tolist() == [[True, True, False], [False, False, False]]
  assert batch["masks"].shape == (2, 3, 32, 48)
  np.testing.assert_array_equal(batch["masks"][0, :2, :20, :40], a["masks"])
  assert batch["masks"].sum() == a["masks"].sum()
  assert batch["size"].tolist() == [[20, 40], [30, 16]] and batch["orig_size"].tolist() == [[40, 80], [60, 32]]
  assert batch["image_id"].tolist() == [5, 6] and batch["image_id"].dtype == np.int32
  assert "masks" not in collate([a], pad_to=(20, 40), max_objects=2)


def test_defaults_pad_to_the_batch_and_round_trip_synthetic_boxes():
  ds = SyntheticShapes(4, image_size=((40, 60), (40, 60)), seed=0)
  examples = [ds[i] for i in range(4)]
  batch = collate(examples)
  sizes = np.array([e["image"].shape[:2] for e in examples])
  assert batch["images"].shape[1:3] == tuple(sizes.max(0))
  assert batch["labels"].shape[1] == max(len(e["labels"]) for e in examples)
  for i, e in enumerate(examples):
    n, (h, w) = len(e["labels"]), e["image"].shape[:2]
    cx, cy, bw, bh = batch["boxes"][i, :n].T
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * [w, h, w, h]
    np.testing.assert_allclose(xyxy, e["boxes"], atol=1e-4)


def test_errors_name_the_image():
  a = _example(7, 20, 40, [(2, 4, 12, 10), (0, 0, 40, 20)], [3, 1])
  with pytest.raises(ValueError, match=r"image_id 7: 2 objects, more than max_objects=1"):
    collate([a], pad_to=(32, 48), max_objects=1)
  with pytest.raises(ValueError, match=r"image_id 7: image 20x40 is larger than pad_to 32x32"):
    collate([a], pad_to=(32, 32), max_objects=4)
