"""Run a model checkpoint on images: detections (and panoptic segments) drawn and written as JSON.

  python -m detr_jax.predict --checkpoint DIR IMAGE... [--out-dir D] [--threshold 0.7] [--batch-size N] \
      [--dtype float32|bfloat16] [--mask-queries 25] [--runtime jax|onnxruntime] [--onnx-cache DIR|none]

DIR: a converted official checkpoint or a training checkpoint (WORKDIR/checkpoints/<step>). Images
are prepared as the validation pipeline prepares them (the training config's dataset settings, else
the official resize to 800, at most 1333) and zero-padded to a bucket shape; the forward pass
compiles once per bucket shape. The model isolates the padding in its backbone and the masks are
cropped to the image, so each image gets the results of the model run on it alone, whatever its
bucket and batch. The model computes in float32 (--dtype bfloat16: faster on accelerators, whatever
the checkpoint was trained with; the parameters are float32 in either case). Mask models compute
the masks of the --mask-queries likeliest queries only (the mask head is most of their time), and
run a batch again with every query's mask when its results need another one, so the outputs are
those of the full model. --runtime onnxruntime runs the same forward, exported to ONNX once per
bucket shape, in onnxruntime (CPU, float32; the onnx extra; see detr_jax/onnx_runtime.py); the
exports are kept in --onnx-cache (~/.cache/detr_jax/onnx) for later runs of the same checkpoint,
model and shape. Per image, in --out-dir:
  <stem>.png           the original image with the detections (score >= threshold; masks for mask models;
                       images of at most 200 px are drawn enlarged 2x or more, for readable labels)
  <stem>_panoptic.png  mask models: the panoptic segments blended on the image
  <stem>.json          {"image", "size": [h, w], "detections": [{"label", "name", "score", "box_xyxy"}],
                       and for mask models "segments_info": [{"id", "isthing", "category_id", "area", "name"}]}
Boxes are (x0, y0, x1, y1) in original pixels. A detection whose score or box is not finite (NaN
or inf, from a broken model) is not written: the JSON stays valid JSON (and its box is not drawn).

Images are read as a photo viewer shows them: turned upright by their EXIF orientation (so sizes,
boxes and pictures are in the upright image's pixels; training data is read without it, as the
official code does), 16-bit greyscale scaled to 8 bits (65535 -> 255), transparent images
(RGBA, LA, palette with transparency) composited on white, every other mode converted to RGB by
PIL. Class names: those saved in the checkpoint's config (`class_names`), the COCO names for
converted official checkpoints (91 detection / 250 panoptic classes), the synthetic classes for
older synthetic runs, otherwise the ids.

Each file is handled on its own: one that cannot be read (missing, a directory, not an image,
truncated, ...) or whose stem an earlier image already uses gets one `error: FILE: reason` line on
stderr and the others are still processed. Exit code 0, or 1 if any file failed or on a fatal
error (checkpoint, output directory; one `error: ...` line).
"""
import argparse
import functools
import itertools
import json
import os
import sys
from typing import NamedTuple

from absl import logging
import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from detr_jax.model_checkpoint import load_model
from detr_jax.coco_categories import DETECTION_NAMES, is_thing_map, panoptic_names
from detr_jax.config import dataset_config
from detr_jax.data.batching import collate
from detr_jax.data.images import read_image
from detr_jax.data.pipeline import bucket_shape
from detr_jax.data.stream import val_resize
from detr_jax.data.synthetic import CLASS_NAMES
from detr_jax.data.transforms import apply_plan, plan_val
from detr_jax.errors import UserError
from detr_jax.files import written_whole
from detr_jax.models import build_model
from detr_jax.postprocess import PANOPTIC_THRESHOLD, postprocess_boxes, postprocess_panoptic, postprocess_segm, softmax
from detr_jax.visualize import draw_detections, draw_panoptic

