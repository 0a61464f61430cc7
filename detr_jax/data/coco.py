"""COCO-format sources: detection (instances json + images) and panoptic (json + PNG folder).

Both are map-style (len, [i]) over the images sorted by id, yield untransformed examples (see
`detr_jax.data.transforms`) with the official class ids, and know each image's size from the json
(`image_hw(i)`) so batches can be planned before anything is decoded.
"""
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from detr_jax.evaluation.coco import coco_from_dict, coco_from_json
from detr_jax.postprocess import rgb2id


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: annotation file not found")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def _require(entry: dict, keys, where: str):
  missing = [k for k in keys if k not in entry]
  if missing:
    raise ValueError(f"{where}: missing key(s) {missing} in {json.dumps(entry)[:200]}")


def load_image(path: str, expected_hw=None) -> np.ndarray:
  """uint8 [H, W, 3] RGB; checks the size against the json's (height, width)."""
  try:
    with Image.open(path) as img:
      image = np.asarray(img.convert("RGB"))
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: image not found") from None
  except OSError as e:
    raise ValueError(f"{path}: cannot decode image ({e})") from None
  if expected_hw is not None and tuple(image.shape[:2]) != tuple(expected_hw):
    raise ValueError(f"{path}: image is {image.shape[0]}x{image.shape[1]} (h x w) but the annotation "
                     f"file says {expected_hw[0]}x{expected_hw[1]}")
  return image


def class_names_of(categories, num_classes: int) -> tuple:
  """Names indexed by class id (ids without a category are named by their number)."""
  names = [str(i) for i in range(num_classes)]
  for c in categories:
    if 0 <= c["id"] < num_classes:
      names[c["id"]] = c.get("name", str(c["id"]))
  return tuple(names)


