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

from detr_jax.coco_categories import is_thing_map
from detr_jax.data.images import read_image
from detr_jax.data.validation import DatasetError, DatasetNotFoundError, Problems, check_images
from detr_jax.evaluation.coco import coco_from_dict, coco_from_json
from detr_jax.panoptic_png import rgb2id


def _read_json(path: str, kind: str) -> dict:
  """The COCO `kind` json at `path`: a dict with the lists images, annotations and categories."""
  if not os.path.isfile(path):
    raise DatasetNotFoundError(f"{path}: annotation file not found")
  with open(path, "rb") as f:
    try:
      data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DatasetError(f"{path}: not valid JSON ({e})") from None
  keys = ("images", "annotations", "categories")
  missing = [k for k in keys if not isinstance(data, dict) or k not in data]
  if missing:
    raise DatasetError(f"{path}: missing top-level key(s) {missing} (is it a COCO {kind} file?)")
  not_lists = [k for k in keys if not isinstance(data[k], list)]
  if not_lists:
    raise DatasetError(f"{path}: top-level {not_lists} must be list(s)")
  return data


_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", (int, float): "a number"}


def _entry_problem(entry, fields: dict, where: str) -> str | None:
  """The problem of a json entry that is not an object with these keys of these types, or None.

  fields: key -> type (a key of `_TYPE_NAMES`)."""
  if not isinstance(entry, dict):
    return f"{where}: expected an object, got {json.dumps(entry)[:200]}"
  missing = [k for k in fields if k not in entry]
  if missing:
    return f"{where}: missing key(s) {missing} in {json.dumps(entry)[:200]}"
  wrong = [f"{k} must be {_TYPE_NAMES[t]}" for k, t in fields.items() if not isinstance(entry[k], t)]
  return f"{where}: {', '.join(wrong)} in {json.dumps(entry)[:200]}" if wrong else None


def _ids(entries, key: str) -> set:
  """The integer `key` values of the json objects in `entries` (well-formed or not)."""
  return {e[key] for e in entries if isinstance(e, dict) and isinstance(e.get(key), int)}


def _image_entries(images, fields: dict, ann_file: str, problems: list) -> list:
  """The entries of a json's "images" with `fields`, a new id and a positive size, sorted by id.

  The others are described in `problems`."""
  valid, seen = [], set()
  for img in images:
    problem = _entry_problem(img, fields, f"{ann_file}: image")
    if problem is None and img["id"] in seen:
      problem = f"{ann_file}: image id {img['id']} appears more than once"
    if problem is None and not (img["height"] > 0 and img["width"] > 0):
      problem = (f"{ann_file}: image id {img['id']}: height and width must be positive, got "
                 f"{img['height']} and {img['width']}")
    if isinstance(img, dict) and isinstance(img.get("id"), int):
      seen.add(img["id"])
    if problem is None:
      valid.append(img)
    else:
      problems.append(problem)
  return sorted(valid, key=lambda img: img["id"])


def _category_ids(categories, ann_file: str, problems: list) -> set:
  """The integer ids of a json's "categories"; the other entries are described in `problems`."""
  ids = set()
  for c in categories:
    problem = _entry_problem(c, {"id": int}, f"{ann_file}: category")
    if problem is None:
      ids.add(c["id"])
    else:
      problems.append(problem)
  return ids


def _segmentation_problem(seg, h: int, w: int, where: str) -> str | None:
  """The problem of an instance segmentation (polygon list or RLE of an h x w image), or None."""
  if isinstance(seg, dict):
    if "counts" not in seg or "size" not in seg:
      return f"{where}: RLE segmentation needs 'counts' and 'size', got keys {sorted(seg)}"
    if seg["size"] != [h, w]:
      return f"{where}: RLE size {seg['size']} is not the image's [{h}, {w}] (h, w)"
    return None
  if not isinstance(seg, list) or not seg:
    return f"{where}: no segmentation (polygons or RLE) but masks were requested"
  if not all(isinstance(p, list) for p in seg):
    return f"{where}: segmentation must be a list of polygons (lists of x, y numbers) or an RLE object"
  bad = [p for p in seg if len(p) < 6 or len(p) % 2]
  if bad:
    return (f"{where}: polygon with {len(bad[0])} numbers; a polygon needs an even number >= 6 "
            f"(x, y pairs of at least 3 points)")
  return None


