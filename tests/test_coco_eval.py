"""COCO box and mask AP through pycocotools: perfect, shifted, half-detected and empty detections."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes
from detr_jax.evaluation import STAT_NAMES, CocoEvaluator, coco_from_examples, coco_from_json

HALF = 51 / 101  # precision 1 up to recall 0.5 on the 101 recall thresholds, then 0


def coco_box_ap(examples, detections, class_names=None):
  """The 12 stats of detections ({image_id, boxes, scores, labels} per image, as `add` takes them)
  against the ground truth of `examples`; only images with an entry in `detections` are evaluated."""
  evaluator = CocoEvaluator(coco_from_examples(examples, class_names))
  for d in detections:
    evaluator.add(d["image_id"], d["boxes"], d["scores"], d["labels"])
  return evaluator.summarize()


def summarize_all(evaluator):
  """{iou type: {name: float}} for every iou type the evaluator has."""
  return {iou_type: evaluator.summarize(iou_type) for iou_type in evaluator.iou_types}


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


@pytest.fixture(scope="module")
def shapes():
  ds = SyntheticShapes(10, seed=7)
  examples = [ds[i] for i in range(len(ds))]
  return examples, coco_from_examples(examples, CLASS_NAMES)


def _pycocotools_segm(gt, image_ids, scores, labels, masks):
  """The 12 segm stats straight from pycocotools: per-mask RLEs (as the official code encodes them), loadRes."""
  results = [{"image_id": int(i), "category_id": int(l), "score": float(s),
              "segmentation": mask_util.encode(np.array(m[0, :, :, None], np.uint8, order="F"))[0]}
             for i, ss, ll, mm in zip(image_ids, scores, labels, masks) for s, l, m in zip(ss, ll, mm)]
  with contextlib.redirect_stdout(io.StringIO()):
    coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
    coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  return dict(zip(STAT_NAMES, coco_eval.stats.tolist()))


def test_perfect_masks(shapes):
  examples, gt = shapes
  evaluator = CocoEvaluator(gt)
  for e in examples:  # [K, 1, H, W] uint8, as postprocess_segm gives them
    masks = e["masks"][:, None].astype(np.uint8)
    evaluator.add(e["image_id"], e["boxes"], np.ones(len(e["labels"])), e["labels"], masks)
  assert evaluator.iou_types == ("bbox", "segm")
  stats = summarize_all(evaluator)
  assert tuple(stats) == ("bbox", "segm") and tuple(stats["segm"]) == STAT_NAMES
  for name in ("AP", "AP50", "AP75", "AR10", "AR100"):
    assert stats["segm"][name] == pytest.approx(1.0), name
    assert stats["bbox"][name] == pytest.approx(1.0), name
  assert stats["bbox"] == evaluator.summarize()


def test_shifted_masks_lower_ap(shapes):
  """Masks moved 4 pixels right (boxes kept): segm AP drops, box AP stays 1; equal to pycocotools called directly."""
  examples, gt = shapes
  evaluator = CocoEvaluator(gt)
  ids, scores, labels, masks = [], [], [], []
  for e in examples:
    ids.append(e["image_id"])
    scores.append(np.ones(len(e["labels"])))
    labels.append(e["labels"])
    masks.append(np.roll(e["masks"], 4, axis=2)[:, None])
    evaluator.add(ids[-1], e["boxes"], scores[-1], labels[-1], masks[-1].astype(bool))
  stats = summarize_all(evaluator)
  assert stats["bbox"]["AP"] == pytest.approx(1.0)
  assert 0.0 < stats["segm"]["AP"] < stats["segm"]["AP50"] <= 1.0
  assert stats["segm"] == _pycocotools_segm(gt, ids, scores, labels, masks)


def test_segm_matches_pycocotools(shapes):
  """Random scores, jittered and dilated masks, wrong labels and spurious blobs, batched with update()."""
  examples, gt = shapes
  rng = np.random.default_rng(0)
  q = 6
  ids, scores, labels, masks, boxes = [], [], [], [], []
  for e in examples:
    m = np.zeros((q, 1, 128, 128), np.uint8)
    lab = rng.integers(0, len(CLASS_NAMES), q)
    for k, (mask, label) in enumerate(zip(e["masks"], e["labels"])):
      moved = np.roll(mask, rng.integers(-3, 4, 2), axis=(0, 1))
      m[k, 0] = moved | np.roll(moved, 1, axis=1) if rng.random() < 0.5 else moved
      lab[k] = label if rng.random() < 0.8 else lab[k]
    for k in range(len(e["labels"]), q):
      y, x = rng.integers(0, 100, 2)
      m[k, 0, y:y + rng.integers(3, 28), x:x + rng.integers(3, 28)] = 1
    ids.append(e["image_id"])
    scores.append(rng.random(q))
    labels.append(lab)
    masks.append(m)
    boxes.append(rng.random((q, 4)) * 64 + [0, 0, 64, 64])
  evaluator = CocoEvaluator(gt)
  evaluator.update(ids, np.array(scores), np.array(labels), np.array(boxes), masks)
  stats = evaluator.summarize("segm")
  assert 0.1 < stats["AP"] < 0.9
  assert stats == _pycocotools_segm(gt, ids, scores, labels, masks)


def test_segm_errors(shapes):
  examples, gt = shapes
  e = examples[0]
  evaluator = CocoEvaluator(gt)
  with pytest.raises(ValueError, match=r"image_id 0: masks \(1, 1, 64, 128\) do not match 1 detections at the "
                                       r"original size \(h, w\) = \(128, 128\)"):
    evaluator.add(0, e["boxes"][:1], [1.0], e["labels"][:1], np.ones((1, 1, 64, 128), np.uint8))
  evaluator.add(0, e["boxes"], np.ones(len(e["labels"])), e["labels"], e["masks"])
  with pytest.raises(ValueError, match="image_id 1: masks must be given for every image or for none"):
    evaluator.add(1, np.zeros((0, 4)), [], [])
  bbox_only = CocoEvaluator(gt)
  bbox_only.add(0, e["boxes"], np.ones(len(e["labels"])), e["labels"])
  assert tuple(summarize_all(bbox_only)) == ("bbox",)
  with pytest.raises(ValueError, match="no 'segm' detections"):
    bbox_only.summarize("segm")
  boxes_only_gt = coco_from_examples([_example(1, [(10, 10, 40, 40)], [0])])  # no masks: no segmentation
  no_segmentation = CocoEvaluator(boxes_only_gt)
  no_segmentation.add(1, [(10, 10, 40, 40)], [1.0], [0], np.ones((1, 100, 120), bool))
  assert no_segmentation.summarize()["AP"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match=r"segm AP needs ground-truth segmentations; annotation ids \[1\] have none"):
    no_segmentation.summarize("segm")