class CocoDetection:
  """Images of a COCO instances json (all of them, including those without annotations).

  Crowd annotations are dropped, boxes clamped to the image, empty boxes dropped (SPEC 5.2);
  labels are the json's category ids. With `num_classes`, a category id >= num_classes is an
  error naming the annotation; without, num_classes = max category id + 1.
  """

  def __init__(self, image_dir: str, ann_file: str, masks: bool = False, num_classes: int | None = None):
    self.image_dir, self.ann_file, self.masks = image_dir, ann_file, masks
    data = _read_json(ann_file)
    for key in ("images", "annotations", "categories"):
      if key not in data:
        raise ValueError(f"{ann_file}: missing top-level key {key!r} (is it a COCO instances file?)")
    for img in data["images"]:
      _require(img, ("id", "file_name", "height", "width"), f"{ann_file}: image")
    self.images = sorted(data["images"], key=lambda img: img["id"])
    image_ids = {img["id"] for img in self.images}
    category_ids = {c["id"] for c in data["categories"]}
    self.num_classes = num_classes if num_classes is not None else max(category_ids, default=0) + 1
    self.class_names = class_names_of(data["categories"], self.num_classes)
    self.annotations = {img["id"]: [] for img in self.images}
    for ann in data["annotations"]:
      _require(ann, ("id", "image_id", "category_id", "bbox"), f"{ann_file}: annotation")
      where = f"{ann_file}: annotation id {ann['id']}"
      if ann["image_id"] not in image_ids:
        raise ValueError(f"{where}: image_id {ann['image_id']} is not in 'images'")
      if ann["category_id"] not in category_ids:
        raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
      if not 0 <= ann["category_id"] < self.num_classes:
        raise ValueError(f"{where}: category_id {ann['category_id']} is out of range for "
                         f"num_classes={self.num_classes} (labels must be < num_classes; the model "
                         f"has num_classes + 1 outputs, the last one is no-object)")
      if len(ann["bbox"]) != 4:
        raise ValueError(f"{where}: bbox must be [x, y, width, height], got {ann['bbox']}")
      self.annotations[ann["image_id"]].append(ann)
    self._data = data

  def __len__(self):
    return len(self.images)

  def image_hw(self, i: int) -> tuple[int, int]:
    return self.images[i]["height"], self.images[i]["width"]

  def coco_gt(self):
    """pycocotools ground truth of this split (for box/segm AP)."""
    return coco_from_json(self.ann_file)

  def __getitem__(self, i: int) -> dict:
    info = self.images[i]
    h, w = info["height"], info["width"]
    image = load_image(os.path.join(self.image_dir, info["file_name"]), (h, w))
    anns = [a for a in self.annotations[info["id"]] if not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    example = {
        "image": image, "boxes": boxes[keep],
        "labels": np.array([a["category_id"] for a in anns], np.int32)[keep],
        "area": np.array([a.get("area", 0) for a in anns], np.float32)[keep],
        "iscrowd": np.zeros(int(keep.sum()), np.int32),
        "image_id": info["id"], "orig_size": np.array([h, w], np.int32)}
    if self.masks:
      kept = [a for a, k in zip(anns, keep) if k]
      example["masks"] = np.array([self._mask(a, h, w) for a in kept], bool).reshape(-1, h, w)
    return example

  def _mask(self, ann, h, w) -> np.ndarray:
    """bool [h, w] of a polygon list, or of an RLE (uncompressed or compressed)."""
    seg = ann.get("segmentation")
    where = f"{self.ann_file}: annotation id {ann['id']}"
    if isinstance(seg, dict):
      rle = coco_mask.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
      return coco_mask.decode(rle).astype(bool)
    if not isinstance(seg, list) or not seg:
      raise ValueError(f"{where}: no segmentation (polygons or RLE) but masks were requested")
    bad = [p for p in seg if len(p) < 6 or len(p) % 2]
    if bad:
      raise ValueError(f"{where}: polygon with {len(bad[0])} numbers; a polygon needs an even "
                       f"number >= 6 (x, y pairs of at least 3 points)")
    return coco_mask.decode(coco_mask.frPyObjects(seg, h, w)).any(axis=-1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
  """bool [n, H, W] -> float32 [n, 4] (x_min, y_min, x_max, y_max), max = last pixel index (official)."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  h, w = masks.shape[1:]
  return np.stack([cols.argmax(1), rows.argmax(1), w - 1 - cols[:, ::-1].argmax(1),
                   h - 1 - rows[:, ::-1].argmax(1)], axis=-1).astype(np.float32).reshape(-1, 4)


class CocoPanoptic:
  """COCO panoptic: segments from the PNG ids, boxes from the masks, crowd segments kept (SPEC 5.3).

  image_dir: the JPEGs (the PNG's name with .jpg); png_dir: the panoptic PNGs. Masks are always
  decoded (the boxes come from them) and returned when `masks`.
  """

  def __init__(self, image_dir: str, png_dir: str, ann_file: str, masks: bool = True):
    self.image_dir, self.png_dir, self.ann_file, self.masks = image_dir, png_dir, ann_file, masks
    data = _read_json(ann_file)
    for key in ("images", "annotations", "categories"):
      if key not in data:
        raise ValueError(f"{ann_file}: missing top-level key {key!r} (is it a COCO panoptic file?)")
    for img in data["images"]:
      _require(img, ("id", "height", "width"), f"{ann_file}: image")
    for ann in data["annotations"]:
      _require(ann, ("image_id", "file_name", "segments_info"), f"{ann_file}: annotation")
      for segment in ann["segments_info"]:
        _require(segment, ("id", "category_id", "area"), f"{ann_file}: image_id {ann['image_id']}: segment")
    self.images = sorted(data["images"], key=lambda img: img["id"])
    by_image = {a["image_id"]: a for a in data["annotations"]}
    missing = [img["id"] for img in self.images if img["id"] not in by_image]
    if missing:
      raise ValueError(f"{ann_file}: {len(missing)} image(s) without a panoptic annotation, e.g. id {missing[0]}")
    self.annotations = [by_image[img["id"]] for img in self.images]
    self.categories = data["categories"]
    self.num_classes = max(c["id"] for c in self.categories) + 1
    self.class_names = class_names_of(self.categories, self.num_classes)
    self.is_thing = {c["id"]: bool(c.get("isthing", 1)) for c in self.categories}

  def __len__(self):
    return len(self.images)

  def image_hw(self, i: int) -> tuple[int, int]:
    return self.images[i]["height"], self.images[i]["width"]

  def coco_gt(self):
    """Box ground truth from the segments (json bbox, area, iscrowd), things and stuff."""
    segments = [(a["image_id"], s) for a in self.annotations for s in a["segments_info"]]
    annotations = [{"id": k + 1, "image_id": image_id, "category_id": s["category_id"], "bbox": s["bbox"],
                    "area": s["area"], "iscrowd": s.get("iscrowd", 0)} for k, (image_id, s) in enumerate(segments)]
    return coco_from_dict({"images": self.images, "annotations": annotations, "categories": self.categories})

  def __getitem__(self, i: int) -> dict:
    info, ann = self.images[i], self.annotations[i]
    h, w = info["height"], info["width"]
    image = load_image(os.path.join(self.image_dir, ann["file_name"].replace(".png", ".jpg")), (h, w))
    png_path = os.path.join(self.png_dir, ann["file_name"])
    ids = rgb2id(load_image(png_path, (h, w)))
    segments = ann["segments_info"]
    masks = ids[None] == np.array([s["id"] for s in segments], np.int64).reshape(-1, 1, 1)
    empty = [s["id"] for s, m in zip(segments, masks) if not m.any()]
    if empty:
      raise ValueError(f"{png_path}: segment id {empty[0]} is listed in {self.ann_file} but has no pixels")
    example = {
        "image": image, "boxes": masks_to_boxes(masks),
        "labels": np.array([s["category_id"] for s in segments], np.int32),
        "area": np.array([s["area"] for s in segments], np.float32),
        "iscrowd": np.array([s.get("iscrowd", 0) for s in segments], np.int32),
        "image_id": ann["image_id"], "orig_size": np.array([h, w], np.int32)}
    if self.masks:
      example["masks"] = masks
    return example
