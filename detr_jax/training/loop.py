"""The training loop: data -> pmapped step -> metrics, checkpoints, evaluation and pictures."""
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from detr_jax import checkpoints
from detr_jax.criterion import SetCriterion
from detr_jax.data import build_dataset, resolve_num_classes
from detr_jax.models import build_model
from detr_jax.training import step as steps
from detr_jax.training.checkpoint import Checkpointer
from detr_jax.training.evaluate import batches, evaluate, stream_plan
from detr_jax.training.metrics_log import MetricsLog
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.state import TrainState
from detr_jax.visualize import draw_detections, save_grid


class NonFiniteLossError(RuntimeError):
  pass


def make_criterion(config) -> SetCriterion:
  """The set criterion of `config.loss` (official defaults), with mask losses for panoptic models."""
  loss = config.loss
  return SetCriterion(
      num_classes=config.model.num_classes, eos_coef=loss.eos_coef,
      losses=("labels", "boxes", "cardinality") + (("masks",) if config.model.masks else ()),
      bbox_loss_coef=loss.bbox_loss_coef, giou_loss_coef=loss.giou_loss_coef,
      mask_loss_coef=loss.mask_loss_coef, dice_loss_coef=loss.dice_loss_coef,
      cost_class=loss.set_cost_class, cost_bbox=loss.set_cost_bbox, cost_giou=loss.set_cost_giou,
      matcher_backend=loss.matcher_backend)


def eval_model(config):
  """The model evaluated: batch-invariant (padding isolated) when config.batch_invariant_eval."""
  return build_model(config.model, isolate_padding=config.batch_invariant_eval)


def init_params(config, model, key):
  """Random initial parameters, optionally overwritten by `config.init_from`."""
  h = w = min(config.dataset.bucket_sides)
  dummy = jnp.zeros((1, h, w, 3), jnp.float32), jnp.zeros((1, h, w), bool)
  params = jax.jit(lambda k: model.init(k, *dummy)["params"])(key)
  params = jax.device_get(params)
  if config.get("init_from"):
    params = load_initial_weights(config, params)
  return params


def load_initial_weights(config, params):
  """Weights of a converted or trained checkpoint (or a backbone-only one) replacing the random ones.

  A box model's weights initialise the detector inside a panoptic model (stage 2 of the recipe).
  A converted DETR whose class count differs from config.model.num_classes keeps our fresh class
  head; every other mismatch is an error.
  """
  src_cfg, src = checkpoints.load_model(config.init_from)
  flat_src = traverse_util.flatten_dict(src)
  flat = traverse_util.flatten_dict(params)
  if src_cfg.get("backbone_only", False):
    prefix = ("detr", "backbone") if config.model.masks else ("backbone",)
    flat_src = {prefix + k[1:]: v for k, v in flat_src.items()}
  elif config.model.masks and not src_cfg.model.masks:  # panoptic stage 2 from the stage-1 box model
    flat_src = {("detr",) + k: v for k, v in flat_src.items()}
  reinit = []
  for path, value in flat_src.items():
    if path not in flat:
      raise ValueError(f"{config.init_from}: parameter {'/'.join(path)} does not exist in this model")
    if value.shape != flat[path].shape:
      if "class_embed" in path:
        reinit.append("/".join(path))
        continue
      raise ValueError(f"{config.init_from}: {'/'.join(path)} has shape {value.shape}, "
                       f"this model needs {flat[path].shape}")
    flat[path] = value
  if reinit:
    print(f"init_from: class head re-initialised for {config.model.num_classes} classes", file=sys.stderr)
  return traverse_util.unflatten_dict(flat)


