"""COCO box and mask AP (COCOeval, iouTypes "bbox" and "segm", maxDets 1/10/100), run quietly.

Two evaluators (`COCO_EVALUATORS`) with the same 12 numbers, bit for bit (tests/test_fast_eval.py): hotcoco
(the default, in Rust; ~100x faster for boxes and ~60x for masks on 5000 images, benchmarks/coco_eval.py) and
pycocotools (the reference). The ground truth is a pycocotools COCO either way.
"""
import contextlib
import io

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_jax.config import COCO_EVALUATORS
from detr_jax.errors import UserError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_from_dict(dataset):
  """A pycocotools COCO of a dataset dict ({"images", "annotations", "categories"}), built quietly."""
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def coco_from_json(path):
  """Ground truth from a COCO instances json file."""
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(path)


def encode_masks(masks):
  """Compressed RLEs (counts as str) of binary masks [K, H, W], or [K, 1, H, W] as postprocess_segm gives them."""
  masks = np.asarray(masks)
  if masks.ndim == 4 and masks.shape[1] == 1:
    masks = masks[:, 0]
  if masks.ndim != 3:
    raise ValueError(f"masks must be [K, H, W] or [K, 1, H, W], got shape {masks.shape}")
  rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
  return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def coco_from_examples(examples, class_names=None):
  """Ground truth from untransformed examples (boxes xyxy in original pixels; category id = label).

  With masks, an annotation has the mask's RLE as segmentation and its pixel count as area (else the box area).
  Categories: one per class name, or (None) the labels present, named by their id.
  """
  images, annotations = [], []
  for e in examples:
    h, w = (int(v) for v in e["orig_size"])
    if tuple(e["image"].shape[:2]) != (h, w):
      raise ValueError(f"image_id {e['image_id']}: image is {e['image'].shape[:2]}, orig_size is "
                       f"{(h, w)}; pass untransformed examples")
    images.append({"id": int(e["image_id"]), "height": h, "width": w})
    rles = encode_masks(np.asarray(e["masks"]).reshape(-1, h, w)) if "masks" in e else None
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(np.asarray(e["boxes"]).tolist(), e["labels"])):
      annotation = {"id": len(annotations) + 1, "image_id": int(e["image_id"]), "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
      if rles is not None:
        annotation.update(segmentation=rles[k], area=float(e["masks"][k].sum()))
      annotations.append(annotation)
  if class_names is None:
    class_names = {a["category_id"]: str(a["category_id"]) for a in annotations}
  else:
    class_names = dict(enumerate(class_names))
  categories = [{"id": i, "name": name} for i, name in sorted(class_names.items())]
  return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


class CocoEvaluator:
  """Collects detections per image and computes the 12 COCO stats of boxes ("bbox") and, with masks, of masks
  ("segm").

  As in the official evaluator, only the images given to `add`/`update` are evaluated (an image
  added with no detections still counts its ground-truth objects as missed). Either every image comes with
  masks or none does. `evaluator`: one of COCO_EVALUATORS.
  """

  def __init__(self, coco_gt, evaluator="hotcoco"):
    if evaluator not in COCO_EVALUATORS:
      raise ValueError(f"evaluator must be one of {COCO_EVALUATORS}, got {evaluator!r}")
    self.coco_gt = coco_gt
    self.evaluator = evaluator
    self.image_ids = set()
    self.detections = {"bbox": [], "segm": []}
    self.with_masks = None

  @property
  def iou_types(self):
    """("bbox",), or ("bbox", "segm") once images came with masks."""
    return ("bbox", "segm") if self.with_masks else ("bbox",)

  def add(self, image_id, boxes, scores, labels, masks=None):
    """One image: boxes [K, 4] xyxy in original pixels, scores [K], labels [K] (category ids); masks: None,
    uint8/bool [K, H0, W0] (or [K, 1, H0, W0], as postprocess_segm gives them) at the original image size,
    or their K RLEs (`encode_masks`)."""
    image_id = int(image_id)
    if image_id not in self.coco_gt.imgs:
      raise ValueError(f"image_id {image_id} is not in the ground truth")
    if image_id in self.image_ids:
      raise ValueError(f"image_id {image_id} was already added")
    if self.with_masks is not None and self.with_masks != (masks is not None):
      raise ValueError(f"image_id {image_id}: masks must be given for every image or for none")
    scores, labels = np.asarray(scores).tolist(), np.asarray(labels).tolist()
    segm = [] if masks is None else self._mask_detections(image_id, masks, scores, labels)
    self.image_ids.add(image_id)
    self.with_masks = masks is not None
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), scores, labels):
      w, h = x1 - x0, y1 - y0
      self.detections["bbox"].append({"id": len(self.detections["bbox"]) + 1, "image_id": image_id,
                                      "category_id": int(label), "bbox": [x0, y0, w, h], "area": w * h,
                                      "score": float(score), "iscrowd": 0})
    for detection in segm:
      self.detections["segm"].append({"id": len(self.detections["segm"]) + 1, **detection})

  def _mask_detections(self, image_id, masks, scores, labels):
    """Mask detections as COCO.loadRes makes them (area and bbox from the RLE), without ids."""
    image = self.coco_gt.imgs[image_id]
    if isinstance(masks, list):  # already encoded
      rles, shape = masks, (len(masks), *(tuple(masks[0]["size"]) if masks else ()))
    else:
      masks = np.asarray(masks)
      rles, shape = None, masks.shape
    if shape[0] != len(scores) or (len(shape) > 1 and shape[-2:] != (image["height"], image["width"])):
      raise ValueError(f"image_id {image_id}: masks {shape} do not match {len(scores)} detections at the "
                       f"original size (h, w) = {(image['height'], image['width'])}")
    rles = encode_masks(masks) if rles is None else rles
    return [{"image_id": image_id, "category_id": int(label), "segmentation": rle, "area": float(coco_mask.area(rle)),
             "bbox": coco_mask.toBbox(rle).tolist(), "score": float(score), "iscrowd": 0}
            for rle, score, label in zip(rles, scores, labels)]

  def update(self, image_ids, scores, labels, boxes, masks=None):
    """A batch as postprocess_boxes returns it: image_ids [B], scores [B, Q], labels [B, Q],
    boxes [B, Q, 4] (xyxy, original pixels); masks: None or B arrays [Q, 1, H_i, W_i] (postprocess_segm)."""
    image_ids = np.asarray(image_ids)
    masks = [None] * len(image_ids) if masks is None else masks
    for image_id, s, l, b, m in zip(image_ids, np.asarray(scores), np.asarray(labels), np.asarray(boxes), masks):
      self.add(image_id, b, s, l, m)

  def summarize(self, iou_type="bbox"):
    """Runs COCOeval ("bbox" or "segm") of the evaluator on the added images -> {name: float} for STAT_NAMES
    (-1 where undefined)."""
    if not self.image_ids:
      raise ValueError("no images were added")
    if iou_type not in self.iou_types:
      raise ValueError(f"no {iou_type!r} detections: evaluated iou types are {self.iou_types} (segm needs masks)")
    gt = self.coco_gt
    if iou_type == "segm":
      unsegmented = [a["id"] for a in gt.dataset["annotations"]
                     if a["image_id"] in self.image_ids and "segmentation" not in a]
      if unsegmented:
        raise ValueError(f"segm AP needs ground-truth segmentations; annotation ids {unsegmented[:5]} have none")
    detections = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                  "annotations": self.detections[iou_type]}
    run = _hotcoco_stats if self.evaluator == "hotcoco" else _pycocotools_stats
    return dict(zip(STAT_NAMES, (float(v) for v in run(gt, detections, iou_type, sorted(self.image_ids)))))


def _pycocotools_stats(gt, detections, iou_type, image_ids):
  """The 12 stats of pycocotools' COCOeval: gt a COCO, detections a dataset dict with scores."""
  return _summarised(COCOeval(gt, coco_from_dict(detections), iou_type), image_ids)


def _hotcoco_stats(gt, detections, iou_type, image_ids):
  """The 12 stats of hotcoco's COCOeval, same arguments as `_pycocotools_stats`."""
  try:
    import hotcoco
  except ImportError:
    raise UserError("coco_evaluator 'hotcoco' needs the hotcoco package (pip install 'hotcoco>=1.3.0'), or set "
                    "--config.coco_evaluator=pycocotools") from None
  return _summarised(hotcoco.COCOeval(hotcoco.COCO(gt.dataset), hotcoco.COCO(detections), iou_type), image_ids)


def _summarised(coco_eval, image_ids):
  """evaluate, accumulate and summarize (quietly) a COCOeval of either library on `image_ids` -> its 12 stats."""
  coco_eval.params.imgIds = image_ids
  with contextlib.redirect_stdout(io.StringIO()):
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  return coco_eval.stats
