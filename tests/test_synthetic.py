"""SyntheticShapes: determinism, layout, tight boxes, occlusion-aware masks, distinct classes."""
import numpy as np
import pytest

from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_examples_are_a_function_of_seed_split_and_index():
  ds = SyntheticShapes(10, seed=3)
  later = ds[7]
  assert _equal(SyntheticShapes(10, seed=3)[7], later)
  assert _equal(ds[7], later)
  assert not _equal(SyntheticShapes(10, seed=4)[7], later)
  assert not _equal(SyntheticShapes(10, seed=3, split="val")[7], later)
  assert not _equal(ds[6], later)


def test_layout_and_ranges():
  ds = SyntheticShapes(40, image_size=((64, 96), 80), min_objects=2, max_objects=3, seed=1)
  assert len(ds) == 40
  counts = set()
  for i in range(len(ds)):
    e = ds[i]
    h, w = e["image"].shape[:2]
    n = len(e["labels"])
    counts.add(n)
    assert 64 <= h <= 96 and w == 80 and e["image"].dtype == np.uint8 and e["image"].shape[2] == 3
    assert e["boxes"].shape == (n, 4) and e["boxes"].dtype == np.float32
    assert e["labels"].dtype == np.int32 and e["labels"].min() >= 0 and e["labels"].max() < len(CLASS_NAMES)
    assert e["masks"].shape == (n, h, w) and e["masks"].dtype == bool
    assert e["orig_size"].dtype == np.int32 and e["orig_size"].tolist() == [h, w] and e["image_id"] == i
  assert counts == {2, 3}
  with pytest.raises(IndexError):
    ds[40]


def test_boxes_tight_around_disjoint_visible_masks():
  ds = SyntheticShapes(30, seed=2)
  for i in range(len(ds)):
    e = ds[i]
    assert e["masks"].sum(0).max() <= 1  # visible pixels: each belongs to one object at most
    for box, mask in zip(e["boxes"], e["masks"]):
      ys, xs = np.nonzero(mask)
      assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      side = min(e["image"].shape[:2])
      assert 0.05 * side <= max(box[2] - box[0], box[3] - box[1]) <= 0.5 * side + 1


def test_images_without_objects():
  e = SyntheticShapes(2, image_size=(32, 48), min_objects=0, max_objects=0)[1]
  assert e["boxes"].shape == (0, 4) and e["labels"].shape == (0,) and e["masks"].shape == (0, 32, 48)


def test_classes_have_distinct_mean_colours():
  ds = SyntheticShapes(60, seed=0)
  pixels = {c: [] for c in range(len(CLASS_NAMES))}
  for i in range(len(ds)):
    e = ds[i]
    for label, mask in zip(e["labels"], e["masks"]):
      pixels[int(label)].append(e["image"][mask].astype(np.float64))
  means = np.array([np.concatenate(pixels[c]).mean(0) for c in range(len(CLASS_NAMES))])
  distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert distances[~np.eye(len(CLASS_NAMES), dtype=bool)].min() > 60
