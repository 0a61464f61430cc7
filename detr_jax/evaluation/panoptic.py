"""COCO panoptic quality (PQ, SQ, RQ) under the rules of panopticapi's pq_compute, plus a prediction writer.

Segment ids are read from the PNGs as R + 256 G + 65536 B. In the ground truth id 0 is VOID and segments with
iscrowd 1 are crowd regions. A ground-truth and a predicted segment of the same category match when
intersection / (union - predicted pixels on VOID) > 0.5. An unmatched non-crowd ground-truth segment is a false
negative; an unmatched predicted segment is a false positive unless more than half of it lies on VOID plus the
crowd region of its category. Predicted areas are pixel counts, ground-truth areas come from the json ("area",
else pixel counts). A predicted id 0 is a segment when segments_info lists it, else unlabelled pixels.

CLI: python -m detr_jax.evaluation.panoptic --gt-json G --gt-folder GF --pred-json P --pred-folder PF [--out R]
A file that cannot be evaluated (missing, not json, a key missing or of the wrong type, a PNG unreadable, not RGB or
of another size than its ground truth, ids of the PNG and segments_info that differ) is a `PanopticError`, one
`error: FILE...: what is wrong` line, exit code 1.
"""
import argparse
import collections
import json
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from detr_jax.errors import UserError
from detr_jax.panoptic_png import png_bytes, rgb2id

VOID = 0
OFFSET = 256 ** 3
GROUPS = (("All", None), ("Things", True), ("Stuff", False))


class PanopticError(UserError, ValueError):
  """A ground-truth or prediction file (json or PNG) that cannot be evaluated (also a ValueError, as before)."""


# Types a json value must have, and how an error message names them; a bool is no number here.
INTEGER, NUMBER, TEXT, LIST = ((int,), "an integer"), ((int, float), "a number"), ((str,), "a string"), \
    ((list,), "a list")
IMAGE_ID = ((int, str), "an integer or a string")


def _key(record, key, where, kind=None):
  """record[key], of `kind` (INTEGER, NUMBER, TEXT, LIST; None: any); a PanopticError naming `where` otherwise."""
  if not isinstance(record, dict) or key not in record:
    raise PanopticError(f"{where}: missing key {key!r}")
  value = record[key]
  if kind is not None and (not isinstance(value, kind[0]) or isinstance(value, bool)):
    raise PanopticError(f"{where}: {key} is {json.dumps(value)[:80]}, expected {kind[1]}")
  return value


