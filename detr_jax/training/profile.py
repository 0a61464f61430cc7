"""Where a train step's time goes: the step cut into parts, each timed as its own jitted function.

Method: timed sub-functions. Each part is jit-compiled on its own (compile excluded) and timed as
the fastest of `reps` calls, each waiting for its result; the calls are interleaved (`reps` rounds,
each calling the whole step and every part once), so that a passing load weighs on all alike. The
backward parts are `jax.vjp` of the part's forward (so they include that forward, as the step
does), fed the cotangents that the real step would feed them. The added parts are:

  host -> device   `device_put` of the step's batch (images, mask, padded targets)
  backbone         ResNet forward + backward (gradients of the trained weights only, as the
                   optimizer prunes the frozen ones)
  transformer      input_proj, position encoding, encoder and decoder: forward + backward, dropout on
  heads            class and box heads on every decoder layer: forward + backward
  criterion        matching costs, the matcher, the losses: forward + backward w.r.t. the outputs
  optimizer        the gradients' all-reduce, frozen-gradient mask, norm clipping, AdamW, the
                   parameter update, the finiteness check: the whole step minus the step without
                   its update (the trained weights' gradients), as XLA fuses the update into the
                   backward pass

Each jitted part also has its floating-point operations, as XLA's cost analysis counts them
(2 per multiply-add), and the rate it ran at. Set against the machine's float32 matmul peak
(`float32_matmul_peak`), they say how far from its roofline each part runs, and the least time
the step's work can take here at all.

Rows marked "(in ...)" are contained in an added part: a forward alone, the dropout masks (the
transformer with dropout minus without) and the matcher's host callback (scipy on the cost
matrices). XLA cannot fuse across the parts, so the parts add up to the step only approximately;
the table shows both.
Box models only (no mask head).
"""
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from detr_jax import matcher
from detr_jax.models import build_model
from detr_jax.models.backbone import ResNet
from detr_jax.models.transformer import Transformer
from detr_jax.training import step as steps
from detr_jax.training.optimizer import FROZEN, make_optimizer, param_labels
from detr_jax.training.setup import make_criterion
from detr_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  seconds: float
  added: bool  # False: contained in an added part
  method: str
  flops: float | None = None  # XLA's count; None for host work


def flop_count(compiled) -> float | None:
  """XLA's floating-point operation count of a compiled (or lowered) jax function; None where the
  backend reports none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  return float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None


def float32_matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """The machine's float32 peak in FLOP/s, as the fastest of `reps` [n, n] @ [n, n] products in
  numpy's BLAS (its default threads): the dense kernel that real workloads can at best match."""
  a, b = np.random.default_rng(0).random((2, n, n), dtype=np.float32)
  a @ b
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def synthetic_batch(batch: int, h: int, w: int, objects: int, num_classes: int, max_objects: int, masks: bool):
  """Random normalised images [batch, h, w, 3], no padding, and `objects` random targets per image
  (of `max_objects` slots); masks: random target masks [batch, max_objects, h, w]."""
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


def interleaved_fastest(thunks: list, reps: int) -> list[float]:
  """The fastest wall time of each thunk (each call waited for) in `reps` rounds that call every
  thunk once, after one warm-up round. On a shared machine other load only ever adds time, and
  it comes and goes: the fastest of interleaved calls is what each thunk costs on its own."""
  for thunk in thunks:
    jax.block_until_ready(thunk())
  times = [[] for _ in thunks]
  for _ in range(reps):
    for thunk, spent in zip(thunks, times):
      start = time.perf_counter()
      jax.block_until_ready(thunk())
      spent.append(time.perf_counter() - start)
  return [min(spent) for spent in times]


def _replacing(outputs_of: dict):
  """An interceptor that returns outputs_of[module class] instead of calling that module."""
  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and type(context.module) in outputs_of:
      return outputs_of[type(context.module)]
    return next_fun(*args, **kwargs)
  return interceptor


def _split(params, keep):
  """(the leaves where keep(path), the others) of a nested dict, both flat."""
  flat = traverse_util.flatten_dict(params)
  return ({p: v for p, v in flat.items() if keep(p)}, {p: v for p, v in flat.items() if not keep(p)})


def _joined(*flats):
  return traverse_util.unflatten_dict({k: v for flat in flats for k, v in flat.items()})


def _compiled(fn, *args):
  """(a thunk calling fn(*args) jit-compiled, its flop count)."""
  compiled = jax.jit(fn).lower(*args).compile()
  return (lambda: compiled(*args)), flop_count(compiled)


