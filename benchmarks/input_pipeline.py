"""Images/s of the train input pipeline (the one train.py runs), for a few worker/thread settings.

  python benchmarks/input_pipeline.py [--coco-path DIR] [--batch 8] [--batches 20] \
      [--runs default:2 0:1 0:2 1:2 2:2] [--step-seconds 3.67]

Each batch: decode JPEG, official random flip / crop / multi-scale resize, normalise, pad into the
dataset.bucket_sides buckets, collate (`detr_jax.data.stream.build_stream`). Images: --coco-path's
train2017 split (validated first, as training does), or --images synthetic COCO-format JPEGs of
--size (COCO's typical 480x640), written to a temporary folder by `detr_jax.data.fake_coco`.
--runs are WORKERS:THREADS pairs (workers "default": `dataset_config().workers`, i.e. -1, min(8,
CPUs) processes). Timing starts after --warmup batches plus as many as the loader can hold ready
(workers x (prefetch + threads)), so batches prepared while the workers started are not counted.
--step-seconds S (a train step at the same --batch, see benchmarks/train_step.py) compares the
pipeline's rate with what training needs.
"""
import argparse
import json
import os
import re
import tempfile
import time

from detr_jax.config import dataset_config, model_config, training_config
from detr_jax.data import fake_coco
from detr_jax.data.coco import CocoDetection
from detr_jax.data.pipeline import default_workers
from detr_jax.data.stream import build_stream
from detr_jax.errors import UserError

PREFETCH = 2  # Batches' default prefetch (per worker buffer and per read-thread pool)


def measure(dataset, args, workers: int, threads: int) -> dict:
  resolved = default_workers() if workers < 0 else workers
  warmup = args.warmup + max(resolved, 1) * (PREFETCH + threads)
  config = training_config(global_batch_size=args.batch, seed=0)
  config.model, config.dataset = model_config(), dataset_config(workers=workers)
  loader = build_stream(config, dataset, "train", num_steps=warmup + args.batches, threads=threads,
                        prefetch=PREFETCH)
  start, times, shapes = time.perf_counter(), [], []
  it = iter(loader)
  for batch in it:
    times.append(time.perf_counter())
    shapes.append(batch["images"].shape[1:3])
  del batch
  loader.close()
  seconds = (times[-1] - times[warmup - 1]) / args.batches
  hs, ws = zip(*shapes[warmup:])
  return {"workers": f"default={resolved}" if workers < 0 else str(workers), "threads": threads,
          "batch": args.batch, "images_s": args.batch / seconds, "ms_batch": 1000 * seconds,
          "first_s": times[0] - start, "shape": f"{sorted(hs)[len(hs) // 2]}x{sorted(ws)[len(ws) // 2]}"}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--coco-path", default="", help="COCO folder (train2017/, annotations/); default: synthetic")
  parser.add_argument("--images", type=int, default=64, help="synthetic images to write")
  parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--batches", type=int, default=20, help="batches timed")
  parser.add_argument("--warmup", type=int, default=3, help="batches before timing (plus the loader's buffers)")
  parser.add_argument("--runs", nargs="+", default=["default:2", "0:1", "0:2", "1:2", "2:2"],
                      metavar="WORKERS:THREADS", help='workers: a count or "default" (dataset_config().workers)')
  parser.add_argument("--step-seconds", type=float, default=0.0, help="seconds of one train step at --batch")
  args = parser.parse_args(argv)
  if min(args.images, args.batch, args.batches) < 1 or args.warmup < 0 or args.step_seconds < 0:
    parser.error(f"--images, --batch and --batches must be positive, --warmup and --step-seconds >= 0, got "
                 f"{args.images}, {args.batch}, {args.batches}, {args.warmup}, {args.step_seconds}")
  if not all(fake_coco.MIN_SIDE <= side <= fake_coco.MAX_SIDE for side in args.size):
    parser.error(f"--size: each side must be in {fake_coco.MIN_SIDE}..{fake_coco.MAX_SIDE}, got {args.size[0]} "
                 f"{args.size[1]}")
  bad_runs = [run for run in args.runs if not re.fullmatch(r"(default|\d+):[1-9]\d*", run)]
  if bad_runs:
    parser.error(f"--runs: {' '.join(bad_runs)} is not WORKERS:THREADS (workers a count or default, threads >= 1)")

  with tempfile.TemporaryDirectory() as tmp:
    root = args.coco_path or tmp
    if not args.coco_path:
      fake_coco.write_split(tmp, "train", args.images, tuple(args.size))
    try:
      dataset = CocoDetection(os.path.join(root, "train2017"),
                              os.path.join(root, "annotations/instances_train2017.json"))
      dataset.validate()
    except UserError as e:  # --coco-path: files missing or broken
      parser.exit(1, f"error: {e}\n")
    print(f"{len(dataset)} images ({'synthetic ' + 'x'.join(map(str, args.size)) if not args.coco_path else root}), "
          f"{os.cpu_count()} CPUs, batch {args.batch}, {args.batches} batches timed", flush=True)
    rows = []
    for run in args.runs:
      workers, threads = run.split(":")
      workers = dataset_config().workers if workers == "default" else int(workers)
      rows.append(measure(dataset, args, workers, int(threads)))
      print(f"  done {run}: {rows[-1]['images_s']:.1f} images/s", flush=True)

  print(f"\n{'workers':>9} {'threads':>7} {'batch':>5} {'images/s':>8} {'ms/batch':>8} {'first s':>7} {'padded HxW':>10}")
  for r in rows:
    print(f"{r['workers']:>9} {r['threads']:>7} {r['batch']:>5} {r['images_s']:>8.1f} {r['ms_batch']:>8.0f} "
          f"{r['first_s']:>7.1f} {r['shape']:>10}")
  if args.step_seconds:
    for r in rows:
      feed = r["images_s"] / args.batch
      print(f"workers {r['workers']}, threads {r['threads']}: pipeline can feed {feed:.2f} steps/s vs needs "
            f"1/{args.step_seconds:g} = {1 / args.step_seconds:.2f} ({feed * args.step_seconds:.1f}x)")
  print(json.dumps({"cpus": os.cpu_count(), "images": len(dataset), "batches": args.batches,
                    "rows": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
  main()