def write_pictures(pictures, class_names, path: str, threshold: float) -> None:
  drawn = [draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names, threshold, scale=3)
           for image, det in pictures]
  save_grid(drawn, path, cols=4)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config` in `workdir`, resuming from its latest checkpoint; returns final eval."""
  os.makedirs(workdir, exist_ok=True)
  devices = jax.local_devices()
  main = jax.process_index() == 0
  resolve_num_classes(config)
  train_ds, val_ds = build_dataset(config, "train"), build_dataset(config, "val")
  train_plan = stream_plan(config, train_ds, train=True)
  model = build_model(config.model)
  criterion = make_criterion(config)
  key = jax.random.PRNGKey(config.seed)
  params = init_params(config, model, jax.random.fold_in(key, 0))
  tx = make_optimizer(config, params)
  state = TrainState.create(params, tx, jax.random.fold_in(key, 1))
  ckpt = Checkpointer(workdir)
  log = MetricsLog(workdir, enabled=main)
  loader = batches(config, train_plan, with_masks=config.model.masks)
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(state)
    loader.restore(data_state["grain"])
    if main:
      print(f"resumed from {workdir}/checkpoints/{int(state.step)}", flush=True)
  start = int(state.step)
  log.truncate_after(start)

  p_train, p_eval = steps.pmapped_steps(model, criterion, tx, eval_model(config))
  state_repl = steps.replicate(state, len(devices))
  last_good = ckpt.latest_step()
  bar = tqdm(total=config.total_steps, initial=start, desc="train", dynamic_ncols=True,
             disable=not (config.progress and main))
  window_start, window_images = time.perf_counter(), 0
  def stop(reason):
    ckpt.wait()
    kept = f"step {last_good} in {workdir}/checkpoints" if last_good else "none"
    return NonFiniteLossError(f"{reason}; training stopped, the last good checkpoint is {kept}")

  for step, batch in zip(range(start, config.total_steps), loader):
    if int(batch.pop("step")) != step:
      raise ValueError(f"the input pipeline is at step {batch['step']}, the train state at {step}")
    del batch["is_real"]
    done = step + 1
    try:
      state_repl, metrics = p_train(state_repl, steps.shard(batch, len(devices)))
      if config.log_every and (done % config.log_every == 0 or done == config.total_steps):
        metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
    except (jax.errors.JaxRuntimeError, ValueError) as e:  # the matcher refuses NaN/inf boxes
      if "matcher:" not in str(e):
        raise
      raise stop(f"step {done}: " + str(e)[str(e).index("matcher:"):].splitlines()[0]) from None
    window_images += config.global_batch_size
    bar.update(1)
    if config.log_every and (done % config.log_every == 0 or done == config.total_steps):
      if not np.isfinite(metrics["loss"]):
        raise stop(f"non-finite loss ({metrics['loss']}) at step {done}")
      images_per_s = window_images / (time.perf_counter() - window_start)
      window_start, window_images = time.perf_counter(), 0
      log.write({"step": done, **metrics, "images_per_s": images_per_s})
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", img_s=f"{images_per_s:.1f}")
    if config.checkpoint_every and done % config.checkpoint_every == 0:
      ckpt.save(steps.unreplicate(state_repl), config, {"next_step": done, "grain": loader.state()})
      last_good = done
    if config.eval_every and done % config.eval_every == 0 and done != config.total_steps:
      stats, _ = evaluate(p_eval, state_repl.params, val_ds, config, os.path.join(workdir, "eval"))
      log.write({"step": done, **{f"eval/{k}": v for k, v in stats.items()}})
  bar.close()
  loader.close()
  final_state = steps.unreplicate(state_repl)
  if ckpt.latest_step() != int(final_state.step):
    ckpt.save(final_state, config, {"next_step": int(final_state.step), "grain": loader.state()})
  ckpt.wait()
  ckpt.close()
  return _evaluate_and_draw(p_eval, state_repl.params, val_ds, config, workdir, int(final_state.step), log)


def _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log):
  """Final evaluation: metrics.jsonl eval row and WORKDIR/predictions.png."""
  stats, pictures = evaluate(p_eval, params_repl, val_ds, config, os.path.join(workdir, "eval"),
                             max_pictures=config.num_pictures)
  log.write({"step": step, **{f"eval/{k}": v for k, v in stats.items()}})
  if pictures and jax.process_index() == 0:
    path = os.path.join(workdir, "predictions.png")
    write_pictures(pictures, val_ds.class_names, path, config.picture_threshold)
    print(f"predictions on {len(pictures)} validation images: {path}", flush=True)
  return stats


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint in `workdir` on the validation split."""
  step = Checkpointer(workdir).latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints to evaluate")
  _, params = checkpoints.load_model(os.path.join(workdir, "checkpoints", str(step)))
  resolve_num_classes(config)
  val_ds = build_dataset(config, "val")
  _, p_eval = steps.pmapped_steps(None, None, None, eval_model(config))
  params_repl = steps.replicate(params, jax.local_device_count())
  log = MetricsLog(workdir, enabled=jax.process_index() == 0)
  return _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log)
