"""Memory of one train step for each model.remat setting, from XLA's compiled memory analysis.

  python benchmarks/remat_memory.py --model detr_resnet50 --batch 4 --size 800 1088

Compiles (never runs) the train step train.py runs (forward, matching, losses, backward, AdamW
update; dropout on, the official recipe) on this machine's backend for the batch on one device,
and prints XLA's buffer sizes: temp (activations kept for the backward pass and other scratch:
what remat trades for recomputation), arguments (train state and batch), outputs. The last line
is JSON; "temp saved" is against remat none (else the first setting). Each compilation of DETR-R50
takes minutes on a CPU.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp

from detr_jax.config import DTYPES, REMAT, VARIANTS, training_config, variant_config
from detr_jax.models import build_model
from detr_jax.training import step as steps
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.setup import make_criterion
from detr_jax.training.state import TrainState

MIB = 2 ** 20


def abstract_batch(batch: int, h: int, w: int, max_objects: int, masks: bool) -> dict:
  """Shapes and dtypes of one device's batch, with the leading device axis."""
  shapes = {"images": ((batch, h, w, 3), jnp.float32), "mask": ((batch, h, w), bool),
            "labels": ((batch, max_objects), jnp.int32), "boxes": ((batch, max_objects, 4), jnp.float32),
            "valid": ((batch, max_objects), bool)}
  if masks:
    shapes["masks"] = ((batch, max_objects, h, w), bool)
  return {k: jax.ShapeDtypeStruct((1, *shape), dtype) for k, (shape, dtype) in shapes.items()}


def train_step_memory(model_cfg, batch: int, h: int, w: int, max_objects: int) -> dict:
  """XLA's memory analysis of the compiled train step, in bytes, plus the compile time."""
  config = training_config(global_batch_size=batch, max_objects=max_objects)
  config.model = model_cfg
  model = build_model(model_cfg)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), bool))
  params = params["params"]
  tx = make_optimizer(config, params)
  state = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0)), params)
  state = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((1, *s.shape), s.dtype), state)
  p_train, _ = steps.pmapped_steps(model, make_criterion(config), tx)
  start = time.perf_counter()
  compiled = p_train.lower(state, abstract_batch(batch, h, w, max_objects, model_cfg.masks)).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  return {"temp": stats.temp_size_in_bytes, "arguments": stats.argument_size_in_bytes,
          "outputs": stats.output_size_in_bytes, "aliased": stats.alias_size_in_bytes,
          "compile_s": round(seconds, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="detr_resnet50", choices=list(VARIANTS))
  parser.add_argument("--size", type=int, nargs=2, default=(800, 1088), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=4, help="images on the device (the official recipe: 4 per GPU)")
  parser.add_argument("--objects", type=int, default=100, help="max_objects: padded targets per image")
  parser.add_argument("--dtype", default="float32", choices=DTYPES)
  parser.add_argument("--remat", nargs="+", default=list(REMAT), choices=REMAT)
  args = parser.parse_args(argv)
  if min(args.size) < 32 or args.batch < 1 or args.objects < 1:
    parser.error(f"--size must be at least 32 32, --batch and --objects positive; got {args.size[0]} "
                 f"{args.size[1]}, {args.batch}, {args.objects}")

  rows = []
  print(f"{args.model}, batch {args.batch} at {args.size[0]}x{args.size[1]}, {args.dtype}, backend "
        f"{jax.default_backend()} (jax {jax.__version__}): compiled train step, MiB")
  print(f"{'remat':<12} {'temp':>9} {'arguments':>10} {'outputs':>9} {'temp saved':>11} {'compile s':>10}")
  for remat in args.remat:
    model_cfg = variant_config(args.model).model
    model_cfg.update(dtype=args.dtype, remat=remat)
    row = {"remat": remat, **train_step_memory(model_cfg, args.batch, *args.size, args.objects)}
    rows.append(row)
    base = next((r for r in rows if r["remat"] == "none"), rows[0])
    saved = 1 - row["temp"] / base["temp"]
    print(f"{remat:<12} {row['temp'] / MIB:>9.0f} {row['arguments'] / MIB:>10.0f} {row['outputs'] / MIB:>9.0f} "
          f"{saved:>10.0%} {row['compile_s']:>10.1f}", flush=True)
  print(json.dumps({"model": args.model, "size": list(args.size), "batch": args.batch, "dtype": args.dtype,
                    "objects": args.objects, "backend": jax.default_backend(), "jax": jax.__version__,
                    "rows": rows}))


if __name__ == "__main__":
  main()
