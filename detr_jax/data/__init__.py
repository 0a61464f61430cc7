"""Datasets by name: `build_dataset(config, split)` -> a map-style source of untransformed examples.

Every source has len, [i] (an example, see `detr_jax.data.transforms`), image_hw(i), num_classes,
class_names and coco_gt() (pycocotools ground truth for box AP).
"""
import os

from detr_jax.data.coco import CocoDetection, CocoPanoptic
from detr_jax.data.synthetic import SyntheticShapes

SPLITS = ("train", "val")


def _path(config_key: str, path: str) -> str:
  if not path:
    raise ValueError(f"dataset.{config_key} is not set")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} (dataset.{config_key}) does not exist")
  return path


def build_dataset(config, split: str):
  """The source of `config.dataset` for split "train" or "val"."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  ds = config.dataset
  if config.model.masks and not ds.get("masks", True):
    raise ValueError("model.masks=True needs instance masks: set dataset.masks=True")
  if ds.name == "synthetic":
    size = ds.num_train if split == "train" else ds.num_val
    return SyntheticShapes(size, image_size=tuple(ds.image_size), min_objects=ds.min_objects,
                           max_objects=ds.max_objects, object_size=tuple(ds.object_size), seed=ds.seed,
                           split=split)
  if ds.name == "coco":
    root = _path("coco_path", ds.coco_path)
    return CocoDetection(os.path.join(root, f"{split}2017"),
                         os.path.join(root, "annotations", f"instances_{split}2017.json"), masks=ds.masks,
                         num_classes=config.model.num_classes)
  if ds.name == "coco_panoptic":
    root, pan = _path("coco_path", ds.coco_path), _path("coco_panoptic_path", ds.coco_panoptic_path)
    return CocoPanoptic(os.path.join(root, f"{split}2017"), os.path.join(pan, f"panoptic_{split}2017"),
                        os.path.join(pan, "annotations", f"panoptic_{split}2017.json"), masks=ds.masks)
  if ds.name == "coco_custom":
    images, ann = ds[f"{split}_images"], ds[f"{split}_json"]
    num_classes = config.model.num_classes if config.model.num_classes > 0 else None
    return CocoDetection(_path(f"{split}_images", images), _path(f"{split}_json", ann), masks=ds.masks,
                         num_classes=num_classes)
  if ds.name == "tfds":
    from detr_jax.data.tfds_source import TfdsCoco
    return TfdsCoco(ds.tfds_name, split, data_dir=ds.tfds_data_dir or None, masks=ds.masks)
  raise ValueError(f"unknown dataset {ds.name!r}; available: synthetic, coco, coco_panoptic, coco_custom, tfds")


def resolve_num_classes(config) -> None:
  """For coco_custom with model.num_classes <= 0: max category id + 1 of the training json."""
  if config.model.num_classes <= 0:
    config.model.num_classes = build_dataset(config, "train").num_classes
