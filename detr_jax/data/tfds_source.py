"""COCO from tensorflow-datasets: `coco/2017` (detection) and `coco/2017_panoptic`, prepared as ArrayRecord.

Same map-style contract as `detr_jax.data.coco` (len, [i], image_hw(i), num_classes, class_names,
coco_gt()), read with `tfds.data_source` and without TensorFlow: the images are decoded here with
PIL from the original JPEG/PNG bytes that tfds stores, exactly as the json sources decode the files.

Differences from the json sources, all from what tfds stores:
- [i] follows tfds' record order (deterministic, shuffled by key), not the image ids' order.
- detection objects come sorted by annotation id (the json's order is lost) and `area` is the json
  area truncated to an integer (tfds stores int64).
- boxes are stored normalised (see `TfdsCoco.__getitem__` for the arithmetic and its float error).
"""
import io

import array_record  # noqa: F401 (tfds.data_source reads ArrayRecord with it; missing: fail on import)
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from detr_jax.data.coco import class_names_of, masks_to_boxes
from detr_jax.data.images import read_image
from detr_jax.data.validation import DatasetError, DatasetNotFoundError
from detr_jax.coco_categories import PANOPTIC_CATEGORIES
from detr_jax.evaluation.coco import coco_from_dict
from detr_jax.panoptic_png import rgb2id

THINGS = tuple((i, name) for i, name, isthing in PANOPTIC_CATEGORIES if isthing)  # = the detection categories
STUFF = tuple((i, name) for i, name, isthing in PANOPTIC_CATEGORIES if not isthing)

SPLITS = {"train": "train", "val": "validation"}


def _resolve(name: str) -> tuple[str, bool]:
  """(name with a version, is panoptic) for a tfds coco name such as "coco/2017".

  Without a version, the installed builder's is added: tfds then reads the prepared files without
  constructing the builder from its code, which needs TensorFlow.
  """
  builder, _, rest = name.partition("/")
  config_name, _, version = rest.partition(":")
  if builder != "coco" or not config_name:
    raise DatasetError(f"tfds name {name!r} (dataset.tfds_name): expected coco/<config>[:version], e.g. "
                       f"coco/2017 or coco/2017_panoptic")
  configs = tfds.builder_cls("coco").builder_configs
  if config_name not in configs:
    raise DatasetError(f"tfds name {name!r} (dataset.tfds_name): unknown coco config {config_name!r}; "
                       f"available: {sorted(configs)}")
  config = configs[config_name]
  return f"coco/{config_name}:{version or config.version}", config.has_panoptic


def _decode(data: bytes, what: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB of encoded JPEG/PNG bytes (PIL, as the json sources)."""
  try:
    return read_image(io.BytesIO(data))
  except (OSError, Image.DecompressionBombError) as e:
    raise DatasetError(f"{what}: cannot decode image ({e})") from None


def _image_hw(data: bytes, what: str) -> tuple[int, int]:
  """(h, w) from the header of encoded image bytes, without decoding the pixels."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      return img.height, img.width
  except (OSError, Image.DecompressionBombError) as e:
    raise DatasetError(f"{what}: cannot read image header ({e})") from None


def _denormalise(bbox, h: int, w: int) -> np.ndarray:
  """tfds BBoxFeature float32 [n, 4] (ymin, xmin, ymax, xmax) / size -> float32 [n, 4] absolute x0, y0, x1, y1."""
  bbox = np.asarray(bbox, np.float32).reshape(-1, 4)
  return bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)


