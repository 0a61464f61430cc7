"""Per-device train and eval steps with named-axis collectives, and their pmapped forms.

A batch is a dict with `images` [B, H, W, 3], `mask` [B, H, W] (True = padding) and the padded
targets (`labels`, `boxes`, `valid`, optional `masks`); under pmap every array gets a leading
device axis.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from detr_jax.postprocess import postprocess_boxes
from detr_jax.training.state import TrainState, ema_update

AXIS = "batch"
TARGET_KEYS = ("labels", "boxes", "valid", "masks")


def train_step(state: TrainState, batch, *, model, criterion, tx, axis_name=AXIS, grad_accum_steps=1,
               ema_decay=0.0):
  """One optimisation step on this device's share of the global batch -> (state, metrics).

  metrics["finite"] (bool) says whether the step's predictions, loss and updates were all finite.

  Gradients are averaged over `axis_name`; the criterion normalises its losses by global counts,
  so the result does not depend on how the global batch is split over devices.

  grad_accum_steps k > 1: the device's share is split into k micro-batches of consecutive images
  whose gradients are summed in a `lax.scan` (the memory of one micro-batch), then one update; the
  losses are normalised by the counts of the whole global batch, so the update is the one of the
  whole batch at once (up to float rounding). Micro-batch i draws its dropout from
  fold_in(step key, i), so with dropout the masks differ from the one-batch step's.
  ema_decay > 0: state.ema_params follows decay * ema + (1 - decay) * params after the update.
  """
  if (state.ema_params is None) != (ema_decay == 0):
    raise ValueError(f"ema_decay {ema_decay} but the state {'has no' if state.ema_params is None else 'has'} "
                     "EMA parameters")
  key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), jax.lax.axis_index(axis_name))
  inputs = {k: batch[k] for k in ("images", "mask") + TARGET_KEYS if k in batch}

  def loss_fn(params, inputs, key, accumulated_valid=None):
    outputs = model.apply({"params": params}, inputs["images"], inputs["mask"], deterministic=False,
                          rngs={"dropout": key})
    targets = {k: inputs[k] for k in TARGET_KEYS if k in inputs}
    loss, losses = criterion(outputs, targets, axis_name=axis_name, accumulated_valid=accumulated_valid)
    return loss, (losses, all_finite(outputs))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, (losses, outputs_finite)), grads = grad_fn(state.params, inputs, key)
  else:
    loss, losses, outputs_finite, grads = accumulate_gradients(grad_fn, state.params, inputs, key, grad_accum_steps)
  weights = criterion.weight_dict(sum(k.startswith("loss_ce_") for k in losses))
  # Logged as the official code does: weighted terms by name, raw ones with "_unscaled".
  metrics = {**{k: v * weights[k] if k in weights else v for k, v in losses.items()},
             **{f"{k}_unscaled": v for k, v in losses.items() if k in weights}}
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # (No gradient norm here: reading the frozen parameters' gradients would keep XLA from
  # pruning their computation, e.g. the backward pass through the frozen stem.)
  metrics = jax.lax.pmean(dict(metrics, loss=loss), axis_name)
  # One flag per step, true on every device iff all of them saw finite predictions, loss and
  # updates (NaN/inf predictions also make matching costs non-finite, whatever the matcher backend).
  finite = outputs_finite & jnp.isfinite(loss) & all_finite(updates)
  metrics["finite"] = jax.lax.pmin(finite.astype(jnp.int32), axis_name).astype(bool)
  ema_params = None if state.ema_params is None else ema_update(state.ema_params, params, ema_decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params), metrics


def accumulate_gradients(grad_fn, params, inputs, key, parts: int):
  """(loss, losses, outputs finite, gradients) of `inputs` (batch axis first) split into `parts`
  micro-batches, each the mean over them; grad_fn is loss_fn's value_and_grad (see train_step)."""
  micro = jax.tree_util.tree_map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]), inputs)

  def body(grad_sum, part):
    i, micro_batch = part
    (loss, (losses, finite)), grads = grad_fn(params, micro_batch, jax.random.fold_in(key, i), micro["valid"])
    return jax.tree_util.tree_map(jnp.add, grad_sum, grads), (loss, losses, finite)

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  grad_sum, (loss, losses, finite) = jax.lax.scan(body, zeros, (jnp.arange(parts), micro))
  mean = lambda x: jnp.mean(x, axis=0)
  return mean(loss), jax.tree_util.tree_map(mean, losses), jnp.all(finite), jax.tree_util.tree_map(
      lambda g: g / parts, grad_sum)


def all_finite(tree) -> jax.Array:
  """Scalar bool: every float in `tree` is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.logical_and.reduce(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def eval_step(params, batch, *, model):
  """Detections of this device's images: scores, labels [B, Q] and xyxy boxes in original pixels;
  mask models add pred_logits [B, Q, C+1] and pred_masks [B, Q, H/4, W/4] for host post-processing."""
  outputs = model.apply({"params": params}, batch["images"], batch["mask"])
  scores, labels, boxes = postprocess_boxes(outputs["pred_logits"], outputs["pred_boxes"], batch["orig_size"])
  extra = {k: outputs[k] for k in ("pred_logits", "pred_masks") if "pred_masks" in outputs}
  return {"scores": scores, "labels": labels, "boxes": boxes, **extra}


def pmapped_steps(model, criterion, tx, eval_model=None, grad_accum_steps=1, ema_decay=0.0):
  """(p_train_step, p_eval_step) over all local devices.

  eval_model: the model evaluated (same parameters, e.g. with isolate_padding), default `model`.
  grad_accum_steps, ema_decay: see `train_step`.
  The train state is donated on accelerators (where memory is scarce), not on the CPU: there XLA
  fuses the Adam moments' update into the parameters' update as well, so that the fusion reads the
  old moments after their in-place update, and it copies every trained parameter's moments (and,
  through the finiteness check, the parameters) ahead of the update instead: 0.7 s of a 4.6 s
  DETR-R50 step (batch 2, 512x683, this project's 2-core CPU).
  """
  donate = (0,) if jax.default_backend() != "cpu" else ()
  p_train = jax.pmap(functools.partial(train_step, model=model, criterion=criterion, tx=tx,
                                       grad_accum_steps=grad_accum_steps, ema_decay=ema_decay),
                     axis_name=AXIS, donate_argnums=donate)
  p_eval = jax.pmap(functools.partial(eval_step, model=eval_model or model), axis_name=AXIS)
  return p_train, p_eval


def shard(batch, num_devices: int):
  """Splits every array's leading (global batch) axis into [num_devices, per_device, ...]."""
  return jax.tree_util.tree_map(lambda x: x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:]), batch)


def replicate(tree, num_devices: int):
  """Copies on a new leading device axis, placed as pmap's own outputs are (so that the first
  and later steps share one compilation)."""
  stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * num_devices), jax.device_get(tree))
  return jax.pmap(lambda t: t, axis_name=AXIS)(stacked)


def unreplicate(tree):
  """The first local device's copy, on the host. (Indexing the pmapped array instead would run a
  computation, which with several processes may wait on the others: a deadlock.)"""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
