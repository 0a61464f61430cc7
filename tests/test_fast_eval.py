"""hotcoco, the default COCO evaluator, gives pycocotools' 12 box and 12 mask numbers bit for bit."""
import json
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_util

from detr_jax.config import COCO_EVALUATORS
from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes
from detr_jax.errors import UserError
from detr_jax.evaluation import STAT_NAMES, CocoEvaluator, coco_from_examples, coco_from_json

CATEGORIES = (1, 3, 7, 8, 12, 20)  # 20 has no ground truth
H, W = 64, 80


def _uncompressed_rle(mask):
  """COCO's uncompressed RLE (counts a list, column-major runs starting with 0s), as crowd annotations have it."""
  flat = np.asfortranarray(mask).ravel(order="F")
  changes = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
  return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def _blob(rng):
  """A random binary mask [H, W]: a rectangle, sometimes with holes."""
  mask = np.zeros((H, W), np.uint8)
  y, x = rng.integers(0, H - 2), rng.integers(0, W - 2)
  mask[y:y + rng.integers(2, 40), x:x + rng.integers(2, 50)] = 1
  if rng.random() < 0.3:
    mask &= (rng.random((H, W)) < 0.7).astype(np.uint8)
    mask[y, x] = 1
  return mask


def _random_case(tmp_path, seed=0, num_images=40):
  """A ground-truth json with polygons, compressed RLEs and crowd regions (uncompressed RLEs), several categories,
  images without objects and areas on the small/medium boundaries; detections with masks per image -> (json path,
  [(image_id, boxes xyxy, scores, labels, masks [K, H, W])])."""
  rng = np.random.default_rng(seed)
  images, annotations, detections = [], [], []
  for image_id in range(1, num_images + 1):
    images.append({"id": image_id, "height": H, "width": W})
    gt_masks, gt_labels = [], []
    for _ in range(0 if image_id % 6 == 0 else rng.integers(1, 9)):
      label, crowd = int(rng.choice(CATEGORIES[:-1])), int(rng.random() < 0.15)
      kind = "crowd" if crowd else rng.choice(["polygon", "rle"])
      if kind == "polygon":
        x0, y0 = rng.uniform(0, W - 4), rng.uniform(0, H - 4)
        x1, y1 = rng.uniform(x0 + 2, W), rng.uniform(y0 + 2, H)
        segmentation = [[x0, y0, x1, y0 + rng.uniform(0, y1 - y0), x1, y1, x0 + rng.uniform(0, x1 - x0), y1]]
        mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(segmentation, H, W)))
      else:
        mask = _blob(rng)
        rle = mask_util.encode(np.asfortranarray(mask))
        segmentation = _uncompressed_rle(mask) if crowd else {"size": [H, W], "counts": rle["counts"].decode()}
      area = float(mask.sum()) if rng.random() < 0.8 else float(rng.choice([32 ** 2, 96 ** 2]))
      x, y, w, h = mask_util.toBbox(mask_util.encode(np.asfortranarray(mask))).tolist()
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                          "bbox": [x, y, w, h], "area": area, "iscrowd": crowd, "segmentation": segmentation})
      gt_masks.append(mask)
      gt_labels.append(label)
    # Detections: none on every 7th image, 120 (more than maxDets 100) on image 5; near an object (moved masks,
    # jittered boxes, sometimes the wrong class) or anywhere; scores in steps of 0.1 (ties).
    num_detections = 0 if image_id % 7 == 0 else 120 if image_id == 5 else int(rng.integers(1, 15))
    masks, labels = [], []
    for _ in range(num_detections):
      if gt_masks and rng.random() < 0.7:
        k = rng.integers(len(gt_masks))
        masks.append(np.roll(gt_masks[k], rng.integers(-1, 2, 2), axis=(0, 1)))
        labels.append(gt_labels[k] if rng.random() < 0.8 else int(rng.choice(CATEGORIES)))
      else:
        masks.append(_blob(rng))
        labels.append(int(rng.choice(CATEGORIES)))
    masks = np.array(masks, np.uint8).reshape(-1, H, W)
    boxes = np.array([mask_util.toBbox(mask_util.encode(np.asfortranarray(m))) for m in masks]).reshape(-1, 4)
    boxes = boxes + rng.normal(0, 1, boxes.shape)
    boxes[:, 2:] = boxes[:, :2] + np.maximum(boxes[:, 2:], 0)  # xywh -> xyxy; some boxes have no width
    detections.append((image_id, boxes, np.round(rng.random(num_detections), 1), np.array(labels), masks))
  path = tmp_path / f"instances_{seed}.json"
  path.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}))
  return str(path), detections


