"""The best model so far by one eval metric (`best_metric`), kept in WORKDIR/best, and early stopping
(`early_stopping_evals` evaluations in a row without a better value).

WORKDIR/best is a model checkpoint (detr_jax.model_checkpoint: `predict --checkpoint`, `train.py
--mode eval --checkpoint` and `init_from` load it) holding the run's config with the dataset's class
names, plus best.json: {"step", "metric", "value"}. Every metric is better when higher (AP, AR, PQ,
SQ, RQ). The evaluations so far come from metrics.jsonl's eval rows up to the step a run resumes
from, so a resumed or rerun workdir continues the same best value and count.
"""
import json
import math
import os

import jax
import ml_collections
from tqdm import tqdm

from detr_jax import model_checkpoint
from detr_jax.errors import UserError
from detr_jax.evaluation.coco import STAT_NAMES
from detr_jax.training.metrics_log import display_value

PANOPTIC_NAMES = tuple(f"{metric}_{group}" if group != "All" else metric
                       for group in ("All", "Things", "Stuff") for metric in ("PQ", "SQ", "RQ"))


def eval_metric_names(config, dataset) -> tuple[str, ...]:
  """The metrics.jsonl keys an evaluation of `config`'s model on `dataset` writes: the 12 box
  stats, plus segm/... for mask models on instance-mask data or PQ/SQ/RQ on panoptic data (the
  rule of detr_jax.training.evaluate)."""
  names = STAT_NAMES
  if config.model.masks and getattr(dataset, "png_dir", None) is not None:
    names += PANOPTIC_NAMES
  elif config.model.masks and config.dataset.get("masks"):
    names += tuple(f"segm/{n}" for n in STAT_NAMES)
  return tuple(f"eval/{n}" for n in names)


def best_model(workdir: str, config, dataset, evaluations: dict[int, dict]) -> "BestModel | None":
  """The tracker of `config.best_metric` (None when ""), after checking the settings."""
  if not config.best_metric:
    if config.early_stopping_evals:
      raise UserError("config key early_stopping_evals needs best_metric, the metric that must improve "
                      "(e.g. --config.best_metric=eval/AP)")
    return None
  if jax.process_count() > 1:
    raise UserError("config key best_metric: keeping the best model is not supported with several processes yet; "
                    "set --config.best_metric= and pick a checkpoint by metrics.jsonl's eval rows")
  return BestModel(workdir, config, dataset, evaluations, enabled=jax.process_index() == 0)


class BestModel:
  """Tracks `config.best_metric` over the evaluations of a run; `enabled` (the first process)
  writes WORKDIR/best and prints."""

  def __init__(self, workdir: str, config, dataset, evaluations: dict[int, dict], enabled: bool):
    self.metric, self.patience = config.best_metric, config.early_stopping_evals
    names = eval_metric_names(config, dataset)
    if self.metric not in names:
      raise UserError(f"config key best_metric is {self.metric!r}; this model and dataset are evaluated on "
                      f"{', '.join(names)}")
    self.directory, self.enabled = os.path.join(workdir, "best"), enabled
    if os.path.lexists(self.directory) and not model_checkpoint.is_model_checkpoint(self.directory):
      raise UserError(f"{self.directory} is not a model checkpoint (params/ and config/), so the best model cannot "
                      f"be kept there; move it away or set --config.best_metric=")
    self.best_step = self.best_value = None
    self.evals_without_improvement = 0
    for step in sorted(evaluations):
      self._record(step, evaluations[step].get(self.metric.removeprefix("eval/")))

  def _record(self, step: int, value) -> bool:
    """Counts the evaluation at `step`; True when `value` is the best so far (a NaN never is)."""
    if value is not None and math.isfinite(value) and (self.best_value is None or value > self.best_value):
      self.best_step, self.best_value, self.evals_without_improvement = step, value, 0
      return True
    self.evals_without_improvement += 1
    return False

  def update(self, step: int, stats: dict, params, saved_config: dict) -> None:
    """Counts the evaluation at `step` ({metric: value}, as `evaluate` returns them); a better
    value replaces WORKDIR/best with `params` (the evaluated parameters, on the host)."""
    previous = self._describe()
    name = self.metric.removeprefix("eval/")
    if not self._record(step, stats[name]):
      if self.enabled:
        tqdm.write(f"{self.metric} {display_value(name, stats[name])} at step {step}; best {previous or 'none yet'} "
                   f"({_evaluations(self.evals_without_improvement)} without improvement)")
      return
    if not self.enabled:
      return
    model_checkpoint.save_model(self.directory, ml_collections.ConfigDict(saved_config), params, replace=True)
    with open(os.path.join(self.directory, "best.json"), "w") as f:
      json.dump({"step": step, "metric": self.metric, "value": self.best_value}, f)
    was = f" (was {previous})" if previous else ""
    tqdm.write(f"best {self.metric} {self._describe()}{was}: saved in {self.directory}")

  def should_stop(self) -> bool:
    return self.patience > 0 and self.evals_without_improvement >= self.patience

  def stop_message(self, step: int) -> str:
    return (f"early stopping: {self.metric} has not improved for {_evaluations(self.evals_without_improvement)} "
            f"(best {self._describe() or 'none'}, in {self.directory}); stopped after step {step}")

  def _describe(self) -> str:
    if self.best_value is None:
      return ""
    return f"{display_value(self.metric.removeprefix('eval/'), self.best_value)} at step {self.best_step}"


def _evaluations(count: int) -> str:
  return f"{count} evaluation{'s' if count != 1 else ''}"
