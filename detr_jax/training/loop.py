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
from detr_jax.training.train_checkpoints import Checkpointer
from detr_jax.training.evaluate import evaluate
from detr_jax.training.metrics_log import MetricsLog
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.preemption import StopSignals
from detr_jax.training.setup import (adopt_checkpoint_model, check_fresh_start, check_model_fits_data, dummy_inputs,
                                     eval_model, init_params, make_criterion, usable_checkpoint)
from detr_jax.training.state import TrainState
from detr_jax.visualize import draw_detections, save_grid


class NonFiniteLossError(UserError):
  """Training diverged: a step had NaN/inf predictions, loss or updates; nothing of it was saved."""


def write_pictures(pictures, class_names, path: str, threshold: float) -> None:
  drawn = [draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names, threshold, scale=3)
           for image, det in pictures]
  save_grid(drawn, path, cols=4)


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
  saved, params = model_checkpoint.load_model(ckpt.step_dir(step))
  adopt_checkpoint_model(config, saved.to_dict(), ckpt.step_dir(step))
  val_ds = build_dataset(config, "val")
  validate_datasets(val_ds)
  _, p_eval = steps.pmapped_steps(None, None, None, eval_model(config))
  params_repl = steps.replicate(params, jax.local_device_count())
  log = MetricsLog(workdir, enabled=jax.process_index() == 0)
  return _evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log)