MASK_QUERIES = 25  # mask models: masks for this many likeliest queries (see predict)
MASK_STRIDE = 4  # pred_masks cells per input pixel side: the backbone's layer1 resolution


class Preprocessing(NamedTuple):
  """How images enter the model: resize (the official val resize) or not, and the padding buckets."""
  resize: bool
  val_size: int
  max_size: int
  bucket_sides: tuple


def preprocessing(config) -> Preprocessing:
  """The eval pipeline's settings of a training config; the official ones for converted checkpoints."""
  ds = config.get("dataset")
  ds = dataset_config() if ds is None else ds  # converted official checkpoints: the default (official) settings
  return Preprocessing(val_resize(ds), int(ds.val_size), int(ds.max_size), tuple(ds.bucket_sides))


def class_names(config, checkpoint: str) -> tuple:
  """Names indexed by class id: the dataset's names saved with a training checkpoint (`class_names`);
  for a converted official checkpoint (no `dataset`) the COCO names (91 detection / 250 panoptic
  classes); for older training checkpoints the synthetic names of synthetic runs; otherwise the
  ids as text."""
  num_classes = config.model.num_classes
  saved = config.get("class_names")
  if saved is not None:
    if len(saved) != num_classes:
      raise UserError(f"{checkpoint}: config class_names has {len(saved)} names for {num_classes} classes")
    return tuple(str(name) for name in saved)
  ds = config.get("dataset")
  if ds is None and num_classes == len(DETECTION_NAMES):
    return DETECTION_NAMES
  if ds is None and num_classes == 250:
    return panoptic_names(num_classes)
  if ds is not None and ds.name == "synthetic" and num_classes == len(CLASS_NAMES):
    return CLASS_NAMES
  return tuple(str(i) for i in range(num_classes))


def thing_classes(config) -> dict:
  """{class id: isthing} for postprocess_panoptic: the official COCO rule for 250-class models,
  every class a thing otherwise."""
  num_classes = config.model.num_classes
  return is_thing_map(num_classes) if num_classes == 250 else dict.fromkeys(range(num_classes), True)