def load_image(path: str, expected_hw=None) -> np.ndarray:
  """uint8 [H, W, 3] RGB; checks the size against the json's (height, width)."""
  try:
    image = read_image(path)
  except FileNotFoundError:
    raise DatasetNotFoundError(f"{path}: image not found") from None
  except (OSError, Image.DecompressionBombError) as e:
    raise DatasetError(f"{path}: cannot decode image ({e})") from None
  if expected_hw is not None and tuple(image.shape[:2]) != tuple(expected_hw):
    raise DatasetError(f"{path}: image is {image.shape[0]}x{image.shape[1]} (h x w) but the annotation "
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

  Crowd annotations are dropped, boxes clamped to the image, empty boxes dropped (docs/parity.md §10.4);
  labels are the json's category ids. With `num_classes`, a category id >= num_classes is an
  error naming the annotation; without, num_classes = max category id + 1.

  A json with wrong entries (missing keys, unknown image or category ids, ...) is an error listing
  all of them and, as `validate()`, the problems of the image files. name: the dataset's name in
  error messages (default: the json's path).
  """

  def __init__(self, image_dir: str, ann_file: str, masks: bool = False, num_classes: int | None = None,
               name: str | None = None):
    self.image_dir, self.ann_file, self.masks, self.name = image_dir, ann_file, masks, name or ann_file
    data = _read_json(ann_file, "instances")
    problems = []
    self.images = _image_entries(data["images"], {"id": int, "file_name": str, "height": int, "width": int},
                                 ann_file, problems)
    image_ids = _ids(data["images"], "id")
    category_ids = _category_ids(data["categories"], ann_file, problems)
    categories = [c for c in data["categories"] if isinstance(c, dict) and isinstance(c.get("id"), int)]
    self.num_classes = num_classes if num_classes is not None else max(category_ids, default=0) + 1
    self.class_names = class_names_of(categories, self.num_classes)
    self.annotations = {img["id"]: [] for img in self.images}
    for ann in data["annotations"]:
      problem = (_entry_problem(ann, {"id": int, "image_id": int, "category_id": int, "bbox": list},
                                f"{ann_file}: annotation") or self._annotation_problem(ann, image_ids, category_ids))
      if problem is not None:
        problems.append(problem)
      elif ann["image_id"] in self.annotations:  # else its image is wrong, and described
        self.annotations[ann["image_id"]].append(ann)
    self._json_problems = problems
    if problems:
      self.validate()

  def _annotation_problem(self, ann: dict, image_ids, category_ids) -> str | None:
    where = f"{self.ann_file}: annotation id {ann['id']}"
    if ann["image_id"] not in image_ids:
      return f"{where}: image_id {ann['image_id']} is not in 'images'"
    if ann["category_id"] not in category_ids:
      return f"{where}: category_id {ann['category_id']} is not in 'categories'"
    if not 0 <= ann["category_id"] < self.num_classes:
      return (f"{where}: category_id {ann['category_id']} is out of range for num_classes={self.num_classes} "
              f"(labels must be < num_classes; the model has num_classes + 1 outputs, the last one is no-object)")
    bbox = ann["bbox"]
    if not (len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
      return f"{where}: bbox must be [x, y, width, height], got {json.dumps(bbox)[:100]}"
    return None

  def validate(self) -> None:
    """Raises one DatasetError listing every problem found (see `Problems`), or returns.

    Checks the json's entries (see __init__), the segmentations of non-crowd annotations when
    `masks`, and each image file (`detr_jax.data.validation.image_problem`: exists, is a readable
    image of the json's size, not truncated), without decoding the pixels of intact files.
    """
    problems = Problems(self.name)
    problems.extend(self._json_problems)
    if self.masks:
      for img in self.images:
        for ann in self.annotations[img["id"]]:
          if not ann.get("iscrowd", 0):
            problems.add(_segmentation_problem(ann.get("segmentation"), img["height"], img["width"],
                                               f"{self.ann_file}: annotation id {ann['id']}"))
    if not os.path.isdir(self.image_dir):
      problems.add(f"{self.image_dir}: folder not found")
    elif not self.images:
      problems.add(f"{self.ann_file}: no images")
    else:
      files = [(os.path.join(self.image_dir, img["file_name"]), (img["height"], img["width"]))
               for img in self.images]
      problems.extend(check_images(files, f"checking {self.name}"))
    problems.raise_if_any()

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
    problem = _segmentation_problem(seg, h, w, f"{self.ann_file}: annotation id {ann['id']}")
    if problem is not None:
      raise DatasetError(problem)
    if isinstance(seg, dict):
      rle = coco_mask.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
      return coco_mask.decode(rle).astype(bool)
    return coco_mask.decode(coco_mask.frPyObjects(seg, h, w)).any(axis=-1)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
  """bool [n, H, W] -> float32 [n, 4] (x_min, y_min, x_max, y_max), max = last pixel index (official)."""
  rows, cols = masks.any(axis=2), masks.any(axis=1)
  h, w = masks.shape[1:]
  return np.stack([cols.argmax(1), rows.argmax(1), w - 1 - cols[:, ::-1].argmax(1),
                   h - 1 - rows[:, ::-1].argmax(1)], axis=-1).astype(np.float32).reshape(-1, 4)


def _panoptic_annotation_problems(ann, category_ids, ann_file: str) -> list[str]:
  """The problems of one entry of a panoptic json's "annotations" (an image's segments)."""
  problem = _entry_problem(ann, {"image_id": int, "file_name": str, "segments_info": list}, f"{ann_file}: annotation")
  if problem is not None:
    return [problem]
  where, problems = f"{ann_file}: image_id {ann['image_id']}: segment", []
  for segment in ann["segments_info"]:
    problem = _entry_problem(segment, {"id": int, "category_id": int, "area": (int, float), "bbox": list}, where)
    if problem is None and segment["category_id"] not in category_ids:
      problem = f"{where} id {segment['id']}: category_id {segment['category_id']} is not in 'categories'"
    if problem is not None:
      problems.append(problem)
  return problems


class CocoPanoptic:
  """COCO panoptic: segments from the PNG ids, boxes from the masks, crowd segments kept (docs/parity.md §10.5).

  image_dir: the JPEGs (the PNG's name with .jpg); png_dir: the panoptic PNGs. Masks are always
  decoded (the boxes come from them) and returned when `masks`. A json with wrong entries is an
  error listing all of them and, as `validate()`, the problems of the JPEG and PNG files. name: the
  dataset's name in error messages (default: the json's path).
  """

  def __init__(self, image_dir: str, png_dir: str, ann_file: str, masks: bool = True, name: str | None = None):
    self.image_dir, self.png_dir, self.ann_file, self.masks = image_dir, png_dir, ann_file, masks
    self.name = name or ann_file
    data = _read_json(ann_file, "panoptic")
    problems = []
    images = _image_entries(data["images"], {"id": int, "height": int, "width": int}, ann_file, problems)
    category_ids = _category_ids(data["categories"], ann_file, problems)
    by_image = {}
    for ann in data["annotations"]:
      ann_problems = _panoptic_annotation_problems(ann, category_ids, ann_file)
      problems.extend(ann_problems)
      if not ann_problems:
        by_image[ann["image_id"]] = ann
    annotated = _ids(data["annotations"], "image_id")
    problems.extend(f"{ann_file}: image id {img['id']} has no panoptic annotation"
                    for img in images if img["id"] not in annotated)
    self.images = [img for img in images if img["id"] in by_image]
    self.annotations = [by_image[img["id"]] for img in self.images]
    self.categories = [c for c in data["categories"] if isinstance(c, dict) and isinstance(c.get("id"), int)]
    self.num_classes = max(category_ids, default=0) + 1
    self.class_names = class_names_of(self.categories, self.num_classes)
    self.is_thing = is_thing_map(self.num_classes, self.categories)
    self._json_problems = problems
    if problems:
      self.validate()

  def _files(self, i: int) -> tuple[str, str]:
    """(JPEG path, PNG path) of image i."""
    name = self.annotations[i]["file_name"]
    return os.path.join(self.image_dir, name.replace(".png", ".jpg")), os.path.join(self.png_dir, name)

  def validate(self) -> None:
    """Raises one DatasetError listing every problem found (see `Problems`), or returns.

    Checks the json's entries (see __init__) and each JPEG and PNG file as
    `CocoDetection.validate` does. Segments without pixels show when the loader decodes the PNG.
    """
    problems = Problems(self.name)
    problems.extend(self._json_problems)
    folders = [d for d in (self.image_dir, self.png_dir) if not os.path.isdir(d)]
    problems.extend(f"{d}: folder not found" for d in folders)
    if not folders and not self.images:
      problems.add(f"{self.ann_file}: no images")
    elif not folders:
      files = [(path, self.image_hw(i)) for i in range(len(self)) for path in self._files(i)]
      problems.extend(check_images(files, f"checking {self.name}"))
    problems.raise_if_any()

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
    image_path, png_path = self._files(i)
    image = load_image(image_path, (h, w))
    ids = rgb2id(load_image(png_path, (h, w)))
    segments = ann["segments_info"]
    masks = ids[None] == np.array([s["id"] for s in segments], np.int64).reshape(-1, 1, 1)
    empty = [s["id"] for s, m in zip(segments, masks) if not m.any()]
    if empty:
      raise DatasetError(f"{png_path}: segment id {empty[0]} is listed in {self.ann_file} but has no pixels")
    example = {
        "image": image, "boxes": masks_to_boxes(masks),
        "labels": np.array([s["category_id"] for s in segments], np.int32),
        "area": np.array([s["area"] for s in segments], np.float32),
        "iscrowd": np.array([s.get("iscrowd", 0) for s in segments], np.int32),
        "image_id": ann["image_id"], "orig_size": np.array([h, w], np.int32)}
    if self.masks:
      example["masks"] = masks
    return example