class TfdsCoco:
  """tfds coco/<config> (detection, or panoptic when the config is 2017_panoptic), split "train" or "val".

  data_dir: tfds' data directory (None: tfds' default, $TFDS_DATA_DIR or ~/tensorflow_datasets), holding
  the data prepared with file_format=array_record. Labels are the official category ids (detection
  1..90, panoptic things 1..90 and stuff 92..200), mapped from tfds' contiguous labels by the label
  names stored with the prepared data. num_classes: 91 (detection) or 250 (panoptic), as the official
  models. masks: panoptic only (tfds' detection configs have no instance masks).
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None, masks: bool = False):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    self.name, self.split, self.masks = name, split, masks
    versioned, self.panoptic = _resolve(name)
    if masks and not self.panoptic:
      raise DatasetError(f"tfds {name} has no instance masks: use masks=False, coco/2017_panoptic, or the "
                         f"json source (dataset.name=coco) for masks")
    images = ("image", "panoptic_image") if self.panoptic else ("image",)
    try:
      self._source = tfds.data_source(versioned, split=SPLITS[split], data_dir=data_dir, download=False,
                                      decoders={k: tfds.decode.SkipDecoding() for k in images})
    except (ModuleNotFoundError, AssertionError, NotImplementedError) as e:
      raise DatasetNotFoundError(f"cannot read tfds {versioned} from data_dir={data_dir!r} (None: tfds' default): "
                                 f"is it prepared there as ArrayRecord? See the README's tfds section. ({e})") from e
    self._objects_key = "panoptic_objects" if self.panoptic else "objects"
    names = self._source.dataset_info.features[self._objects_key]["label"].names
    self.categories = [{"id": i, "name": n} for i, n in (THINGS + STUFF if self.panoptic else THINGS)]
    ids = {c["name"]: c["id"] for c in self.categories}
    unknown = [n for n in names if n not in ids]
    if unknown:
      raise DatasetError(f"tfds {versioned}: label name(s) {unknown[:5]} are not official COCO category names; "
                         f"cannot map its labels to the official ids")
    self._label_ids = np.array([ids[n] for n in names], np.int32)
    self.num_classes = 250 if self.panoptic else 91
    self.class_names = class_names_of(self.categories, self.num_classes)
    self._hw = [None] * len(self._source)

  def __len__(self):
    return len(self._source)

  def validate(self) -> None:
    """Raises a DatasetError when the split has no records, or returns.

    The records are not read: checking every image's header would read the whole split (about
    19 GB for coco/2017 train); a record that fails to decode is an error naming it.
    """
    if len(self) == 0:
      raise DatasetError(f"tfds {self.name} {self.split}: the split has no records")

  def _where(self, i: int) -> str:
    return f"tfds {self.name} {self.split} record {i}"

  def image_hw(self, i: int) -> tuple[int, int]:
    """(h, w) of image i: reads record i and parses only the JPEG header; cached."""
    if self._hw[i] is None:
      self._hw[i] = _image_hw(self._source[i]["image"], self._where(i))
    return self._hw[i]

  def coco_gt(self):
    """Box ground truth of the whole split, crowd objects included (reads every record, decodes no image).

    bbox: xywh of the boxes of `__getitem__` (within ~1e-4 px of the json's); area: tfds' integer.
    """
    images, annotations = [], []
    for i in range(len(self)):
      record = self._source[i]
      h, w = self._hw[i] = self._hw[i] or _image_hw(record["image"], self._where(i))
      images.append({"id": int(record["image/id"]), "height": h, "width": w})
      objects = record[self._objects_key]
      boxes = _denormalise(objects["bbox"], h, w)
      for box, label, area, crowd in zip(boxes, objects["label"], objects["area"], objects["is_crowd"]):
        x0, y0, x1, y1 = box.tolist()
        annotations.append({"id": len(annotations) + 1, "image_id": images[-1]["id"],
                            "category_id": int(self._label_ids[label]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": float(area), "iscrowd": int(crowd)})
    return coco_from_dict({"images": images, "annotations": annotations, "categories": self.categories})

  def __getitem__(self, i: int) -> dict:
    """The untransformed example of record i (see `detr_jax.data.transforms`).

    Detection boxes: tfds stored float32(y / H) etc., computed in float64 from the json's xywh (x1 from
    x + w); we return float32(v * W), which is within 2 float32 ulps of the official float32(x) +
    float32(w) (<= 1.3e-4 px for sides < 1024; about 70% of coordinates are bit-identical). tfds
    boxes lie in [0, 1], so the official clamp to the image is a no-op; crowd objects and empty
    boxes (x1 <= x0 or y1 <= y0) are dropped. Panoptic boxes come from the masks (`masks_to_boxes`).
    """
    record = self._source[i]
    where = f"{self._where(i)} (image/id {record['image/id']})"
    image = _decode(record["image"], where)
    h, w = image.shape[:2]
    self._hw[i] = (h, w)
    objects = record[self._objects_key]
    labels = self._label_ids[np.asarray(objects["label"], np.int64)]
    area = np.asarray(objects["area"], np.float32).reshape(-1)
    iscrowd = np.asarray(objects["is_crowd"], bool).reshape(-1)
    example = {"image": image, "image_id": int(record["image/id"]), "orig_size": np.array([h, w], np.int32)}
    if self.panoptic:
      masks = self._masks(record, objects, (h, w), where)
      example.update(boxes=masks_to_boxes(masks), labels=labels, area=area, iscrowd=iscrowd.astype(np.int32))
      if self.masks:
        example["masks"] = masks
      return example
    boxes = _denormalise(objects["bbox"], h, w)
    keep = ~iscrowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    example.update(boxes=boxes[keep], labels=labels[keep], area=area[keep],
                   iscrowd=np.zeros(int(keep.sum()), np.int32))
    return example

  def _masks(self, record, objects, hw, where: str) -> np.ndarray:
    """bool [n, H, W]: the panoptic PNG's segment ids (R + 256 G + 65536 B) == each object's id."""
    ids = rgb2id(_decode(record["panoptic_image"], f"{where} panoptic_image"))
    if ids.shape != hw:
      raise DatasetError(f"{where}: panoptic_image is {ids.shape[0]}x{ids.shape[1]} but the image is "
                         f"{hw[0]}x{hw[1]} (h x w)")
    segment_ids = np.asarray(objects["id"], np.int64).reshape(-1, 1, 1)
    masks = ids[None] == segment_ids
    empty = [int(s) for s, m in zip(segment_ids.ravel(), masks) if not m.any()]
    if empty:
      raise DatasetError(f"{where}: segment id {empty[0]} is listed in panoptic_objects but has no pixels")
    return masks
