"""COCO box AP with pycocotools (COCOeval, iouType "bbox", maxDets 1/10/100), run quietly."""
import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _coco(dataset):
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def coco_from_json(path):
  """Ground truth from a COCO instances json file."""
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(path)


def coco_from_examples(examples, class_names=None):
  """Ground truth from untransformed examples (boxes xyxy in original pixels; category id = label).

  Annotation area is the mask's pixel count when the example has masks, else the box area.
  Categories: one per class name, or (None) the labels present, named by their id.
  """
  images, annotations = [], []
  for e in examples:
    h, w = (int(v) for v in e["orig_size"])
    if tuple(e["image"].shape[:2]) != (h, w):
      raise ValueError(f"image_id {e['image_id']}: image is {e['image'].shape[:2]}, orig_size is "
                       f"{(h, w)}; pass untransformed examples")
    images.append({"id": int(e["image_id"]), "height": h, "width": w})
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(np.asarray(e["boxes"]).tolist(), e["labels"])):
      area = float(e["masks"][k].sum()) if "masks" in e else (x1 - x0) * (y1 - y0)
      annotations.append({"id": len(annotations) + 1, "image_id": int(e["image_id"]),
                          "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": area, "iscrowd": 0})
  if class_names is None:
    class_names = {a["category_id"]: str(a["category_id"]) for a in annotations}
  else:
    class_names = dict(enumerate(class_names))
  categories = [{"id": i, "name": name} for i, name in sorted(class_names.items())]
  return _coco({"images": images, "annotations": annotations, "categories": categories})


class CocoEvaluator:
  """Collects detections per image and computes the 12 COCO box stats.

  As in the official evaluator, only the images given to `add`/`update` are evaluated (an image
  added with no detections still counts its ground-truth objects as missed).
  """

  def __init__(self, coco_gt):
    self.coco_gt = coco_gt
    self.image_ids = set()
    self.detections = []

  def add(self, image_id, boxes, scores, labels):
    """One image: boxes [K, 4] xyxy in original pixels, scores [K], labels [K] (category ids)."""
    image_id = int(image_id)
    if image_id not in self.coco_gt.imgs:
      raise ValueError(f"image_id {image_id} is not in the ground truth")
    if image_id in self.image_ids:
      raise ValueError(f"image_id {image_id} was already added")
    self.image_ids.add(image_id)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), np.asarray(scores).tolist(),
                                              np.asarray(labels).tolist()):
      w, h = x1 - x0, y1 - y0
      self.detections.append({"id": len(self.detections) + 1, "image_id": image_id,
                              "category_id": int(label), "bbox": [x0, y0, w, h], "area": w * h,
                              "score": float(score), "iscrowd": 0})

  def update(self, image_ids, scores, labels, boxes):
    """A batch as postprocess_boxes returns it: image_ids [B], scores [B, Q], labels [B, Q],
    boxes [B, Q, 4] (xyxy, original pixels)."""
    for image_id, s, l, b in zip(*(np.asarray(a) for a in (image_ids, scores, labels, boxes))):
      self.add(image_id, b, s, l)

  def summarize(self):
    """Runs COCOeval on the added images -> {name: float} for STAT_NAMES (-1 where undefined)."""
    if not self.image_ids:
      raise ValueError("no images were added")
    gt = self.coco_gt
    dt = _coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                "annotations": self.detections})
    coco_eval = COCOeval(gt, dt, "bbox")
    coco_eval.params.imgIds = sorted(self.image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in coco_eval.stats)))


def coco_box_ap(examples, detections, class_names=None):
  """The 12 stats of detections ({image_id, boxes, scores, labels} per image, as `add` takes them)
  against the ground truth of `examples`; only images with an entry in `detections` are evaluated."""
  evaluator = CocoEvaluator(coco_from_examples(examples, class_names))
  for d in detections:
    evaluator.add(d["image_id"], d["boxes"], d["scores"], d["labels"])
  return evaluator.summarize()
