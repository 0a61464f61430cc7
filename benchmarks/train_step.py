"""Time one full train step (forward, matching, losses, backward, AdamW update); last line is JSON.

  python benchmarks/train_step.py [--model detr_resnet50] [--size 800 1088] [--batch 4] [--reps 10] \
      [--dtype float32|bfloat16] [--matcher scipy|optax]

The defaults are the official recipe's load on one device: DETR-R50 with 4 images per device
(64 images on 16 GPUs) at 800x1088, a typical padded batch of its multi-scale augmentation. The step is the one train.py
runs (pmapped over the local devices: --batch images on each), with the official recipe,
fill-procedure weights and random targets (--objects per image). Runs on whatever jax finds (GPU,
TPU or CPU). The compile (XLA, ahead of the first step) and the first step are reported apart from
the median of --reps timed steps; images/s counts all devices' images. `--model synthetic` is the
small model of configs/synthetic.py (ResNet-18, 2+2 layers, d=128), e.g. for a quick check on CPU:

  python benchmarks/train_step.py --model synthetic --size 128 128 --batch 2 --objects 3 --reps 2
"""
import argparse
import json
import os
import statistics
import time

import jax

from detr_jax.config import MATCHER_BACKENDS, VARIANTS, load_config_file, training_config, variant_config
from detr_jax.models import build_model
from detr_jax.torch_io.convert import filled_params
from detr_jax.training import step as steps
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.profile import synthetic_batch
from detr_jax.training.setup import make_criterion
from detr_jax.training.state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16")


def model_config_of(name: str):
  if name == "synthetic":
    return load_config_file(os.path.join(ROOT, "configs", "synthetic.py")).model
  return variant_config(name).model


def peak_memory_gib(device) -> float | None:
  """Peak bytes the device allocator held (GPU, TPU), in GiB; None where jax does not say (CPU)."""
  stats = device.memory_stats() or {}
  return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50", choices=[*VARIANTS, "synthetic"])
  parser.add_argument("--size", type=int, nargs=2, default=(800, 1088), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=4, help="images per device")
  parser.add_argument("--objects", type=int, default=7)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument("--dtype", default="float32", choices=DTYPES, help="model.dtype (parameters stay float32)")
  parser.add_argument("--matcher", default="scipy", choices=MATCHER_BACKENDS, help="loss.matcher_backend")
  args = parser.parse_args(argv)
  if min(args.size) < 1 or args.batch < 1 or args.reps < 1 or args.objects < 0:
    parser.error(f"--size, --batch and --reps must be positive and --objects >= 0, got {args.size[0]} "
                 f"{args.size[1]}, {args.batch}, {args.reps}, {args.objects}")
  if not 0 <= args.dropout < 1:
    parser.error(f"--dropout must be in [0, 1), got {args.dropout}")

  n = jax.local_device_count()
  config = training_config(global_batch_size=args.batch * n, max_objects=max(args.objects, 1))
  config.model = model_config_of(args.model)
  config.model.dropout = args.dropout
  if args.objects > config.model.num_queries:
    parser.error(f"--objects {args.objects}: more than --model {args.model}'s {config.model.num_queries} queries")
  if args.dtype != "float32":
    if "dtype" not in config.model:
      parser.error(f"--dtype {args.dtype}: this version's model config has no dtype field")
    config.model.dtype = args.dtype
  config.loss.matcher_backend = args.matcher
  params = filled_params(config.model)
  model, tx = build_model(config.model), make_optimizer(config, params)
  p_train, _ = steps.pmapped_steps(model, make_criterion(config), tx)
  state = steps.replicate(TrainState.create(params, tx, jax.random.PRNGKey(0)), n)
  batch = steps.shard(synthetic_batch(args.batch * n, *args.size, args.objects, config.model.num_classes,
                                   config.max_objects, config.model.masks), n)
  start = time.perf_counter()
  train = p_train.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  state, metrics = train(state, batch)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - start
  times = []
  for i in range(args.reps):
    start = time.perf_counter()
    state, metrics = train(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    print(f"rep {i + 1}/{args.reps}: {times[-1]:.3f} s (loss {float(metrics['loss'][0]):.3f})", flush=True)
  median = statistics.median(times)
  device = jax.local_devices()[0]
  print(json.dumps({"model": args.model, "size": list(args.size), "batch_per_device": args.batch, "devices": n,
                    "dtype": args.dtype, "matcher": args.matcher, "dropout": args.dropout, "reps": args.reps,
                    "median_s": round(median, 4), "min_s": round(min(times), 4),
                    "images_per_s": round(args.batch * n / median, 2), "compile_s": round(compile_s, 2),
                    "first_step_s": round(first_s, 3), "peak_memory_gib": peak_memory_gib(device),
                    "backend": jax.default_backend(), "device_kind": device.device_kind, "jax": jax.__version__}))


if __name__ == "__main__":
  main()
