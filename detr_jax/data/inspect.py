"""See what the model sees: examples of a split after its transforms, drawn and saved.

  python -m detr_jax.data.inspect --config configs/coco_custom.py --split val --out DIR [--limit N]

Writes DIR/<i>_<image_id>.png (transformed image with its boxes and labels) for the first N
examples in source order, and DIR/examples.npz with, for example i: image_id_i, image_i (float32
HWC, normalised, unpadded), boxes_i (float32 [n, 4] normalised cxcywh), labels_i, area_i,
iscrowd_i, size_i and orig_size_i (h, w), and masks_i (bool [n, h, w]) when masks are loaded.
The train split shows example i augmented with the generator of stream position i.
"""
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from detr_jax.data import build_dataset, transforms
from detr_jax.data.batching import normalize_boxes, normalize_image
from detr_jax.visualize import draw_detections

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_enum("split", "val", ["train", "val"], "Which split (train shows the augmentations).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_integer("limit", 16, "Number of examples (from the start of the split).")
flags.mark_flags_as_required(["config", "out"])


def transformed_examples(config, split: str, limit: int):
  """(source, example) for the first `limit` examples of `split` after the split's transforms."""
  ds, dataset = config.dataset, build_dataset(config, split)
  augment = transforms.Augment(tuple(ds.scales), ds.max_size, tuple(ds.crop_resize), tuple(ds.crop_size))
  for i in range(min(limit, len(dataset))):
    hw = dataset.image_hw(i)
    if not ds.augment:
      plan = ()
    elif split == "train":
      plan = transforms.plan_train(transforms.example_rng(config.seed, i), hw, augment)
    else:
      plan = transforms.plan_val(hw, ds.val_size, ds.max_size)
    yield dataset, transforms.apply_plan(dataset[i], plan)


def inspect(config, split: str, out: str, limit: int) -> str:
  """Writes the pictures and examples.npz (see module doc); returns the npz path."""
  os.makedirs(out, exist_ok=True)
  arrays = {}
  for i, (dataset, e) in enumerate(tqdm(transformed_examples(config, split, limit), desc=split)):
    size = tuple(int(s) for s in e["size"])
    arrays.update({f"image_id_{i}": np.int64(e["image_id"]), f"image_{i}": normalize_image(e["image"]),
                   f"boxes_{i}": normalize_boxes(e["boxes"], size), f"labels_{i}": e["labels"],
                   f"area_{i}": e["area"], f"iscrowd_{i}": e["iscrowd"], f"size_{i}": np.array(size),
                   f"orig_size_{i}": np.asarray(e["orig_size"])})
    if "masks" in e:
      arrays[f"masks_{i}"] = e["masks"]
    picture = draw_detections(e["image"], e["boxes"], e["labels"], class_names=dataset.class_names,
                              masks=e.get("masks"))
    picture.save(os.path.join(out, f"{i:05d}_{e['image_id']}.png"))
  path = os.path.join(out, "examples.npz")
  np.savez_compressed(path, **arrays)
  return path


def main(argv):
  del argv
  try:
    path = inspect(FLAGS.config, FLAGS.split, FLAGS.out, FLAGS.limit)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote pictures and {path}")
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