def load_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB of an image file read as a photo (`detr_jax.data.images`, see the module
  doc); UserError naming the file and the reason when it cannot be read."""
  try:
    return read_image(path, photo=True)
  except UnidentifiedImageError:
    reason = "empty file" if os.path.getsize(path) == 0 else "not an image file PIL can read"
  except OSError as e:  # missing, a directory, no permission (strerror), or truncated/corrupt data
    reason = e.strerror or f"broken image data ({e})"
  except Image.DecompressionBombError as e:
    reason = str(e)
  raise UserError(f"{path}: {reason}")


def pad_shape(hw, sides) -> tuple[int, int]:
  """`bucket_shape`; a side beyond the largest bucket is rounded up to a multiple of it instead."""
  top = max(sides)
  fit = bucket_shape([min(int(s), top) for s in hw], sides)
  return tuple(f if s <= top else -(-int(s) // top) * top for s, f in zip(hw, fit))


def prepare_batch(images, prep: Preprocessing) -> dict:
  """uint8 [H_i, W_i, 3] images -> the `collate` batch (images [B, Hp, Wp, 3] normalised, mask,
  size, orig_size), padded to the bucket of its largest prepared image."""
  examples = []
  for i, image in enumerate(images):
    hw = image.shape[:2]
    example = {"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32),
               "area": np.zeros((0,), np.float32), "iscrowd": np.zeros((0,), np.int32), "image_id": i,
               "orig_size": np.array(hw, np.int32)}
    plan = plan_val(hw, prep.val_size, prep.max_size) if prep.resize else ()
    examples.append(apply_plan(example, plan))
  padded = pad_shape(np.max([e["image"].shape[:2] for e in examples], axis=0), prep.bucket_sides)
  return collate(examples, pad_to=padded, max_objects=0)


def make_forward(model, params, runtime: str = "jax", onnx_cache: str | None = None):
  """(images, mask, orig_size) -> model outputs plus postprocess_boxes' scores, labels [B, Q] and
  boxes [B, Q, 4] (xyxy, original pixels); compiled (jax) or exported to ONNX (onnxruntime, see
  `detr_jax.onnx_runtime`; model built for_onnx, exports kept in `onnx_cache` if given) once per
  input shape."""
  def forward(params, images, mask, orig_size):
    outputs = model.apply({"params": params}, images, mask)
    scores, labels, boxes = postprocess_boxes(outputs["pred_logits"], outputs["pred_boxes"], orig_size)
    keys = ("pred_logits", "pred_boxes", "pred_masks", "mask_query_index")
    return {**{k: outputs[k] for k in keys if k in outputs}, "scores": scores, "labels": labels, "boxes": boxes}

  if runtime == "onnxruntime":
    from detr_jax.onnx_runtime import OnnxFunction  # the optional onnx extra

    def announce(shapes, cached):  # the export takes seconds to minutes
      batches = f"{'x'.join(map(str, shapes[0][:3]))} image batches"
      if cached:
        print(f"onnxruntime: the forward for {batches}, exported in an earlier run: {cached}", flush=True)
      else:
        kept = f"; kept in {onnx_cache}" if onnx_cache else ""
        print(f"onnxruntime: exporting the forward for {batches} (once per shape{kept})", flush=True)

    return OnnxFunction(functools.partial(forward, params), on_export=announce, cache_dir=onnx_cache)
  return functools.partial(jax.jit(forward), params)


def default_onnx_cache() -> str:
  """$XDG_CACHE_HOME/detr_jax/onnx, or ~/.cache/detr_jax/onnx."""
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "detr_jax", "onnx")


def masks_cover(out: dict, threshold: float) -> bool:
  """Whether the masks of a model built with mask_queries (out["mask_query_index"] [B, K]) include
  every query that the results use: the detections (score >= threshold) and the queries the
  panoptic post-processing keeps (top class not no-object, top score > PANOPTIC_THRESHOLD)."""
  probs = softmax(np.asarray(out["pred_logits"], np.float32))
  needed = (out["scores"] >= threshold) | ((probs.argmax(-1) != probs.shape[-1] - 1) &
                                           (probs.max(-1) > PANOPTIC_THRESHOLD))
  computed = np.zeros(needed.shape, bool)
  np.put_along_axis(computed, out["mask_query_index"], True, axis=1)
  return bool((computed | ~needed).all())


def every_query_masks(out: dict) -> dict:
  """`out` with pred_masks [B, K, h, w] of the queries mask_query_index [B, K] spread to [B, Q, h, w]
  (zeros for the queries without a mask, which `masks_cover` says no result uses)."""
  if "mask_query_index" not in out:
    return out
  masks, index = out["pred_masks"], out["mask_query_index"]
  spread = np.zeros((masks.shape[0], out["pred_logits"].shape[1], *masks.shape[2:]), masks.dtype)
  np.put_along_axis(spread, index[:, :, None, None], masks, axis=1)
  return {**{k: v for k, v in out.items() if k != "mask_query_index"}, "pred_masks": spread}


def crop_masks(pred_masks, size):
  """pred_masks [..., H4, W4] of a padded input -> the cells of the unpadded image of `size` (h, w),
  the map an unpadded input would give, so that the official mask post-processing lines up."""
  h, w = (-(-int(s) // MASK_STRIDE) for s in size)
  return pred_masks[..., :h, :w]


def image_results(out: dict, i: int, size, orig_size, threshold: float, config) -> dict:
  """Detections of image i of a batch (score >= threshold, best first), with instance masks bool
  [K, H, W] and the panoptic result for mask models."""
  scores = out["scores"][i]
  keep = np.flatnonzero(scores >= threshold)
  keep = keep[np.argsort(-scores[keep], kind="stable")]
  result = {k: out[k][i][keep] for k in ("scores", "labels", "boxes")}
  if "pred_masks" in out:
    masks = crop_masks(out["pred_masks"][i:i + 1], size)
    sizes, orig = np.array([size]), np.array([orig_size])
    result["masks"] = postprocess_segm(masks[:, keep], sizes, orig, threshold=0.5)[0][:, 0].astype(bool)
    result["panoptic"] = postprocess_panoptic(out["pred_logits"][i:i + 1], masks, out["pred_boxes"][i:i + 1],
                                              sizes, orig, is_thing_map=thing_classes(config))[0]
  return result


def to_json(path: str, hw, result: dict, names) -> dict:
  """The JSON record of one image (see the module doc); a detection with a non-finite score or box
  coordinate (NaN, inf: JSON has no such numbers) is left out, as the picture leaves out its box."""
  finite = np.isfinite(result["scores"]) & np.isfinite(result["boxes"]).all(-1)
  record = {"image": path, "size": [int(hw[0]), int(hw[1])], "detections": [
      {"label": int(label), "name": names[label], "score": float(score), "box_xyxy": [float(v) for v in box]}
      for score, label, box in zip(result["scores"][finite], result["labels"][finite], result["boxes"][finite])]}
  if "panoptic" in result:
    record["segments_info"] = [{**s, "name": names[s["category_id"]]} for s in result["panoptic"]["segments_info"]]
  return record


def display_scale(hw) -> int:
  """Integer upscaling of small images in the pictures, so that labels stay readable."""
  return max(1, 400 // max(hw))


def write_outputs(path: str, image, result: dict, names, out_dir: str, threshold: float) -> str:
  """Writes <stem>.png, <stem>.json (and <stem>_panoptic.png); returns the printed summary line."""
  stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
  scale = display_scale(image.shape[:2])
  draw_detections(image, result["boxes"], result["labels"], result["scores"], names, threshold,
                  masks=result.get("masks"), scale=scale).save(stem + ".png")
  record = to_json(path, image.shape[:2], result, names)
  line = f"{path}: {len(record['detections'])} detections"
  if "panoptic" in result:
    pan = result["panoptic"]
    draw_panoptic(image, pan["png_ids"], pan["segments_info"], names, scale).save(stem + "_panoptic.png")
    line += f", {len(pan['segments_info'])} panoptic segments"
  with written_whole(stem + ".json") as f:  # an interrupted run leaves no half JSON
    json.dump(record, f, indent=1, allow_nan=False)  # strict JSON: no NaN or Infinity
  return f"{line} -> {stem}.png"


def report(error: Exception) -> None:
  """One `error: ...` line on stderr."""
  print(f"error: {error}", file=sys.stderr, flush=True)


def readable_images(paths, failed: list):
  """(path, image) of each path that loads, in order. Every other one (unreadable, or its stem taken
  by an earlier image, whose outputs it would overwrite) is reported and appended to `failed`."""
  stems = {}
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
      if stem in stems:
        raise UserError(f"{path}: {stems[stem]} already writes {stem}.png/.json; rename one")
      image = load_image(path)
    except UserError as e:
      report(e)
      failed.append(path)
      continue
    stems[stem] = path
    yield path, image


def batches(items, size: int):
  """Lists of `size` consecutive items (the last one may be shorter)."""
  iterator = iter(items)
  while chunk := list(itertools.islice(iterator, size)):
    yield chunk


def predict(checkpoint: str, paths, out_dir: str, threshold: float, batch_size: int, dtype: str = "float32",
            mask_queries: int = MASK_QUERIES, runtime: str = "jax", onnx_cache: str | None = None) -> int:
  """Runs the checkpoint on every image of `paths` in batches, computing in `dtype` with `runtime`
  (jax or onnxruntime, its exports kept in `onnx_cache` between runs if given), and writes the
  outputs; returns the number of files that failed (each reported in one `error: FILE: reason` line).

  Mask models compute masks for the `mask_queries` likeliest queries only (0: all); a batch whose
  results need a mask outside them (`masks_cover`) is run again with every query's mask."""
  config, params = load_model(checkpoint)
  if config.get("backbone_only", False):
    raise UserError(f"{checkpoint} is a backbone-only checkpoint, not a DETR model")
  with config.unlocked():
    config.model.dtype = dtype
    if dtype != "bfloat16" and config.model.get("attention") == "cudnn":
      config.model.attention = "xla"  # cuDNN's fused attention needs bf16; xla's is exact
  if runtime == "onnxruntime" and dtype != "float32":
    raise UserError(f"--runtime onnxruntime computes in float32 (got --dtype {dtype})")
  prep, names = preprocessing(config), class_names(config, checkpoint)
  model = functools.partial(build_model, config.model, isolate_padding=True, for_onnx=runtime == "onnxruntime")
  params = jax.device_put(params)
  forward = every_query = make_forward(model(), params, runtime, onnx_cache)
  if config.model.masks and 0 < mask_queries < config.model.num_queries:
    forward = make_forward(model(mask_queries=mask_queries), params, runtime, onnx_cache)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except FileExistsError:
    raise UserError(f"--out-dir {out_dir}: exists and is not a directory") from None
  except OSError as e:  # no permission, a parent is a file, ...
    raise UserError(f"--out-dir {out_dir}: {e.strerror}") from None
  failed = []
  for chunk in batches(readable_images(paths, failed), batch_size):
    batch = prepare_batch([image for _, image in chunk], prep)
    inputs = (batch["images"], batch["mask"], batch["orig_size"])
    out = jax.device_get(forward(*inputs))
    if "mask_query_index" in out and not masks_cover(out, threshold):
      out = jax.device_get(every_query(*inputs))
    out = every_query_masks(out)
    for i, (path, image) in enumerate(chunk):
      result = image_results(out, i, batch["size"][i], batch["orig_size"][i], threshold, config)
      try:
        print(write_outputs(path, image, result, names, out_dir, threshold), flush=True)
      except OSError as e:  # e.g. the disk is full
        report(UserError(f"{path}: cannot write its outputs to {out_dir}: {e.strerror or e}"))
        failed.append(path)
  return len(failed)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m detr_jax.predict", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="model checkpoint directory (converted or training)")
  parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything PIL reads)")
  parser.add_argument("--out-dir", default="predictions", help="output directory (default: ./predictions)")
  parser.add_argument("--threshold", type=float, default=0.7, help="keep detections with score >= this")
  parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of convolutions, matmuls and attention (default: float32)")
  parser.add_argument("--mask-queries", type=int, default=MASK_QUERIES,
                      help=f"mask models: compute masks for the K likeliest queries only, 0 = all (default: "
                           f"{MASK_QUERIES}; a batch that needs more is run again with all)")
  parser.add_argument("--runtime", default="jax", choices=("jax", "onnxruntime"),
                      help="jax (jit-compiled, default) or onnxruntime (the same forward exported to ONNX once per "
                           "input shape; CPU; needs the onnx extra)")
  parser.add_argument("--onnx-cache", default=default_onnx_cache(), metavar="DIR",
                      help="--runtime onnxruntime: where exports are kept for later runs, about 170 MB per model and "
                           "input shape (default: %(default)s; 'none': export in every run)")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error("--batch-size must be at least 1")
  if args.mask_queries < 0:
    parser.error(f"--mask-queries must be >= 0, got {args.mask_queries}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  try:
    failed = predict(args.checkpoint, args.images, args.out_dir, args.threshold, args.batch_size, args.dtype,
                     args.mask_queries, args.runtime, None if args.onnx_cache == "none" else args.onnx_cache)
  except UserError as e:  # a bad checkpoint or output directory
    report(e)
    return 1
  except KeyboardInterrupt:
    print(f"interrupted: the images listed above have their outputs in {args.out_dir}", file=sys.stderr)
    return 130
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
