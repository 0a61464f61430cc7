"""Memory of one train step for each model.remat setting: what JAX keeps for the backward pass and
XLA's compiled memory analysis.

  python benchmarks/remat_memory.py --model detr_resnet50 --batch 4 --size 800 1088 [--no_compile]

For the batch on one device, with dropout on (the official recipe), two measures per setting:
- residuals: the arrays JAX saves in the forward pass for the backward pass of the model
  (`jax.ad_checkpoint` saved residuals, parameters and inputs excluded), before XLA: what remat
  trades for recomputation, the same on every backend. Tracing only, seconds.
- XLA temp, arguments, outputs: buffer sizes of the train step train.py runs (forward, matching,
  losses, backward, AdamW update), compiled (never run) for this machine's backend. What a
  device really allocates, after XLA's fusion and scheduling; minutes per setting on a CPU.
"saved" columns are against remat none (else the first setting). The last line is JSON.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.ad_checkpoint import saved_residuals  # the list that jax.ad_checkpoint.print_saved_residuals prints

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


def abstract_params(model):
  init = jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), bool)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *init)["params"]


def residual_bytes(model, batch: int, h: int, w: int) -> int:
  """Bytes of the arrays the model's forward pass saves for its backward pass (training mode)."""
  def loss(params, images, mask):
    outputs = model.apply({"params": params}, images, mask, deterministic=False,
                          rngs={"dropout": jax.random.PRNGKey(0)})
    return sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(outputs))

  images, mask = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32), jax.ShapeDtypeStruct((batch, h, w), bool)
  saved = saved_residuals(loss, abstract_params(model), images, mask)
  return int(sum(np.prod(aval.shape) * aval.dtype.itemsize for aval, source in saved
                 if "from the argument" not in source))


def train_step_memory(model_cfg, batch: int, h: int, w: int, max_objects: int) -> dict:
  """XLA's memory analysis of the compiled train step, in bytes, plus the compile time."""
  config = training_config(global_batch_size=batch, max_objects=max_objects)
  config.model = model_cfg
  model = build_model(model_cfg)
  params = abstract_params(model)
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
  parser.add_argument("--no_compile", action="store_true", help="only the residuals (no XLA compilation)")
  args = parser.parse_args(argv)
  if min(args.size) < 32 or args.batch < 1 or args.objects < 1:
    parser.error(f"--size must be at least 32 32, --batch and --objects positive; got {args.size[0]} "
                 f"{args.size[1]}, {args.batch}, {args.objects}")

  rows = []
  print(f"{args.model}, batch {args.batch} at {args.size[0]}x{args.size[1]}, {args.dtype}, backend "
        f"{jax.default_backend()} (jax {jax.__version__}); MiB")
  header = f"{'remat':<12} {'residuals':>10} {'saved':>6}"
  print(header if args.no_compile else
        f"{header} {'XLA temp':>9} {'saved':>6} {'arguments':>10} {'outputs':>8} {'compile s':>10}")
  for remat in args.remat:
    model_cfg = variant_config(args.model).model
    model_cfg.update(dtype=args.dtype, remat=remat)
    row = {"remat": remat, "residuals": residual_bytes(build_model(model_cfg), args.batch, *args.size)}
    if not args.no_compile:
      row.update(train_step_memory(model_cfg, args.batch, *args.size, args.objects))
    rows.append(row)
    base = next((r for r in rows if r["remat"] == "none"), rows[0])
    saved = lambda key: f"{1 - row[key] / base[key]:>6.0%}"
    line = f"{remat:<12} {row['residuals'] / MIB:>10.0f} {saved('residuals')}"
    if not args.no_compile:
      line += (f" {row['temp'] / MIB:>9.0f} {saved('temp')} {row['arguments'] / MIB:>10.0f} "
               f"{row['outputs'] / MIB:>8.0f} {row['compile_s']:>10.1f}")
    print(line, flush=True)
  print(json.dumps({"model": args.model, "size": list(args.size), "batch": args.batch, "dtype": args.dtype,
                    "objects": args.objects, "backend": jax.default_backend(), "jax": jax.__version__,
                    "rows": rows}))


if __name__ == "__main__":
  main()
