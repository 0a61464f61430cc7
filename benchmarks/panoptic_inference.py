"""Panoptic inference time: jitted forward + PostProcessPanoptic, all queries vs the top-K mask queries.

  python benchmarks/panoptic_inference.py --model detr_resnet50_panoptic --size 800 1066 --mask-queries 0 10 25

Weights come from fill procedure v1 (speed does not depend on values). So that post-processing
has work to do, the threshold is lowered to keep the `--kept` likeliest queries (the released model
keeps ~10-30 per COCO image). Prints a table (median of --reps after a warm-up) and a JSON line per row.
"""
import argparse
import json
import statistics
import time

import jax
import numpy as np

from detr_jax.coco_categories import is_thing_map
from detr_jax.config import VARIANTS, variant_config
from detr_jax.models import build_model
from detr_jax.postprocess import postprocess_panoptic
from detr_jax.torch_io.convert import filled_params


def _median_time(fn, reps):
  fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50_panoptic", choices=[v for v in VARIANTS if "panoptic" in v])
  parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
  parser.add_argument("--mask-queries", type=int, nargs="+", default=(0, 25), help="0: all queries")
  parser.add_argument("--kept", type=int, default=15, help="queries the post-processing keeps")
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args(argv)
  num_queries = variant_config(args.model).model.num_queries
  if min(args.size) < 1 or args.reps < 1:
    parser.error(f"--size and --reps must be positive, got {args.size[0]} {args.size[1]}, {args.reps}")
  if not all(0 <= k <= num_queries for k in args.mask_queries) or not 1 <= args.kept < num_queries:
    parser.error(f"--mask-queries must be in 0..{num_queries} and --kept in 1..{num_queries - 1}, got "
                 f"{' '.join(map(str, args.mask_queries))} and {args.kept}")

  cfg = variant_config(args.model).model
  params = filled_params(cfg)
  params = jax.device_put(params)
  h, w = args.size
  images = jax.device_put(np.random.default_rng(0).normal(size=(1, h, w, 3)).astype(np.float32))
  mask = jax.device_put(np.zeros((1, h, w), bool))
  sizes = np.array([[h, w]])
  rows = []
  for k in args.mask_queries:
    model = build_model(cfg, mask_queries=min(k, cfg.num_queries))
    forward = jax.jit(lambda p, x, m, model=model: model.apply({"params": p}, x, m))
    out = jax.device_get(forward(params, images, mask))
    probs = np.asarray(jax.nn.softmax(out["pred_logits"][0]))
    keepable = np.where(probs.argmax(-1) != probs.shape[-1] - 1, probs.max(-1), 0.0)
    threshold = float(np.sort(keepable)[-args.kept - 1])  # keeps the `kept` likeliest (fewer if not keepable)
    kept = int((keepable > threshold).sum())
    post = lambda out=out: postprocess_panoptic(
        out["pred_logits"], out["pred_masks"], None, sizes, is_thing_map=is_thing_map(cfg.num_classes + 1),
        threshold=threshold, mask_query_index=out.get("mask_query_index"))
    forward_s = _median_time(lambda: jax.block_until_ready(forward(params, images, mask)), args.reps)
    post_s = _median_time(post, args.reps)
    rows.append({"model": args.model, "size": [h, w], "mask_queries": k or cfg.num_queries, "kept": kept,
                 "forward_s": round(forward_s, 3), "postprocess_s": round(post_s, 3),
                 "total_s": round(forward_s + post_s, 3), "jax": jax.__version__, "device": jax.devices()[0].device_kind})
  print(f"{'mask queries':>12} {'kept':>5} {'forward s':>10} {'postproc s':>11} {'total s':>8}")
  for r in rows:
    print(f"{r['mask_queries']:>12} {r['kept']:>5} {r['forward_s']:>10.3f} {r['postprocess_s']:>11.3f} {r['total_s']:>8.3f}")
  for r in rows:
    print(json.dumps(r))


if __name__ == "__main__":
  main()
