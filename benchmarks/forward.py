"""Time a jitted eval-mode forward of a released variant; the last line printed is JSON.

  python benchmarks/forward.py --model detr_resnet50 --size 800 1066 --batch 1 --reps 5 [--runtime onnxruntime]

Weights come from fill procedure v1 (no download needed; speed does not depend on values).
gflop is the forward's floating-point work as XLA counts it (2 per multiply-add), the same
for either runtime; gflop_per_s its rate at the median time.
Compile time (jax) or export and session time (onnxruntime, `detr_jax.onnx_runtime`; --threads as
official_bench.py's) is reported separately; median_s / min_s are over --reps runs after it.
"""
import argparse
import importlib.metadata
import json
import statistics
import time

import jax
import numpy as np

from detr_jax.config import VARIANTS, variant_config
from detr_jax.models import build_model
from detr_jax.torch_io.convert import filled_params
from detr_jax.training.profile import flop_count


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50", choices=list(VARIANTS))
  parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--isolate-padding", action="store_true", help="the batch-invariant model (see ResNet)")
  parser.add_argument("--runtime", choices=("jax", "onnxruntime"), default="jax")
  parser.add_argument("--threads", type=int, default=0, help="onnxruntime's intra-op threads (0: its default)")
  args = parser.parse_args(argv)
  if min(args.size) < 1 or args.batch < 1 or args.reps < 1:
    parser.error(f"--size, --batch and --reps must be positive, got {args.size[0]} {args.size[1]}, {args.batch}, "
                 f"{args.reps}")

  cfg = variant_config(args.model).model
  params = filled_params(cfg)
  model = build_model(cfg, isolate_padding=args.isolate_padding, for_onnx=args.runtime == "onnxruntime")
  h, w = args.size
  images = np.random.default_rng(0).normal(size=(args.batch, h, w, 3)).astype(np.float32)
  mask = np.zeros((args.batch, h, w), bool)
  apply = lambda p, x, m: model.apply({"params": p}, x, m)
  flops = flop_count(jax.jit(apply).lower(params, images, mask))  # the model's work, whichever runtime runs it
  start = time.perf_counter()
  if args.runtime == "onnxruntime":
    from detr_jax.onnx_runtime import OnnxFunction
    forward = OnnxFunction(lambda x, m: apply(params, x, m), args.threads)
    forward.session(images, mask)
  else:
    params, images, mask = jax.device_put((params, images, mask))
    compiled = jax.jit(apply).lower(params, images, mask).compile()
    forward = lambda x, m: compiled(params, x, m)
  compile_s = time.perf_counter() - start
  jax.block_until_ready(forward(images, mask))  # warm-up
  times = []
  for i in range(args.reps):
    start = time.perf_counter()
    jax.block_until_ready(forward(images, mask))
    times.append(time.perf_counter() - start)
    print(f"rep {i + 1}/{args.reps}: {times[-1]:.3f} s", flush=True)
  print(json.dumps({"model": args.model, "size": [h, w], "batch": args.batch, "reps": args.reps,
                    "isolate_padding": args.isolate_padding,
                    "runtime": args.runtime,
                    "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                    "gflop": flops and round(flops / 1e9, 2),
                    "gflop_per_s": flops and round(flops / 1e9 / statistics.median(times), 1),
                    "compile_s": round(compile_s, 2), "jax": jax.__version__,
                    **({"onnxruntime": importlib.metadata.version("onnxruntime"), "threads": args.threads}
                       if args.runtime == "onnxruntime" else {}),
                    "device": jax.devices()[0].device_kind, "backend": jax.default_backend()}))


if __name__ == "__main__":
  main()
