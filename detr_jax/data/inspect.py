"""See what the model sees: examples of a split after its transforms, drawn and saved.

  python -m detr_jax.data.inspect --config configs/coco_custom.py --split val --out DIR [--limit N]
      [--config.KEY=VALUE ...]

Writes DIR/<i>_<image_id>.png (transformed image with its boxes and labels) for the first N
examples in source order, and DIR/examples.npz with, for example i: image_id_i, image_i (float32
HWC, normalised, unpadded), boxes_i (float32 [n, 4] normalised cxcywh), labels_i, area_i,
iscrowd_i, size_i and orig_size_i (h, w), and masks_i (bool [n, h, w]) when masks are loaded.
The train split shows example i augmented with the generator of stream position i.

The config is read as train.py reads it (--config.KEY=VALUE sets a field), and the split's dataset
is validated before anything is written, as training does: a config mistake, a missing or broken
dataset (every problem listed) or an output folder that cannot be written is an `error: ...`
message and exit code 1.
"""
import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from detr_jax import config as config_lib
from detr_jax.data import SPLITS, build_dataset, transforms
from detr_jax.data.batching import normalize_boxes, normalize_image
from detr_jax.data.stream import stream_plan
from detr_jax.errors import UserError
from detr_jax.visualize import draw_detections


def transformed_examples(config, dataset, split: str, limit: int):
  """The first `limit` examples of `dataset` (split `split` of config.dataset) after the split's
  transforms, example i planned as at position i of the split's stream."""
  plan = stream_plan(config, dataset, split, global_batch=1)
  for i in range(min(limit, len(dataset))):
    yield transforms.apply_plan(dataset[i], plan.plan(i, i))


def make_out_dir(out: str) -> None:
  """Creates the output folder `out` (and its parents); a UserError when it cannot be written."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file, not a folder")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:  # no permission, a parent is a file, ...
    raise UserError(f"--out {out}: cannot create it ({e.strerror or e})") from None
  if not os.access(out, os.W_OK):
    raise UserError(f"--out {out}: no permission to write in it")


def _save(path: str, save) -> None:
  """save(path); a UserError naming the file when writing fails (e.g. the disk is full)."""
  try:
    save(path)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def inspect(config, split: str, out: str, limit: int) -> str:
  """Writes the pictures and examples.npz (see module doc) after validating the dataset; returns the npz path."""
  dataset = build_dataset(config, split)
  dataset.validate()
  make_out_dir(out)
  arrays = {}
  examples = transformed_examples(config, dataset, split, limit)
  # The bar shows on a terminal only (disable=None).
  for i, e in enumerate(tqdm(examples, desc=split, total=min(limit, len(dataset)), disable=None)):
    size = tuple(int(s) for s in e["size"])
    arrays.update({f"image_id_{i}": np.int64(e["image_id"]), f"image_{i}": normalize_image(e["image"]),
                   f"boxes_{i}": normalize_boxes(e["boxes"], size), f"labels_{i}": e["labels"],
                   f"area_{i}": e["area"], f"iscrowd_{i}": e["iscrowd"], f"size_{i}": np.array(size),
                   f"orig_size_{i}": np.asarray(e["orig_size"])})
    if "masks" in e:
      arrays[f"masks_{i}"] = e["masks"]
    picture = draw_detections(e["image"], e["boxes"], e["labels"], class_names=dataset.class_names,
                              masks=e.get("masks"))
    _save(os.path.join(out, f"{i:05d}_{e['image_id']}.png"), picture.save)
  path = os.path.join(out, "examples.npz")
  _save(path, lambda p: np.savez_compressed(p, **arrays))
  return path


def parse_args(argv):
  """(options, [(KEY, VALUE)] of the --config.KEY=VALUE overrides) of the arguments `argv`."""
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(prog="python -m detr_jax.data.inspect", description=__doc__.splitlines()[0],
                                   allow_abbrev=False)
  parser.add_argument("--config", required=True, help="configuration file, FILE or FILE:ARG (configs/*.py); set "
                      "its fields with --config.KEY=VALUE")
  parser.add_argument("--split", choices=SPLITS, default="val", help="which split (train shows the augmentations)")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--limit", type=int, default=16, help="number of examples (from the start of the split)")
  args = parser.parse_args(rest)
  if args.limit < 1:
    parser.error(f"--limit must be at least 1, got {args.limit}")
  return args, overrides


def main(argv=None) -> int:
  try:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = config_lib.load_config(args.config, overrides)
    path = inspect(config, args.split, args.out, args.limit)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote pictures and {path}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
