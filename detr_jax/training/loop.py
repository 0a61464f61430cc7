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
from detr_jax.errors import UserError
from detr_jax.data import build_dataset, resolve_num_classes, validate_datasets
from detr_jax.data.stream import build_stream
from detr_jax.models import build_model
from detr_jax.training import step as steps
from detr_jax.training.checkpoint import Checkpointer
from detr_jax.training.evaluate import evaluate
from detr_jax.training.metrics_log import MetricsLog
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.preemption import StopSignals
from detr_jax.training.state import TrainState
from detr_jax.visualize import draw_detections, save_grid


class NonFiniteLossError(UserError):
  """Training diverged: a step had NaN/inf predictions, loss or updates; nothing of it was saved."""


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


def dummy_inputs(config):
  """(images [1, S, S, 3], mask [1, S, S]) of the smallest bucket, to initialise a model."""
  h = w = min(config.dataset.bucket_sides)
  return jnp.zeros((1, h, w, 3), jnp.float32), jnp.zeros((1, h, w), bool)


def init_params(config, model, key):
  """Random initial parameters, optionally overwritten by `config.init_from`."""
  params = jax.jit(lambda k: model.init(k, *dummy_inputs(config))["params"])(key)
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
      raise UserError(f"{config.init_from}: parameter {'/'.join(path)} (init_from) does not exist in this model")
    if value.shape != flat[path].shape:
      if "class_embed" in path:
        reinit.append("/".join(path))
        continue
      raise UserError(f"{config.init_from}: {'/'.join(path)} (init_from) has shape {value.shape}, "
                       f"this model needs {flat[path].shape}")
    flat[path] = value
  if reinit:
    print(f"init_from: class head re-initialised for {config.model.num_classes} classes", file=sys.stderr)
  return traverse_util.unflatten_dict(flat)


def write_pictures(pictures, class_names, path: str, threshold: float) -> None:
  drawn = [draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names, threshold, scale=3)
           for image, det in pictures]
  save_grid(drawn, path, cols=4)


def usable_checkpoint(ckpt: Checkpointer, purpose: str) -> int | None:
  """The latest checkpoint step whose files are complete; damaged ones are moved aside, each
  named on one line. None when there is no checkpoint; UserError when none is usable."""
  damaged = []
  for step in reversed(ckpt.all_steps()):
    problem = ckpt.damage(step)
    if problem is None:
      return step
    aside = ckpt.set_aside(step)
    damaged.append(aside)
    if jax.process_index() == 0:
      print(f"checkpoint {ckpt.step_dir(step)} is damaged ({problem}); moved to {aside}", file=sys.stderr,
            flush=True)
  if damaged:
    then = "run again to start from scratch" if purpose == "resume" else "nothing to evaluate"
    raise UserError(f"no usable checkpoint in {ckpt.directory}: all {len(damaged)} were damaged and moved to "
                    f"{os.path.dirname(damaged[0])}; {then}")
  return None


def adopt_checkpoint_model(config, saved: dict, source: str) -> None:
  """Sets config.model to the model the checkpoint was made with; each setting of the command
  line that differs is named on one line."""
  current, theirs = config.model.to_dict(), saved["model"]
  for key in sorted(set(current) | set(theirs)):
    if key == "num_classes" and current.get(key, 0) <= 0:
      continue  # "from the dataset": the checkpoint holds the resolved value
    if current.get(key) != theirs.get(key) and jax.process_index() == 0:
      print(f"warning: model.{key} is {current.get(key)!r} here but {theirs.get(key)!r} in {source}; "
            f"using the checkpoint's", file=sys.stderr, flush=True)
  with config.unlocked():
    config.model = ml_collections.ConfigDict(theirs)


def check_fresh_start(config) -> None:
  if config.get("freeze_detr") and config.model.masks and not config.get("init_from"):
    raise UserError("freeze_detr (panoptic stage 2) trains only the mask head: set init_from to the stage-1 "
                    "box model's checkpoint")


