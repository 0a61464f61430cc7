"""Writes synthetic shapes as COCO-format folders, for tests, benchmarks and trying the pipelines.

  python -m detr_jax.data.fake_coco DIR [--train 64] [--val 16] [--size 480 640]

DIR gets the official layouts: train2017/ val2017/ (JPEG), annotations/instances_*2017.json
(compressed-RLE masks, category ids CATEGORY_IDS) and panoptic/annotations/panoptic_*2017.json
with panoptic/panoptic_*2017/ (PNG; things are the shapes, the rest of the image is one stuff
segment, with a thin void border). DIR must be new or empty (nothing is overwritten); it is
written completely or not at all. Use it with `--config.dataset.coco_path=DIR` (and
`--config.dataset.coco_panoptic_path=DIR/panoptic`).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes
from detr_jax.errors import UserError
from detr_jax.panoptic_png import id2rgb

CATEGORY_IDS = (1, 3, 5, 17, 44, 90)  # thing ids of the six synthetic classes (sparse, as COCO's)
STUFF_ID, STUFF_NAME = 184, "background"
# Image sides the CLI accepts: in smaller images four shapes do not always fit (each keeping most
# of its pixels visible); larger ones take gigabytes of memory to draw.
MIN_SIDE, MAX_SIDE = 16, 4096
CATEGORIES = [{"id": i, "name": n, "supercategory": "shape", "isthing": 1} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]


def _rle(mask):
  rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_split(root: str, split: str, num_images: int, image_size=(480, 640), seed: int = 0,
                quality: int = 95) -> None:
  """Writes `split` (train or val) of the instances and panoptic layouts under `root`."""
  shapes = SyntheticShapes(num_images, image_size=image_size, min_objects=0, max_objects=4, seed=seed,
                           split=split, object_size=(0.2, 0.5))
  for folder in (f"{split}2017", "annotations", f"panoptic/panoptic_{split}2017", "panoptic/annotations"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  images, instances, panoptic = [], [], []
  for i in range(num_images):
    e = shapes[i]
    h, w = e["image"].shape[:2]
    image_id = 1000 + 7 * i  # sparse ids, not in file order
    name = f"{image_id:012d}"
    Image.fromarray(e["image"]).save(os.path.join(root, f"{split}2017", name + ".jpg"), quality=quality)
    images.append({"id": image_id, "file_name": name + ".jpg", "height": h, "width": w})
    ids = np.zeros((h, w), np.int64)
    segments = []
    for k, (mask, label, (x0, y0, x1, y1)) in enumerate(zip(e["masks"], e["labels"], e["boxes"].tolist())):
      bbox = [x0, y0, x1 - x0, y1 - y0]
      instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                        "bbox": bbox, "area": int(mask.sum()), "iscrowd": 0, "segmentation": _rle(mask)})
      segment_id = 1 + 13 * (k + 1)  # non-consecutive
      ids[mask] = segment_id
      segments.append({"id": segment_id, "category_id": CATEGORY_IDS[label], "iscrowd": 0,
                       "bbox": bbox, "area": int(mask.sum())})
    stuff = (ids == 0)
    stuff[[0, -1]], stuff[:, [0, -1]] = False, False  # one-pixel void border
    if stuff.any():
      ids[stuff] = 5
      ys, xs = np.nonzero(stuff)
      segments.append({"id": 5, "category_id": STUFF_ID, "iscrowd": 0, "area": int(stuff.sum()),
                       "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    Image.fromarray(id2rgb(ids)).save(os.path.join(root, f"panoptic/panoptic_{split}2017", name + ".png"))
    panoptic.append({"image_id": image_id, "file_name": name + ".png", "segments_info": segments})
  with open(os.path.join(root, "annotations", f"instances_{split}2017.json"), "w") as f:
    json.dump({"images": images, "annotations": instances, "categories": CATEGORIES}, f)
  stuff_category = {"id": STUFF_ID, "name": STUFF_NAME, "supercategory": "stuff", "isthing": 0}
  with open(os.path.join(root, "panoptic/annotations", f"panoptic_{split}2017.json"), "w") as f:
    json.dump({"images": images, "annotations": panoptic, "categories": CATEGORIES + [stuff_category]}, f)


def write_dataset(root: str, num_train: int, num_val: int, image_size=(480, 640)) -> None:
  """Writes both splits into `root`, a new or empty folder, all at once: they are written into a
  temporary folder beside it, renamed to `root` at the end (removed on any failure or Ctrl-C).

  UserError when `root` is a file or a folder with anything in it (nothing is overwritten), or when
  writing fails (no permission, disk full), naming the folder.
  """
  if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
    raise UserError(f"{root} {'is a file' if not os.path.isdir(root) else 'is not empty'}; give a new or empty "
                    f"folder (nothing is overwritten)")
  parent, name = os.path.split(os.path.abspath(root))
  if os.path.isfile(parent):
    raise UserError(f"cannot write {root}: {parent} is a file")
  tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
  try:
    os.makedirs(parent, exist_ok=True)
    os.mkdir(tmp)
    write_split(tmp, "train", num_train, image_size)
    write_split(tmp, "val", num_val, image_size)
    os.replace(tmp, root)  # replaces an empty folder
  except OSError as e:
    raise UserError(f"cannot write {root}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after the rename


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m detr_jax.data.fake_coco", description=__doc__.splitlines()[0])
  parser.add_argument("root", help="output folder, new or empty")
  parser.add_argument("--train", type=int, default=64, help="training images")
  parser.add_argument("--val", type=int, default=16, help="validation images")
  parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                      help=f"image size, each side {MIN_SIDE}..{MAX_SIDE}")
  args = parser.parse_args(argv)
  if min(args.train, args.val) < 0:
    parser.error(f"--train and --val must be >= 0, got {args.train} and {args.val}")
  if not all(MIN_SIDE <= side <= MAX_SIDE for side in args.size):
    parser.error(f"--size: each side must be in {MIN_SIDE}..{MAX_SIDE}, got {args.size[0]} {args.size[1]}")
  try:
    write_dataset(args.root, args.train, args.val, tuple(args.size))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.train} + {args.val} images to {args.root}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
