"""COCO evaluation time of each COCO evaluator (pycocotools, hotcoco) on a COCO-sized case.

  python benchmarks/coco_eval.py --out /tmp/coco_eval_case [--images 5000 --detections 100 --masks]

Writes OUT/instances.json: --images images of --size (h, w) pixels, a Poisson number of objects per
image (mean --objects, as COCO val2017's 7.3), 80 COCO categories, 1% crowd, every object an ellipse in
its box with the ellipse's RLE and pixel count as segmentation and area. The detections imitate DETR's
top --detections per image: most objects found (jittered box, sometimes the wrong class, sometimes a
duplicate), the rest background boxes with low scores; with --masks each has its ellipse RLE too.
Times `CocoEvaluator.summarize` ("bbox", and "segm" with --masks): the evaluator's whole run from
detections held in memory to the 12 stats, and checks that its 12 numbers are pycocotools'. Prints a
table (median of --reps runs, --reference-reps for pycocotools; wall and CPU time, as the CPU time of
this process is the fairer measure on a loaded machine) and one JSON line.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from detr_jax.coco_categories import DETECTION_NAMES
from detr_jax.config import COCO_EVALUATORS
from detr_jax.evaluation.coco import STAT_NAMES, CocoEvaluator, coco_from_json, encode_masks

CATEGORY_IDS = tuple(i for i, name in enumerate(DETECTION_NAMES) if name != "N/A")  # the 80 of COCO


def _ellipses(boxes, h, w):
  """Binary masks uint8 [K, h, w] of the ellipses inscribed in boxes [K, 4] (x0, y0, x1, y1), at least 1 px."""
  y, x = np.arange(h)[None, :, None] + 0.5, np.arange(w)[None, None, :] + 0.5
  cx, cy = (boxes[:, 0] + boxes[:, 2])[:, None, None] / 2, (boxes[:, 1] + boxes[:, 3])[:, None, None] / 2
  rx, ry = (boxes[:, 2] - boxes[:, 0])[:, None, None] / 2, (boxes[:, 3] - boxes[:, 1])[:, None, None] / 2
  masks = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1).astype(np.uint8)
  empty = masks.reshape(len(boxes), -1).max(-1) == 0
  masks[empty, np.clip(cy[empty, 0, 0], 0, h - 1).astype(int), np.clip(cx[empty, 0, 0], 0, w - 1).astype(int)] = 1
  return masks


def _random_boxes(rng, n, h, w):
  """Boxes [n, 4] (x0, y0, x1, y1) inside the image, sides 2 px to the whole image (more small than large)."""
  sides = np.exp(rng.uniform(np.log(2), np.log([w, h]), (n, 2)))  # log-uniform
  corners = rng.uniform(0, 1, (n, 2)) * ([w, h] - sides)
  return np.concatenate([corners, corners + sides], 1)


def write_case(out, num_images, num_detections, mean_objects, size, masks, seed=0):
  """Writes OUT/instances.json -> (its path, {image_id: (boxes xyxy [D, 4], scores [D], labels [D], RLEs or None)})."""
  rng = np.random.default_rng(seed)
  h, w = size
  images, annotations, detections = [], [], {}
  for image_id in range(1, num_images + 1):
    images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id:012d}.jpg"})
    n = min(int(rng.poisson(mean_objects)), num_detections // 2)
    gt_boxes, gt_labels = _random_boxes(rng, n, h, w), rng.choice(CATEGORY_IDS, n)
    gt_masks = _ellipses(gt_boxes, h, w) if n else np.zeros((0, h, w), np.uint8)
    for box, label, rle, mask in zip(gt_boxes.tolist(), gt_labels.tolist(), encode_masks(gt_masks), gt_masks):
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                          "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": float(mask.sum()),
                          "iscrowd": int(rng.random() < 0.01), "segmentation": rle})
    # Found objects: jittered by ~10% of their size, 15% with the wrong class, 30% twice.
    found = rng.random(n) < 0.9
    source = np.concatenate([np.flatnonzero(found), np.flatnonzero(found & (rng.random(n) < 0.3))])
    sides = np.tile(gt_boxes[source, 2:] - gt_boxes[source, :2], 2)
    near = np.clip(gt_boxes[source] + rng.normal(0, 0.1, (len(source), 4)) * sides, 0, [w, h, w, h])
    near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
    near_labels = np.where(rng.random(len(source)) < 0.85, gt_labels[source], rng.choice(CATEGORY_IDS, len(source)))
    background = num_detections - len(source)
    boxes = np.concatenate([near, _random_boxes(rng, background, h, w)])
    labels = np.concatenate([near_labels, rng.choice(CATEGORY_IDS, background)])
    scores = np.concatenate([rng.uniform(0.3, 1.0, len(source)), rng.uniform(0, 0.4, background) ** 2])
    detections[image_id] = (boxes, scores, labels, encode_masks(_ellipses(boxes, h, w)) if masks else None)
  categories = [{"id": i, "name": DETECTION_NAMES[i], "supercategory": ""} for i in CATEGORY_IDS]
  path = os.path.join(out, "instances.json")
  os.makedirs(out, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return path, detections


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for instances.json")
  parser.add_argument("--images", type=int, default=5000)
  parser.add_argument("--detections", type=int, default=100, help="per image")
  parser.add_argument("--objects", type=float, default=7.3, help="mean ground-truth objects per image")
  parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
  parser.add_argument("--masks", action="store_true", help="also time segm AP")
  parser.add_argument("--reps", type=int, default=5, help="timed runs of each fast evaluator")
  parser.add_argument("--reference-reps", type=int, default=1,
                      help="timed runs of pycocotools (about 2.5 min each at the default size on 2 cores)")
  args = parser.parse_args(argv)
  if min(args.images, args.detections, args.reps, args.reference_reps, *args.size) < 1 or args.objects < 0:
    parser.error("--images, --detections, --reps, --reference-reps and --size must be positive and --objects "
                 "non-negative")

  start = time.perf_counter()
  path, detections = write_case(args.out, args.images, args.detections, args.objects, args.size, args.masks)
  written_s = time.perf_counter() - start
  gt = coco_from_json(path)
  rows = []
  for iou_type in ("bbox", "segm") if args.masks else ("bbox",):
    for name in ("pycocotools", *(e for e in COCO_EVALUATORS if e != "pycocotools")):  # the reference first
      evaluator = CocoEvaluator(gt, name)
      for image_id, (boxes, scores, labels, rles) in detections.items():
        evaluator.add(image_id, boxes, scores, labels, rles)
      times, cpu_times = [], []
      for _ in range(args.reference_reps if name == "pycocotools" else args.reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        stats = evaluator.summarize(iou_type)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
      if name == "pycocotools":
        reference = stats
      rows.append({"iou_type": iou_type, "evaluator": name, "seconds": round(statistics.median(times), 3),
                   "cpu_seconds": round(statistics.median(cpu_times), 3), "runs": len(times),
                   "same_as_pycocotools": stats == reference,
                   "max_abs_diff": max(abs(stats[k] - reference[k]) for k in STAT_NAMES), "AP": stats["AP"]})
  reference_rows = {r["iou_type"]: r for r in rows if r["evaluator"] == "pycocotools"}
  for r in rows:
    for key, speedup in (("seconds", "speedup"), ("cpu_seconds", "cpu_speedup")):
      r[speedup] = round(reference_rows[r["iou_type"]][key] / max(r[key], 1e-3), 1)

  print(f"{args.images} images, {args.detections} detections each, {len(gt.dataset['annotations'])} objects, "
        f"{args.size[0]}x{args.size[1]} px (case written in {written_s:.0f} s)")
  print(f"{'iou type':>8} {'evaluator':>12} {'wall s':>8} {'speed-up':>9} {'CPU s':>8} {'speed-up':>9} {'AP':>7} "
        f"{'12 stats = pycocotools':>23}")
  for r in rows:
    print(f"{r['iou_type']:>8} {r['evaluator']:>12} {r['seconds']:>8.3f} {r['speedup']:>8.1f}x "
          f"{r['cpu_seconds']:>8.3f} {r['cpu_speedup']:>8.1f}x {r['AP']:>7.4f} {str(r['same_as_pycocotools']):>23}")
  print(json.dumps({"images": args.images, "detections_per_image": args.detections,
                    "objects": len(gt.dataset["annotations"]), "size": list(args.size), "reps": args.reps,
                    "reference_reps": args.reference_reps, "cpus": os.cpu_count(),
                    "machine": platform.processor() or platform.machine(), "rows": rows}))


if __name__ == "__main__":
  main()
