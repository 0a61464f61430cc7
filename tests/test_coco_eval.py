"""COCO box AP through pycocotools: perfect, shifted, half-detected and empty detections."""
import json

import numpy as np
import pytest

from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes
from detr_jax.evaluation import STAT_NAMES, CocoEvaluator, coco_box_ap, coco_from_examples, coco_from_json

HALF = 51 / 101  # precision 1 up to recall 0.5 on the 101 recall thresholds, then 0


def _example(image_id, boxes, labels, h=100, w=120):
  return {"image": np.zeros((h, w, 3), np.uint8), "boxes": np.array(boxes, np.float32).reshape(-1, 4),
          "labels": np.array(labels, np.int32), "image_id": image_id, "orig_size": np.array([h, w], np.int32)}


@pytest.fixture(scope="module")
def synthetic():
  ds = SyntheticShapes(12, seed=5)
  examples = [ds[i] for i in range(len(ds))] + [_example(100, [], [], 128, 128)]
  return examples, coco_from_examples(examples, CLASS_NAMES)


def test_perfect_detections(synthetic):
  examples, gt = synthetic
  evaluator = CocoEvaluator(gt)
  for e in examples:
    evaluator.add(e["image_id"], e["boxes"], np.ones(len(e["labels"])), e["labels"])
  stats = evaluator.summarize()
  assert tuple(stats) == STAT_NAMES
  for name in ("AP", "AP50", "AP75", "AR10", "AR100"):  # AR1: 1 box per class and image
    assert stats[name] == pytest.approx(1.0), name


@pytest.mark.parametrize("shift,ap,ap50,ap75", [(0.1, 0.7, 1.0, 1.0), (0.2, 0.4, 1.0, 0.0)])
def test_shifted_boxes_lower_ap(synthetic, shift, ap, ap50, ap75):
  """Shifting x by a fraction s of the width gives IoU (1 - s) / (1 + s): 0.82 and 0.67."""
  examples, gt = synthetic
  evaluator = CocoEvaluator(gt)
  for e in examples:
    dx = shift * (e["boxes"][:, 2] - e["boxes"][:, 0])
    moved = e["boxes"] + np.stack([dx, 0 * dx, dx, 0 * dx], -1)
    evaluator.add(e["image_id"], moved, np.ones(len(e["labels"])), e["labels"])
  stats = evaluator.summarize()
  assert (stats["AP"], stats["AP50"], stats["AP75"]) == pytest.approx((ap, ap50, ap75))


def test_half_detected_known_ap():
  boxes = [(10, 10, 40, 40), (60, 50, 100, 90)]
  examples = [_example(1, boxes, [0, 1]), _example(2, boxes, [0, 1]), _example(3, [], [])]
  evaluator = CocoEvaluator(coco_from_examples(examples, ("a", "b")))
  evaluator.update([1, 2], np.array([[0.9, 0.8], [0.0, 0.0]]), np.array([[0, 1], [0, 1]]),
                   np.array([boxes, [(0, 0, 1, 1), (0, 0, 1, 1)]], np.float32))
  evaluator.add(3, np.zeros((0, 4)), [], [])
  stats = evaluator.summarize()
  assert stats["AP50"] == pytest.approx(HALF) and stats["AP"] == pytest.approx(HALF)
  assert stats["AR100"] == pytest.approx(0.5)
  assert stats["APs"] == pytest.approx(HALF) and stats["APl"] == -1.0  # areas 900 and 1600: small, medium


def test_coco_box_ap_from_detection_dicts():
  boxes = [(10, 10, 40, 40), (60, 50, 100, 90)]
  examples = [_example(1, boxes, [4, 7]), _example(2, boxes, [4, 7])]
  detections = [{"image_id": 1, "boxes": np.array(boxes), "scores": np.array([0.9, 0.8]), "labels": [4, 7]},
                {"image_id": 2, "boxes": np.zeros((0, 4)), "scores": [], "labels": []}]
  stats = coco_box_ap(examples, detections)
  assert stats["AP50"] == pytest.approx(HALF)
  assert coco_box_ap(examples, detections[:1])["AP"] == pytest.approx(1.0)  # only image 1 evaluated


def test_no_detections_and_unknown_images(synthetic):
  examples, gt = synthetic
  evaluator = CocoEvaluator(gt)
  for e in examples:
    evaluator.add(e["image_id"], np.zeros((0, 4)), [], [])
  stats = evaluator.summarize()
  assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0
  with pytest.raises(ValueError, match="image_id 999 is not in the ground truth"):
    evaluator.add(999, np.zeros((0, 4)), [], [])
  with pytest.raises(ValueError, match="already added"):
    evaluator.add(0, np.zeros((0, 4)), [], [])
  with pytest.raises(ValueError, match="no images"):
    CocoEvaluator(gt).summarize()


def test_ground_truth_from_json(synthetic, tmp_path):
  examples, gt = synthetic
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(gt.dataset))
  evaluator = CocoEvaluator(coco_from_json(str(path)))
  for e in examples:
    evaluator.add(e["image_id"], e["boxes"], np.ones(len(e["labels"])), e["labels"])
  assert evaluator.summarize()["AP"] == pytest.approx(1.0)