def _summaries(gt, detections, evaluator):
  """{"bbox": 12 stats, "segm": 12 stats} of `evaluator` on the detections."""
  coco_evaluator = CocoEvaluator(gt, evaluator)
  for image_id, boxes, scores, labels, masks in detections:
    coco_evaluator.add(image_id, boxes, scores, labels, masks)
  return {iou_type: coco_evaluator.summarize(iou_type) for iou_type in ("bbox", "segm")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_case_equals_pycocotools(tmp_path, seed):
  """Crowd regions, 6 categories, images without objects or detections, an image not evaluated, >100 detections."""
  path, detections = _random_case(tmp_path, seed)
  detections = [d for d in detections if d[0] != 3]  # image 3 is not evaluated
  reference = _summaries(coco_from_json(path), detections, "pycocotools")
  fast = _summaries(coco_from_json(path), detections, "hotcoco")
  assert fast == reference  # all 24 numbers, bit for bit
  for iou_type in ("bbox", "segm"):
    assert tuple(fast[iou_type]) == STAT_NAMES
    assert 0.05 < fast[iou_type]["AP"] < 0.9 and fast[iou_type]["AP50"] > fast[iou_type]["AP75"], fast[iou_type]


def test_ground_truth_used_by_pycocotools_first(tmp_path):
  """pycocotools writes into the ground truth (an "ignore" key, RLEs with bytes counts); hotcoco reads it the same."""
  path, detections = _random_case(tmp_path, seed=3, num_images=12)
  gt = coco_from_json(path)
  reference = _summaries(gt, detections, "pycocotools")
  assert any(isinstance(a["segmentation"].get("counts"), bytes) for a in gt.dataset["annotations"]
             if isinstance(a["segmentation"], dict))
  assert _summaries(gt, detections, "hotcoco") == reference


def test_synthetic_shapes_equal_pycocotools():
  """Our synthetic data with jittered, dilated, relabelled and spurious masks (as in test_coco_eval)."""
  ds = SyntheticShapes(10, seed=7)
  examples = [ds[i] for i in range(len(ds))]
  rng = np.random.default_rng(0)
  detections = []
  for e in examples:
    q = 6
    masks, labels = np.zeros((q, 128, 128), np.uint8), rng.integers(0, len(CLASS_NAMES), q)
    for k, (mask, label) in enumerate(zip(e["masks"], e["labels"])):
      moved = np.roll(mask, rng.integers(-3, 4, 2), axis=(0, 1))
      masks[k] = moved | np.roll(moved, 1, axis=1) if rng.random() < 0.5 else moved
      labels[k] = label if rng.random() < 0.8 else labels[k]
    for k in range(len(e["labels"]), q):
      y, x = rng.integers(0, 100, 2)
      masks[k, y:y + rng.integers(3, 28), x:x + rng.integers(3, 28)] = 1
    boxes = np.concatenate([e["boxes"] + rng.normal(0, 2, e["boxes"].shape), rng.random((q - len(e["boxes"]), 4)) * 64
                            + [0, 0, 64, 64]])
    detections.append((e["image_id"], boxes, rng.random(q), labels, masks))
  gt = coco_from_examples(examples, CLASS_NAMES)
  reference = _summaries(gt, detections, "pycocotools")
  assert _summaries(gt, detections, "hotcoco") == reference
  assert 0.1 < reference["segm"]["AP"] < 0.9 and 0.1 < reference["bbox"]["AP"] < 0.9


def test_evaluator_choice_and_missing_package(monkeypatch):
  examples = [SyntheticShapes(2, seed=1)[i] for i in range(2)]
  gt = coco_from_examples(examples, CLASS_NAMES)
  assert COCO_EVALUATORS == ("hotcoco", "pycocotools") and CocoEvaluator(gt).evaluator == "hotcoco"
  with pytest.raises(ValueError, match=r"evaluator must be one of \('hotcoco', 'pycocotools'\), got 'faster'"):
    CocoEvaluator(gt, "faster")
  evaluator = CocoEvaluator(gt)
  evaluator.add(examples[0]["image_id"], examples[0]["boxes"], np.ones(len(examples[0]["labels"])),
                examples[0]["labels"])
  monkeypatch.setitem(sys.modules, "hotcoco", None)  # import hotcoco raises ImportError
  with pytest.raises(UserError) as error:
    evaluator.summarize()
  assert str(error.value) == ("coco_evaluator 'hotcoco' needs the hotcoco package (pip install 'hotcoco>=1.3.0'), "
                              "or set --config.coco_evaluator=pycocotools")