def _load_json(path):
  """The json object (a dict) of file `path`."""
  try:
    with open(path, "rb") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise PanopticError(f"{path}: file not found") from None
  except OSError as e:  # a directory, no permission, ...
    raise PanopticError(f"{path}: cannot read it ({e.strerror or e})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PanopticError(f"{path}: not valid json ({e})") from None
  if not isinstance(data, dict):
    raise PanopticError(f"{path}: expected a json object with \"annotations\", got a {type(data).__name__}")
  return data


def read_panoptic_png(path):
  """Segment ids int64 [H, W] of a COCO panoptic PNG (RGB; an alpha channel is ignored)."""
  try:
    with Image.open(path) as img:
      rgb = np.asarray(img)
  except FileNotFoundError:
    raise PanopticError(f"{path}: PNG not found") from None
  except UnidentifiedImageError:
    raise PanopticError(f"{path}: not an image file PIL can read") from None
  except (OSError, Image.DecompressionBombError) as e:  # a directory, truncated data, ...
    raise PanopticError(f"{path}: cannot read the PNG ({e.strerror or e})") from None
  if rgb.ndim != 3 or rgb.shape[-1] < 3:
    raise PanopticError(f"{path}: expected an RGB panoptic PNG, got an array of shape {rgb.shape}")
  return rgb2id(rgb[..., :3]).astype(np.int64)


def _segments(annotation, categories, where, ground_truth=False):
  """{id: segment} of an annotation's segments_info in json order (a repeated id keeps its last entry).

  Ground-truth segments may have "area" (a positive number) and "iscrowd" (0 or 1).
  """
  segments = {}
  for segment in _key(annotation, "segments_info", where, LIST):
    segment_id = _key(segment, "id", f"{where}: segments_info", INTEGER)
    segments[segment_id] = segment
    category = _key(segment, "category_id", f"{where}: segment id {segment_id}", INTEGER)
    if category not in categories:
      raise PanopticError(f"{where}: segment id {segment_id} has unknown category_id {category}")
    if ground_truth and "area" in segment:
      area = _key(segment, "area", f"{where}: segment id {segment_id}", NUMBER)
      if not area > 0:
        raise PanopticError(f"{where}: segment id {segment_id} has area {area}, expected a positive number")
    if ground_truth and segment.get("iscrowd", 0) not in (0, 1):
      raise PanopticError(f"{where}: segment id {segment_id} has iscrowd {json.dumps(segment['iscrowd'])[:80]}, "
                          f"expected 0 or 1")
  return segments


def _check_pred_ids(pred_pixels, pred_segments, where):
  """Raises when an id of the PNG (other than an unlisted 0) or of segments_info is missing from the other."""
  unlisted = sorted(i for i in pred_pixels if i not in pred_segments and i != VOID)
  if unlisted:
    raise PanopticError(f"{where}: segment ids {unlisted} are in the PNG but not in segments_info")
  missing = sorted(set(pred_segments) - set(pred_pixels))
  if missing:
    raise PanopticError(f"{where}: segment ids {missing} are in segments_info but not in the PNG")


def _image_stats(gt_ids, pred_ids, gt_segments, pred_segments, stats, where):
  """Adds one image to stats {category_id: [iou sum, tp, fp, fn]}; gt_ids / pred_ids [H, W] segment ids."""
  if gt_ids.shape != pred_ids.shape:
    raise PanopticError(f"{where}: the PNG is {pred_ids.shape} (h, w), the ground truth PNG {gt_ids.shape}")
  pairs, counts = np.unique(gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64), return_counts=True)
  intersection = dict(zip(zip((pairs // OFFSET).tolist(), (pairs % OFFSET).tolist()), counts.tolist()))
  gt_pixels, pred_pixels = collections.Counter(), collections.Counter()
  for (g, p), n in intersection.items():
    gt_pixels[g] += n
    pred_pixels[p] += n
  _check_pred_ids(pred_pixels, pred_segments, where)
  crowd = {g for g, s in gt_segments.items() if s.get("iscrowd", 0) == 1}
  gt_matched, pred_matched = set(), set()
  for (g, p), n in intersection.items():
    if g not in gt_segments or p not in pred_segments or g in crowd:
      continue
    category = gt_segments[g]["category_id"]
    if category != pred_segments[p]["category_id"]:
      continue
    gt_area = gt_segments[g].get("area", gt_pixels[g])
    iou = n / (pred_pixels[p] + gt_area - n - intersection.get((VOID, p), 0))
    if iou > 0.5:
      stats[category][0] += iou
      stats[category][1] += 1
      gt_matched.add(g)
      pred_matched.add(p)
  crowd_of_category = {}
  for g, segment in gt_segments.items():
    if g in crowd:
      crowd_of_category[segment["category_id"]] = g
    elif g not in gt_matched:
      stats[segment["category_id"]][3] += 1
  for p, segment in pred_segments.items():
    if p in pred_matched:
      continue
    ignored = intersection.get((VOID, p), 0)
    if segment["category_id"] in crowd_of_category:
      ignored += intersection.get((crowd_of_category[segment["category_id"]], p), 0)
    if ignored / pred_pixels[p] <= 0.5:
      stats[segment["category_id"]][2] += 1


def _average(stats, categories, isthing):
  """({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}}) of one group (isthing None: all categories).

  Categories with no tp, fp or fn get zeros and stay out of the mean and of n; a group with n = 0 gets zeros.
  """
  per_class, counted = {}, []
  for category, info in categories.items():
    if isthing is not None and (info["isthing"] == 1) != isthing:
      continue
    iou, tp, fp, fn = stats.get(category, (0.0, 0, 0, 0))
    if tp + fp + fn == 0:
      per_class[category] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue
    weight = tp + 0.5 * fp + 0.5 * fn
    per_class[category] = {"pq": iou / weight, "sq": iou / tp if tp else 0.0, "rq": tp / weight}
    counted.append(per_class[category])
  means = {k: sum(c[k] for c in counted) / len(counted) if counted else 0.0 for k in ("pq", "sq", "rq")}
  return {**means, "n": len(counted)}, per_class


def pq_compute(gt_json, pred_json, gt_folder, pred_folder):
  """PQ of predictions (json + PNG folder) against a ground truth (json + PNG folder) as panopticapi computes it.

  Every ground-truth image needs a prediction; predictions of other images are ignored. Returns
  {"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq", "rq"}}}.
  """
  for folder in (gt_folder, pred_folder):
    if not os.path.isdir(folder):
      problem = "is not a folder" if os.path.exists(folder) else "does not exist"
      raise PanopticError(f"{folder}: segmentation folder {problem}")
  gt, pred = _load_json(gt_json), _load_json(pred_json)
  categories = {}
  for category in _key(gt, "categories", gt_json, LIST):
    where = f"{gt_json}: category {_key(category, 'id', f'{gt_json}: categories', INTEGER)}"
    if _key(category, "isthing", where) not in (0, 1):
      raise PanopticError(f"{where}: isthing is {json.dumps(category['isthing'])[:80]}, expected 0 or 1")
    categories[category["id"]] = category
  predictions = {_key(a, "image_id", f"{pred_json}: annotations", IMAGE_ID): a
                 for a in _key(pred, "annotations", pred_json, LIST)}
  stats = collections.defaultdict(lambda: [0.0, 0, 0, 0])
  # The bar shows on a terminal only (disable=None) and is closed before an error propagates.
  with tqdm(_key(gt, "annotations", gt_json, LIST), desc="panoptic quality", unit="image", disable=None) as images:
    for gt_ann in images:
      image_id = _key(gt_ann, "image_id", f"{gt_json}: annotations", IMAGE_ID)
      if image_id not in predictions:
        raise PanopticError(f"{pred_json}: no prediction for image_id {image_id}")
      pred_ann = predictions[image_id]
      gt_where, pred_where = f"{gt_json}, image_id {image_id}", f"{pred_json}, image_id {image_id}"
      gt_png = os.path.join(gt_folder, _key(gt_ann, "file_name", gt_where, TEXT))
      pred_png = os.path.join(pred_folder, _key(pred_ann, "file_name", pred_where, TEXT))
      _image_stats(read_panoptic_png(gt_png), read_panoptic_png(pred_png),
                   _segments(gt_ann, categories, gt_where, ground_truth=True),
                   _segments(pred_ann, categories, pred_where), stats, f"{pred_png} ({pred_where})")
  results = {}
  for name, isthing in GROUPS:
    results[name], per_class = _average(stats, categories, isthing)
    if name == "All":
      results["per_class"] = per_class
  return results


def format_table(results):
  """PQ, SQ, RQ (x100) and N of All / Things / Stuff as a text table."""
  lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 38]
  for name, _ in GROUPS:
    r = results[name]
    lines.append(f"{name:10s}| {100 * r['pq']:6.1f} {100 * r['sq']:6.1f} {100 * r['rq']:6.1f} {r['n']:5d}")
  return "\n".join(lines)


def _json_value(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not json serialisable")


def write_panoptic_predictions(results, out_dir, json_name="predictions.json"):
  """Writes predictions in the official DETR PanopticEvaluator layout; returns (json path, PNG folder).

  results: per image {"image_id", "png_string" (PNG bytes) or "png_ids" (int ids [H, W]), "segments_info"}, as
  postprocess_panoptic returns them plus the image id. Writes out_dir/<image_id:012d>.png and
  out_dir/<json_name> = {"annotations": [{"image_id", "file_name", "segments_info"}]}.
  """
  os.makedirs(out_dir, exist_ok=True)
  annotations = []
  for r in results:
    file_name = f"{int(r['image_id']):012d}.png"
    png = r["png_string"] if "png_string" in r else png_bytes(r["png_ids"])
    with open(os.path.join(out_dir, file_name), "wb") as f:
      f.write(png)
    annotations.append({"image_id": int(r["image_id"]), "file_name": file_name, "segments_info": r["segments_info"]})
  json_path = os.path.join(out_dir, json_name)
  with open(json_path, "w") as f:
    json.dump({"annotations": annotations}, f, default=_json_value)
  return json_path, out_dir


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m detr_jax.evaluation.panoptic",
                                   description="COCO panoptic quality of predictions, as panopticapi computes it.")
  parser.add_argument("--gt-json", required=True, help="ground-truth panoptic json (annotations and categories)")
  parser.add_argument("--gt-folder", required=True, help="folder of the ground-truth PNGs")
  parser.add_argument("--pred-json", required=True, help="predictions json (annotations)")
  parser.add_argument("--pred-folder", required=True, help="folder of the predicted PNGs")
  parser.add_argument("--out", help="where to write the result dict as json")
  args = parser.parse_args(argv)
  try:
    if args.out:
      _check_out(args.out)
    results = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder)
    if args.out:
      try:
        with open(args.out, "w") as f:
          json.dump(results, f, indent=1)
      except OSError as e:  # e.g. the disk is full
        raise UserError(f"--out {args.out}: cannot write it ({e.strerror or e})") from None
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_table(results))
  return 0


def _check_out(path):
  """A UserError when the result file `path` cannot be written (checked before the evaluation)."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise UserError(f"--out {path}: is a folder; give a file name")
  if not os.path.isdir(folder):
    raise UserError(f"--out {path}: folder {folder} does not exist")
  if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise UserError(f"--out {path}: no permission to write it")


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