def check_model_fits_data(config) -> None:
  if config.loss.matcher_backend == "optax" and config.max_objects > config.model.num_queries:
    raise UserError(f"loss.matcher_backend 'optax' needs max_objects ({config.max_objects}) <= model.num_queries "
                    f"({config.model.num_queries}); use the 'scipy' backend or fewer max_objects")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config` in `workdir`, resuming from its latest usable checkpoint; returns the final
  eval stats ({} when stopped by a signal, after saving a checkpoint)."""
  os.makedirs(workdir, exist_ok=True)
  devices = jax.local_devices()
  main = jax.process_index() == 0
  ckpt = Checkpointer(workdir)
  resume_step = usable_checkpoint(ckpt, "resume")
  if resume_step is None:
    check_fresh_start(config)
    resolve_num_classes(config)
  else:
    adopt_checkpoint_model(config, ckpt.saved_config(resume_step), ckpt.step_dir(resume_step))
  check_model_fits_data(config)
  train_ds, val_ds = build_dataset(config, "train"), build_dataset(config, "val")
  validate_datasets(train_ds, val_ds)  # every problem now, not when the loader reaches it
  saved_config = {**config.to_dict(), "class_names": list(train_ds.class_names)}
  loader = build_stream(config, train_ds, "train")
  model = build_model(config.model)
  criterion = make_criterion(config)
  key = jax.random.PRNGKey(config.seed)
  if resume_step is None:
    params = init_params(config, model, jax.random.fold_in(key, 0))
    tx = make_optimizer(config, params)
    state = TrainState.create(params, tx, jax.random.fold_in(key, 1))
  else:
    abstract = jax.eval_shape(lambda k: model.init(k, *dummy_inputs(config))["params"], key)
    tx = make_optimizer(config, abstract)
    template = jax.eval_shape(lambda p: TrainState.create(p, tx, key), abstract)
    state, data_state = ckpt.restore(template, resume_step)
    loader.restore(data_state["grain"])
    if main:
      print(f"resumed from {ckpt.step_dir(resume_step)}", flush=True)
  start = int(state.step)
  log = MetricsLog(workdir, enabled=main)
  log.truncate_after(start)

  p_train, p_eval = steps.pmapped_steps(model, criterion, tx, eval_model(config))
  state_repl = steps.replicate(state, len(devices))
  last_good, saved_step = resume_step, resume_step
  bar = tqdm(total=config.total_steps, initial=start, desc="train", dynamic_ncols=True,
             disable=not (config.progress and main))
  window_start, window_images = time.perf_counter(), 0
  finiteness = []  # (step, its `finite` flag still on device): read only when something depends on it

  def check_finite():
    """Raises NonFiniteLossError at the first step since the last check whose flag is false."""
    flags = jax.device_get([flag for _, flag in finiteness])
    bad = [step for (step, _), flag in zip(finiteness, flags) if not np.all(flag)]
    finiteness.clear()
    if bad:
      ckpt.close()
      loader.close()
      kept = f"step {last_good} in {workdir}/checkpoints" if last_good is not None else "none"
      raise NonFiniteLossError(f"non-finite predictions, loss or updates (NaN/inf) at step {bad[0]}; "
                               f"training stopped, the last good checkpoint is {kept}")

  def save(step):
    nonlocal last_good, saved_step
    check_finite()  # never write a diverged state
    ckpt.save(steps.unreplicate(state_repl), saved_config, {"grain": loader.state()})
    last_good = saved_step = step

  done = start
  with StopSignals() as signals:
    for step, batch in zip(range(start, config.total_steps), loader):
      batch_step = int(batch.pop("step"))
      if batch_step != step:
        raise RuntimeError(f"the input pipeline is at step {batch_step}, the train state at {step}")
      del batch["is_real"]
      done = step + 1
      state_repl, metrics = p_train(state_repl, steps.shard(batch, len(devices)))
      finiteness.append((done, metrics.pop("finite")))
      ckpt.poll()
      window_images += config.global_batch_size
      bar.update(1)
      if config.log_every and (done % config.log_every == 0 or done == config.total_steps):
        check_finite()
        metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
        images_per_s = window_images / (time.perf_counter() - window_start)
        window_start, window_images = time.perf_counter(), 0
        log.write({"step": done, **metrics, "images_per_s": images_per_s})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", img_s=f"{images_per_s:.1f}")
      if signals.stop_requested(done):
        break
      if config.checkpoint_every and done % config.checkpoint_every == 0:
        save(done)
      if config.eval_every and done % config.eval_every == 0 and done != config.total_steps:
        check_finite()
        stats, _ = evaluate(p_eval, state_repl.params, val_ds, config, os.path.join(workdir, "eval"))
        log.write({"step": done, **{f"eval/{k}": v for k, v in stats.items()}})
    bar.close()
    if saved_step != done:
      save(done)  # before closing the loader: its state is the position after step `done`
    loader.close()
    ckpt.close()
    if signals.received:
      if main:
        print(f"stopped by {signals.received} after step {done}; checkpoint saved in {ckpt.step_dir(done)}; "
              f"run the same command to resume", flush=True)
      return {}
    return _evaluate_and_draw(p_eval, state_repl.params, val_ds, config, workdir, done, log)


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
  """Evaluates the latest usable checkpoint in `workdir` on the validation split, with the model
  saved in it (only the val settings of `config.dataset` are needed)."""
  ckpt = Checkpointer(workdir)
  step = usable_checkpoint(ckpt, "evaluate")
  ckpt.close()
  if step is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints to evaluate")
  saved, params = checkpoints.load_model(ckpt.step_dir(step))
  adopt_checkpoint_model(config, saved.to_dict(), ckpt.step_dir(step))
  val_ds = build_dataset(config, "val")
  validate_datasets(val_ds)
  _, p_eval = steps.pmapped_steps(None, None, None, eval_model(config))
  params_repl = steps.replicate(params, jax.local_device_count())
  log = MetricsLog(workdir, enabled=jax.process_index() == 0)
  return _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log)
