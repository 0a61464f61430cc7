"""Evaluation on a dataset's val stream: COCO box AP, and for mask models segm AP or PQ.

Every process runs the model on its share of each batch. Box detections (fixed size) are gathered
over processes; mask results (variable size) are written by each process to OUT_DIR, which must
be shared, and merged by process 0: segm_p<i>.json (RLEs), and for panoptic data the PNGs and
panoptic_p<i>.json in OUT_DIR/panoptic, evaluated with panopticapi's rules.
"""
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from detr_jax.data.stream import build_stream
from detr_jax.evaluation.coco import CocoEvaluator, encode_masks
from detr_jax.evaluation.panoptic import pq_compute, write_panoptic_predictions
from detr_jax.postprocess import postprocess_panoptic, postprocess_segm
from detr_jax.training import step as steps
from detr_jax.training.processes import sync_processes


def _mask_results(out, batch, dataset, segm: bool, panoptic: bool):
  """Host post-processing of one local batch: ([segm per image], [panoptic per image])."""
  real = np.flatnonzero(batch["is_real"])
  ids = batch["image_id"][real].tolist()
  segm_results, panoptic_results = [], []
  if segm:
    masks = postprocess_segm(out["pred_masks"][real], batch["size"][real], batch["orig_size"][real],
                             padded_size=batch["images"].shape[1:3])
    segm_results = [{"image_id": i, "rles": encode_masks(m)} for i, m in zip(ids, masks)]
  if panoptic:
    is_thing = {c: dataset.is_thing.get(c, False) for c in range(out["pred_logits"].shape[-1])}
    results = postprocess_panoptic(out["pred_logits"][real], out["pred_masks"][real], None, batch["size"][real],
                                   batch["orig_size"][real], is_thing_map=is_thing)
    panoptic_results = [{"image_id": i, **r} for i, r in zip(ids, results)]
  return segm_results, panoptic_results


def _gather_boxes(local, global_batch):
  """Box outputs of all processes, in the global stream's order."""
  if jax.process_count() == 1:
    return local
  sync_processes("eval: boxes ready")  # the processes' shares may take different times
  gathered = multihost_utils.process_allgather(local)  # [P, n, ...]
  b = global_batch // jax.process_count()
  return {k: v.reshape(v.shape[0], -1, b, *v.shape[2:]).swapaxes(0, 1).reshape(-1, *v.shape[2:])
          for k, v in gathered.items()}


def _merged(out_dir, pattern, key):
  """Concatenation of `key` lists of the files `pattern.format(p)` of every process."""
  items = []
  for p in range(jax.process_count()):
    with open(os.path.join(out_dir, pattern.format(p))) as f:
      items += json.load(f)[key]
  return items


def evaluate(p_eval, params_repl, dataset, config, out_dir: str, max_pictures: int = 0):
  """({metric: value}, up to `max_pictures` (image, detections) pairs) of the model on `dataset`.

  Metrics: the 12 COCO box stats (AP, AP50, ...); mask models add segm/AP... on instance-mask
  data, or PQ, SQ, RQ (x100, All/Things/Stuff) on COCO panoptic folders.
  """
  masks = config.model.masks
  panoptic = masks and getattr(dataset, "png_dir", None) is not None
  segm = masks and not panoptic and bool(config.dataset.get("masks"))
  outputs, segm_results, panoptic_results = [], [], []
  loader = build_stream(config, dataset, "val")
  bar = tqdm(loader, total=loader.plan.num_steps(), desc="eval", leave=False, dynamic_ncols=True,
             disable=not (config.progress and jax.process_index() == 0))
  for batch in bar:
    out = p_eval(params_repl, steps.shard({k: batch[k] for k in ("images", "mask", "orig_size")},
                                          jax.local_device_count()))
    out = {k: v.reshape(-1, *v.shape[2:]) for k, v in jax.device_get(out).items()}
    outputs.append({k: out[k] for k in ("boxes", "scores", "labels")} |
                   {"image_id": batch["image_id"], "is_real": batch["is_real"]})
    if segm or panoptic:
      s, p = _mask_results(out, batch, dataset, segm, panoptic)
      segm_results += s
      panoptic_results += p
  loader.close()
  local = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  boxes = _gather_boxes(local, loader.plan.global_batch)

  if segm or panoptic:
    p = jax.process_index()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"segm_p{p}.json"), "w") as f:
      json.dump({"segm": segm_results}, f)
    if panoptic:
      write_panoptic_predictions(panoptic_results, os.path.join(out_dir, "panoptic"), f"panoptic_p{p}.json")
    sync_processes("eval: mask results written")

  stats, pictures = {}, []
  rles = {r["image_id"]: r["rles"] for r in _merged(out_dir, "segm_p{}.json", "segm")} if segm else {}
  evaluator = CocoEvaluator(dataset.coco_gt(), config.coco_evaluator)
  for i in np.flatnonzero(boxes["is_real"]):
    image_id = int(boxes["image_id"][i])
    det = {k: boxes[k][i] for k in ("boxes", "scores", "labels")}
    evaluator.add(image_id, **det, masks=rles.get(image_id) if segm else None)
    if len(pictures) < max_pictures:
      pictures.append((dataset[int(i)]["image"], det))
  stats.update(evaluator.summarize("bbox"))
  if segm:
    stats.update({f"segm/{k}": v for k, v in evaluator.summarize("segm").items()})
  if panoptic:
    pred_json = os.path.join(out_dir, "panoptic", "predictions.json")
    with open(pred_json, "w") as f:
      json.dump({"annotations": _merged(os.path.join(out_dir, "panoptic"), "panoptic_p{}.json", "annotations")}, f)
    pq = pq_compute(dataset.ann_file, pred_json, dataset.png_dir, os.path.join(out_dir, "panoptic"))
    stats.update({f"{metric}_{group}" if group != "All" else metric: 100 * pq[group][metric.lower()]
                  for group in ("All", "Things", "Stuff") for metric in ("PQ", "SQ", "RQ")})
  return stats, pictures
