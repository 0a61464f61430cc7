"""Time one full train step (forward, matching, losses, backward, AdamW update); last line is JSON.

  python benchmarks/train_step.py --model detr_resnet50 --size 512 683 --batch 2 --reps 5

The step is the one train.py runs (pmapped over the local devices), with the official recipe,
fill-procedure weights and random targets (--objects per image).
"""
import argparse
import json
import statistics
import time

import jax
import numpy as np

from detr_jax.config import VARIANTS, training_config, variant_config
from detr_jax.models import build_model
from detr_jax.training import step as steps
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.setup import make_criterion
from detr_jax.training.state import TrainState
from detr_jax.torch_io.convert import filled_params


def random_batch(batch: int, h: int, w: int, objects: int, num_classes: int, max_objects: int, masks: bool):
  rng = np.random.default_rng(0)
  centres = rng.uniform(0.2, 0.8, (batch, max_objects, 2))
  sizes = rng.uniform(0.05, 0.3, (batch, max_objects, 2))
  out = {"images": rng.normal(size=(batch, h, w, 3)).astype(np.float32), "mask": np.zeros((batch, h, w), bool),
         "labels": rng.integers(1, num_classes, (batch, max_objects)).astype(np.int32),
         "boxes": np.concatenate([centres, sizes], -1).astype(np.float32),
         "valid": np.arange(max_objects)[None].repeat(batch, 0) < objects}
  if masks:
    out["masks"] = rng.random((batch, max_objects, h, w)) < 0.1
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50", choices=list(VARIANTS))
  parser.add_argument("--size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--objects", type=int, default=7)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dropout", type=float, default=0.1)
  args = parser.parse_args(argv)
  if min(args.size) < 1 or args.batch < 1 or args.reps < 1 or args.objects < 0:
    parser.error(f"--size, --batch and --reps must be positive and --objects >= 0, got {args.size[0]} "
                 f"{args.size[1]}, {args.batch}, {args.reps}, {args.objects}")
  if not 0 <= args.dropout < 1:
    parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
  if args.batch % jax.local_device_count():
    parser.error(f"--batch {args.batch} must be divisible by the number of devices ({jax.local_device_count()})")

  config = training_config(global_batch_size=args.batch, max_objects=max(args.objects, 1))
  config.model = variant_config(args.model).model
  config.model.dropout = args.dropout
  params = filled_params(config.model)
  model, tx = build_model(config.model), make_optimizer(config, params)
  p_train, _ = steps.pmapped_steps(model, make_criterion(config), tx)
  n = jax.local_device_count()
  state = steps.replicate(TrainState.create(params, tx, jax.random.PRNGKey(0)), n)
  batch = steps.shard(random_batch(args.batch, *args.size, args.objects, config.model.num_classes,
                                   config.max_objects, config.model.masks), n)
  start = time.perf_counter()
  state, metrics = p_train(state, batch)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - start
  times = []
  for i in range(args.reps):
    start = time.perf_counter()
    state, metrics = p_train(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    print(f"rep {i + 1}/{args.reps}: {times[-1]:.3f} s (loss {float(metrics['loss'][0]):.3f})", flush=True)
  print(json.dumps({"model": args.model, "size": list(args.size), "batch": args.batch, "reps": args.reps,
                    "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                    "first_step_s": round(first_s, 2), "dropout": args.dropout, "devices": n, "jax": jax.__version__,
                    "backend": jax.default_backend()}))


if __name__ == "__main__":
  main()
