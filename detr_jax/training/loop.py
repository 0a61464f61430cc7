"""The training loop: data -> pmapped step -> metrics, checkpoints, evaluation and pictures."""
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from detr_jax import model_checkpoint
from detr_jax.data import build_dataset, resolve_num_classes, validate_datasets
from detr_jax.data.stream import build_stream
from detr_jax.errors import UserError
from detr_jax.models import build_model
from detr_jax.training import step as steps
from detr_jax.training.best import best_model
from detr_jax.training.evaluate import evaluate
from detr_jax.training.metrics_log import MetricsLog
from detr_jax.training.optimizer import lr_schedule, make_optimizer
from detr_jax.training.preemption import StopSignals
from detr_jax.training.processes import SyncAfterCompile, sync_processes
from detr_jax.training.setup import (adopt_checkpoint_model, check_fresh_start, check_model_fits_data, dummy_inputs,
                                     eval_model, init_params, make_criterion, usable_checkpoint)
from detr_jax.training.state import TrainState
from detr_jax.training.train_checkpoints import Checkpointer
from detr_jax.visualize import draw_detections, save_grid


class NonFiniteLossError(UserError):
  """Training diverged: a step had NaN/inf predictions, loss or updates; nothing of it was saved."""


def write_pictures(pictures, class_names, path: str, threshold: float):
  """The (image, detections) pairs drawn in a grid saved at `path`; returns the grid (PIL)."""
  drawn = [draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names, threshold,
                           scale=max(1, 400 // max(image.shape[:2])))  # small images upscaled: readable labels
           for image, det in pictures]
  return save_grid(drawn, path, cols=4)


def learning_rates(config, step: int) -> dict:
  """{"lr": .., "lr_backbone": ..} of the update that made `step` (its optimizer count is step - 1);
  a frozen backbone (lr_backbone <= 0) has 0."""
  lr = lambda base: float(lr_schedule(base, config)(step - 1)) if base > 0 else 0.0
  return {"lr": lr(config.lr), "lr_backbone": lr(config.lr_backbone)}


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
    params = init_params(config, model, jax.random.fold_in(key, 0), train_ds.class_names)
    tx = make_optimizer(config, params)
    state = TrainState.create(params, tx, jax.random.fold_in(key, 1), ema=config.ema_decay > 0)
  else:
    abstract = jax.eval_shape(lambda k: model.init(k, *dummy_inputs(config))["params"], key)
    tx = make_optimizer(config, abstract)
    template = jax.eval_shape(lambda p: TrainState.create(p, tx, key, ema=config.ema_decay > 0), abstract)
    state, data_state = ckpt.restore(template, resume_step)
    loader.restore(data_state["grain"])
    if main:
      print(f"resumed from {ckpt.step_dir(resume_step)}", flush=True)
  start = int(state.step)
  log = MetricsLog(workdir, enabled=main, tensorboard=config.tensorboard)
  evaluations = log.evaluations(up_to=start)  # read by every process before the first one writes
  log.truncate_after(start)
  best = best_model(workdir, config, val_ds, evaluations)

  p_train, p_eval = steps.pmapped_steps(model, criterion, tx, eval_model(config), config.grad_accum_steps,
                                        config.ema_decay)
  p_train = SyncAfterCompile(p_train, "train step")
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

  def evaluate_at(step):
    """Evaluates the current parameters (their EMA when kept): metrics row, pictures, best model; True to
    stop early."""
    check_finite()
    params = state_repl.eval_params()
    if config.ema_decay and main:
      tqdm.write(f"step {step}: evaluating the EMA weights (ema_decay {config.ema_decay})")
    evaluations[step], _ = _evaluate_and_draw(p_eval, params, val_ds, config, workdir, step, log)
    if best is not None:
      best.update(step, evaluations[step], steps.unreplicate(params), saved_config)
    sync_processes(f"evaluated step {step}")  # process 0 drew pictures, wrote the best model
    return best is not None and best.should_stop()

  stop_early = best is not None and best.should_stop()  # a rerun of a run that stopped early
  if (config.eval_every and 0 < start < config.total_steps and start % config.eval_every == 0
      and start not in evaluations and not stop_early):
    stop_early = evaluate_at(start)  # the run before stopped (e.g. SIGTERM) between its checkpoint and this eval
  done = start
  with StopSignals() as signals:
    for step, batch in zip(range(start, start if stop_early else config.total_steps), loader):
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
        log.write({"step": done, **metrics, **learning_rates(config, done), "images_per_s": images_per_s})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", img_s=f"{images_per_s:.1f}")
      if signals.stop_requested(done):
        break
      if config.checkpoint_every and done % config.checkpoint_every == 0:
        save(done)
      if config.eval_every and done % config.eval_every == 0 and done != config.total_steps:
        stop_early = evaluate_at(done)
        if stop_early:
          break
    bar.close()
    if saved_step != done:
      save(done)  # before closing the loader: its state is the position after step `done`
    loader.close()
    ckpt.close()
    if signals.received:
      log.close()
      if main:
        print(f"stopped by {signals.received} after step {done}; checkpoint saved in {ckpt.step_dir(done)}; "
              f"run the same command to resume", flush=True)
      return {}
    if stop_early and main:
      print(f"{best.stop_message(done)}; checkpoint saved in {ckpt.step_dir(done)}", flush=True)
    if done not in evaluations:  # else evaluated already: early stopping, or a finished run run again
      evaluate_at(done)
      if main and config.num_pictures:
        print(f"predictions on {min(config.num_pictures, len(val_ds))} validation images: "
              f"{os.path.join(workdir, 'predictions.png')}", flush=True)
    log.close()
    return evaluations[done]


def _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log):
  """Evaluation at `step`: its metrics.jsonl row and TensorBoard scalars (none when `log` is None),
  the pictures in WORKDIR/predictions.png and TensorBoard (eval/predictions). Returns (stats, the
  picture's path or None)."""
  stats, pictures = evaluate(p_eval, params_repl, val_ds, config, os.path.join(workdir, "eval"),
                             max_pictures=config.num_pictures)
  if log is not None:
    log.write({"step": step, **{f"eval/{k}": v for k, v in stats.items()}})
  if not pictures or jax.process_index() != 0:
    return stats, None
  path = os.path.join(workdir, "predictions.png")
  grid = write_pictures(pictures, val_ds.class_names, path, config.picture_threshold)
  if log is not None:
    log.write_image("eval/predictions", grid, step)
  return stats, path


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "") -> dict:
  """Evaluates the model checkpoint `checkpoint` (WORKDIR/best, a converted one, ...), else the latest
  usable checkpoint in `workdir`, on the validation split, with the model saved in it (only the val
  settings of `config.dataset` are needed). The latest checkpoint's evaluation is written as its
  step's metrics.jsonl row unless that step has one; `checkpoint`'s is not (not a step of this run)."""
  step = None
  if not checkpoint:
    ckpt = Checkpointer(workdir)
    step = usable_checkpoint(ckpt, "evaluate")
    ckpt.close()
    if step is None:
      raise UserError(f"no checkpoint in {workdir}/checkpoints to evaluate")
    checkpoint = ckpt.step_dir(step)
  saved, params = model_checkpoint.load_model(checkpoint)
  adopt_checkpoint_model(config, saved.to_dict(), checkpoint)
  if model_checkpoint.has_ema(checkpoint) and jax.process_index() == 0:
    print(f"evaluating the EMA weights of {checkpoint}", flush=True)
  val_ds = build_dataset(config, "val")
  validate_datasets(val_ds)
  _, p_eval = steps.pmapped_steps(None, None, None, eval_model(config))
  params_repl = steps.replicate(params, jax.local_device_count())
  log = MetricsLog(workdir, enabled=jax.process_index() == 0, tensorboard=config.tensorboard)
  if step is None or step in log.evaluations(up_to=step):
    log = None
  stats, picture = _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log)
  if log is not None:
    log.close()
  if picture:
    print(f"predictions on {min(config.num_pictures, len(val_ds))} validation images: {picture}", flush=True)
  return stats
