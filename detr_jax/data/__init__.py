"""Datasets by name: `build_dataset(config, split)` -> (map-style dataset, class names)."""
from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes


def build_dataset(config, split: str):
  """The dataset of `config.dataset` for split "train" or "val"."""
  ds = config.dataset
  if ds.name == "synthetic":
    size = ds.num_train if split == "train" else ds.num_val
    return SyntheticShapes(size, image_size=tuple(ds.image_size), min_objects=ds.min_objects,
                           max_objects=ds.max_objects, object_size=tuple(ds.object_size), seed=ds.seed,
                           split=split), CLASS_NAMES
  raise ValueError(f"unknown dataset {ds.name!r}; available: synthetic")