def _backward(fn, primals: tuple, others: tuple, cotangent):
  """(a thunk of fn(*primals, *others)'s forward + backward (vjp w.r.t. `primals`) fed `cotangent`,
  its flop count). Every input is an argument of the jitted function, so that XLA folds nothing
  into constants."""
  return _compiled(lambda p, o, ct: jax.vjp(lambda *x: fn(*x, *o), *p)[1](ct), primals, others, cotangent)


def profile_train_step(config, params, batch: dict, reps: int = 5) -> tuple[list[Part], Part]:
  """(parts, the whole train step) for one device's `batch` (host numpy arrays as from
  `synthetic_batch`) under `config` (a training config, box model)."""
  if config.model.masks:
    raise ValueError("the train-step profile covers box models; this config has model.masks")
  model, criterion = build_model(config.model), make_criterion(config)
  params = jax.device_put(params)  # on the device once: the parts then time no host -> device copy of them
  tx = make_optimizer(config, params)
  key = jax.random.PRNGKey(0)
  targets = {k: batch[k] for k in steps.TARGET_KEYS if k in batch}
  labels = traverse_util.flatten_dict(param_labels(params, config.lr_backbone, config.freeze_detr,
                                                   config.freeze_stem))

  p_train, _ = steps.pmapped_steps(model, criterion, tx)
  state = steps.replicate(TrainState.create(params, tx, key), 1)
  sharded = steps.shard(batch, 1)
  whole = p_train.lower(state, sharded).compile()
  state_box = [whole(state, sharded)[0]]  # each call uses the state the last one returned, as train.py

  def whole_step():
    state_box[0], metrics = whole(state_box[0], sharded)
    return metrics

  timed = [("host -> device", (lambda: jax.device_put(sharded), None), True, "jax.device_put")]
  # (name, (thunk, flops), added, method)
  # Backbone: the trained weights are differentiated, the frozen ones are constants.
  resnet = ResNet(model.backbone, model.dilation, model.dtype, model.remat_backbone, model.backbone_layers)
  trained, frozen = _split(params["backbone"], lambda p: labels[("backbone", *p)] != FROZEN)
  images, mask = jnp.asarray(batch["images"]), jnp.asarray(batch["mask"])

  def backbone(trained, frozen, images, mask):
    return resnet.apply({"params": _joined(trained, frozen)}, images, mask if model.isolate_padding else None)

  levels = jax.jit(backbone)(trained, frozen, images, mask)
  timed.append(("backbone forward", _compiled(backbone, trained, frozen, images, mask), False, "(in backbone)"))

  # The rest of the model, with the backbone's (and for the heads the transformer's) outputs put in
  # place of those modules' calls.
  rest = {k: v for k, v in params.items() if k != "backbone"}
  stub = jnp.zeros((images.shape[0], 1, 1, 3), images.dtype)

  def transformer(p, last_level, mask, key, deterministic=False):
    replaced = {ResNet: [*map(jnp.zeros_like, levels[:-1]), last_level]}
    with nn.intercept_methods(_replacing(replaced)):
      _, state = model.apply({"params": p}, stub, mask, deterministic=deterministic, rngs={"dropout": key},
                             mutable=["intermediates"])
    return state["intermediates"]["hs"][0]

  def heads(p, hs, mask):
    memory = jnp.zeros((*levels[-1].shape[:3], model.hidden_dim), model.transformer_config.dtype)
    replaced = {ResNet: [*map(jnp.zeros_like, levels)], Transformer: (hs, memory)}
    with nn.intercept_methods(_replacing(replaced)):
      return model.apply({"params": p}, stub, mask)

  def loss(outputs, targets):
    return criterion(outputs, targets)[0]

  # The cotangents that the step's backward pass feeds each part.
  hs = jax.jit(transformer)(rest, levels[-1], mask, key)
  outputs = jax.jit(heads)(rest, hs, mask)
  outputs_ct = jax.jit(jax.grad(loss))(outputs, targets)
  hs_ct = jax.jit(lambda p, h, m, ct: jax.vjp(lambda h: heads(p, h, m), h)[1](ct)[0])(rest, hs, mask, outputs_ct)
  level_ct = jax.jit(lambda p, x, m, k, ct: jax.vjp(lambda x: transformer(p, x, m, k), x)[1](ct)[0])(
      rest, levels[-1], mask, key, hs_ct)

  last_level = lambda trained, frozen, images, mask: backbone(trained, frozen, images, mask)[-1]
  timed.append(("backbone", _backward(last_level, (trained,), (frozen, images, mask), level_ct), True,
                "jax.vjp (trained weights)"))
  timed.append(("transformer forward", _compiled(transformer, rest, levels[-1], mask, key), False,
                "(in transformer)"))
  timed.append(("transformer", _backward(transformer, (rest, levels[-1]), (mask, key), hs_ct), True, "jax.vjp"))
  deterministic = lambda p, x, m, k: transformer(p, x, m, k, deterministic=True)
  timed.append(("without dropout", _backward(deterministic, (rest, levels[-1]), (mask, key), hs_ct), False, ""))
  timed.append(("heads", _backward(heads, (rest, hs), (mask,), outputs_ct), True, "jax.vjp"))
  timed.append(("criterion", _compiled(jax.grad(loss), outputs, targets), True,
                f"jax.grad w.r.t. the outputs ({criterion.matcher_backend} matcher)"))
  if criterion.matcher_backend == "scipy":
    costs = np.asarray(jax.jit(criterion.match_costs)(outputs, targets))
    assign = lambda: matcher.assign_scipy(costs, np.asarray(batch["valid"]))
    timed.append(("matcher host callback", (assign, None), False, "(in criterion: scipy linear_sum_assignment)"))

  # The optimizer's share: the whole step minus the step without its update (the trained weights'
  # gradients only, pmapped as the step). Timed alone, the update would read and write every
  # gradient and Adam moment once more than it does fused into the step's backward pass.
  def gradients(state, batch):
    def step_loss(params):
      outputs = model.apply({"params": params}, batch["images"], batch["mask"], deterministic=False,
                            rngs={"dropout": state.key})
      return criterion(outputs, {k: batch[k] for k in steps.TARGET_KEYS if k in batch}, axis_name=steps.AXIS)[0]
    grads = traverse_util.flatten_dict(jax.grad(step_loss)(state.params))
    return {"/".join(path): g for path, g in grads.items() if labels[path] != FROZEN}

  without_update = jax.pmap(gradients, axis_name=steps.AXIS).lower(state, sharded).compile()
  timed.append(("without the update", (lambda: without_update(state_box[0], sharded), flop_count(without_update)),
                False, ""))

  seconds = interleaved_fastest([whole_step] + [thunk for _, (thunk, _), _, _ in timed], reps)
  step = Part("whole train step", seconds[0], False, "pmapped, as train.py runs it", flop_count(whole))
  by_name = {name: (t, flops) for (name, (_, flops), _, _), t in zip(timed, seconds[1:])}
  parts = []
  for name, _, added, method in timed:
    if name == "without dropout":
      parts.append(_difference("dropout", by_name["transformer"], by_name[name], False,
                               "(in transformer: with - without dropout)"))
    elif name == "without the update":
      parts.append(_difference("optimizer", (step.seconds, step.flops), by_name[name], True,
                               "whole step - the step without its update: pmean of the gradients, optax update + "
                               "apply_updates, finiteness check"))
    else:
      seconds, flops = by_name[name]
      parts.append(Part(name, seconds, added, method, flops))
  return parts, step


