"""Datasets by name: `build_dataset(config, split)` -> a map-style source of untransformed examples.

Every source has len, [i] (an example, see `detr_jax.data.transforms`), image_hw(i), num_classes,
class_names, coco_gt() (pycocotools ground truth for box AP) and validate() (raises one
`DatasetError` listing every problem found in its files, or returns; `validate_datasets(train, val)`
before training reports both splits at once).
Mistakes in the dataset settings or files raise `DatasetError` / `DatasetNotFoundError` (UserErrors).
"""
import os

from detr_jax.data.coco import CocoDetection, CocoPanoptic
from detr_jax.data.synthetic import SyntheticShapes
from detr_jax.data.validation import DatasetError, DatasetNotFoundError

SPLITS = ("train", "val")
TFDS_MODULES = ("tensorflow_datasets", "array_record")  # the tfds extra: pip install 'detr-jax[tfds]'


def _path(config_key: str, path: str) -> str:
  if not path:
    raise DatasetError(f"dataset.{config_key} is not set")
  if not os.path.exists(path):
    raise DatasetNotFoundError(f"{path} (dataset.{config_key}) does not exist")
  return path


def _tfds_source():
  """The TfdsCoco class; a DatasetError saying what to install when the tfds extra is missing."""
  try:
    from detr_jax.data.tfds_source import TfdsCoco
  except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] not in TFDS_MODULES:
      raise
    raise DatasetError(f"dataset.name=tfds needs tensorflow-datasets and array-record ({e.name} is not "
                       f"installed): pip install 'detr-jax[tfds]'") from None
  return TfdsCoco


def build_dataset(config, split: str):
  """The source of `config.dataset` for split "train" or "val"; reads only that split's settings."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  ds = config.dataset
  name = f"{ds.name} {split}"
  if config.model.masks and not ds.get("masks", True):
    raise DatasetError("model.masks=True needs instance masks: set dataset.masks=True")
  if ds.name == "synthetic":
    size = ds.num_train if split == "train" else ds.num_val
    min_objects, max_objects = ds.num_objects
    return SyntheticShapes(size, image_size=tuple(ds.image_size), min_objects=min_objects,
                           max_objects=max_objects, object_size=tuple(ds.object_size), seed=ds.seed,
                           split=split)
  if ds.name == "coco":
    root = _path("coco_path", ds.coco_path)
    return CocoDetection(os.path.join(root, f"{split}2017"),
                         os.path.join(root, "annotations", f"instances_{split}2017.json"), masks=ds.masks,
                         num_classes=config.model.num_classes, name=name)
  if ds.name == "coco_panoptic":
    root, pan = _path("coco_path", ds.coco_path), _path("coco_panoptic_path", ds.coco_panoptic_path)
    return CocoPanoptic(os.path.join(root, f"{split}2017"), os.path.join(pan, f"panoptic_{split}2017"),
                        os.path.join(pan, "annotations", f"panoptic_{split}2017.json"), masks=ds.masks,
                        name=name)
  if ds.name == "coco_custom":
    images, ann = ds[f"{split}_images"], ds[f"{split}_json"]
    num_classes = config.model.num_classes if config.model.num_classes > 0 else None
    return CocoDetection(_path(f"{split}_images", images), _path(f"{split}_json", ann), masks=ds.masks,
                         num_classes=num_classes, name=name)
  if ds.name == "tfds":
    return _tfds_source()(ds.tfds_name, split, data_dir=ds.tfds_data_dir or None, masks=ds.masks)
  raise DatasetError(f"unknown dataset {ds.name!r} (dataset.name); available: synthetic, coco, coco_panoptic, "
                     f"coco_custom, tfds")


def validate_datasets(*datasets) -> None:
  """Runs each dataset's validate(); raises one DatasetError with all their reports (e.g. train and val)."""
  reports = []
  for dataset in datasets:
    try:
      dataset.validate()
    except DatasetError as e:
      reports.append(str(e))
  if reports:
    raise DatasetError("\n".join(reports))


def resolve_num_classes(config, split: str = "train") -> None:
  """For model.num_classes <= 0 (coco_custom): max category id + 1 of `split`'s json.

  Training resolves it from "train"; evaluation can use "val", so that it needs no train setting.
  """
  if config.model.num_classes <= 0:
    config.model.num_classes = build_dataset(config, split).num_classes
