"""Where the time of one train step goes, part by part (timed sub-functions); last line is JSON.

  python benchmarks/profile_step.py [--model detr_resnet50] [--size 512 683] [--batch 2] [--reps 5] \
      [--dtype float32|bfloat16] [--matcher scipy|optax] [--dropout 0.1] [--objects 8]

One device's step of the official recipe on random targets (as benchmarks/train_step.py), cut into
host -> device, backbone, transformer, heads, criterion and optimizer, each jit-compiled alone and
timed (the fastest of --reps interleaved rounds); see detr_jax/training/profile.py for what each
part holds. Prints a table and the whole step's time, which the added parts should roughly sum to,
with each part's FLOPs (XLA's count) and rate; on the CPU also the machine's float32 matmul peak and
the least time the step's FLOPs take at it.
"""
import argparse
import json
import os

import jax

from detr_jax.config import MATCHER_BACKENDS, VARIANTS, load_config_file, training_config, variant_config
from detr_jax.torch_io.convert import filled_params
from detr_jax.training.profile import float32_matmul_peak, format_table, profile_train_step, synthetic_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50", choices=[*VARIANTS, "synthetic"])
  parser.add_argument("--size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=2, help="images in the step")
  parser.add_argument("--objects", type=int, default=8)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--matcher", default="scipy", choices=MATCHER_BACKENDS)
  args = parser.parse_args(argv)
  if min(args.size) < 1 or args.batch < 1 or args.reps < 1 or args.objects < 0:
    parser.error(f"--size, --batch and --reps must be positive and --objects >= 0, got {args.size[0]} "
                 f"{args.size[1]}, {args.batch}, {args.reps}, {args.objects}")
  if not 0 <= args.dropout < 1:
    parser.error(f"--dropout must be in [0, 1), got {args.dropout}")

  config = training_config(global_batch_size=args.batch, max_objects=max(args.objects, 1))
  if args.model == "synthetic":
    config.model = load_config_file(os.path.join(ROOT, "configs", "synthetic.py")).model
  else:
    config.model = variant_config(args.model).model
  if config.model.masks:
    parser.error(f"--model {args.model}: the profile covers box models (no mask head)")
  if args.objects > config.model.num_queries:
    parser.error(f"--objects {args.objects}: more than --model {args.model}'s {config.model.num_queries} queries")
  config.model.update(dropout=args.dropout, dtype=args.dtype)
  config.loss.matcher_backend = args.matcher
  batch = synthetic_batch(args.batch, *args.size, args.objects, config.model.num_classes, config.max_objects, False)
  parts, step = profile_train_step(config, filled_params(config.model), batch, args.reps)
  peak = float32_matmul_peak() if jax.default_backend() == "cpu" else None  # numpy's BLAS: the CPU's peak
  print(format_table(parts, step, peak))
  print(json.dumps({"model": args.model, "size": list(args.size), "batch": args.batch, "dtype": args.dtype,
                    "reps": args.reps, "step_s": round(step.seconds, 4),
                    "parts": {p.name: round(p.seconds, 4) for p in parts},
                    "gflop": {p.name: round(p.flops / 1e9, 3) for p in [*parts, step] if p.flops is not None},
                    "float32_matmul_peak_gflop_s": peak and round(peak / 1e9, 1),
                    "added_sum_s": round(sum(p.seconds for p in parts if p.added), 4),
                    "method": "timed sub-functions (jax.jit each, fastest of interleaved rounds)",
                    "backend": jax.default_backend(), "jax": jax.__version__}))


if __name__ == "__main__":
  main()