def _difference(name, minuend, subtrahend, added, method) -> Part:
  """The Part whose seconds and flops are those of `minuend` less `subtrahend` ((seconds, flops) each)."""
  flops = None if None in (minuend[1], subtrahend[1]) else minuend[1] - subtrahend[1]
  return Part(name, minuend[0] - subtrahend[0], added, method, flops)


def format_table(parts: list[Part], step: Part, peak_flops: float | None = None) -> str:
  """The parts, their sum and the whole step: each one's share of the step, GFLOP and GFLOP/s;
  with `peak_flops` (FLOP/s), the least time the step's FLOPs take at that rate."""
  added = [p for p in parts if p.added]
  flops = None if any(p.flops is None for p in added if p.name != "host -> device") else sum(
      p.flops or 0 for p in added)
  rows = [*parts, Part("sum of the added parts", sum(p.seconds for p in added), False, "", flops), step]
  width = max(len(p.name) for p in rows)
  lines = [f"{'part':<{width}}  {'seconds':>9}  {'share':>6}  {'GFLOP':>8}  {'GFLOP/s':>8}  method", "-" * (width + 60)]
  for p in rows:
    gflop, rate = ("-", "-") if p.flops is None else (f"{p.flops / 1e9:.2f}", f"{p.flops / 1e9 / p.seconds:.1f}")
    lines.append(f"{p.name:<{width}}  {p.seconds:9.4f}  {p.seconds / step.seconds:6.1%}  {gflop:>8}  {rate:>8}  "
                 f"{p.method}")
  if peak_flops and step.flops:
    lines.append(f"float32 matmul peak of this machine (numpy BLAS): {peak_flops / 1e9:.1f} GFLOP/s; the whole "
                 f"step's {step.flops / 1e9:.1f} GFLOP take at least {step.flops / peak_flops:.3f} s at that rate "
                 f"(the step runs at {step.flops / step.seconds / peak_flops:.0%} of it)")
  return "\n".join(lines)
