"""What a run starts from: the model, its criterion and initial parameters, and the checkpoint it
resumes or evaluates (the model saved in it, damaged ones set aside), with the checks a config
must pass before training.
"""
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from detr_jax import model_checkpoint
from detr_jax.criterion import SetCriterion
from detr_jax.errors import UserError
from detr_jax.models import ADDED_FIELD_DEFAULTS, build_model
from detr_jax.training.train_checkpoints import Checkpointer


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


def init_params(config, model, key, class_names=()):
  """Random initial parameters, optionally overwritten by `config.init_from` (`class_names`: the
  dataset's, indexed by class id, named in the line about a re-initialised class head)."""
  params = jax.jit(lambda k: model.init(k, *dummy_inputs(config))["params"])(key)
  params = jax.device_get(params)
  if config.get("init_from"):
    params = load_initial_weights(config, params, class_names)
  return params


def _named_classes(class_names, shown: int = 8) -> str:
  """' (a, b, ... and N more)' for the ids that have a name (not just their number), or ''."""
  named = [n for i, n in enumerate(class_names) if n != str(i)]
  if not named:
    return ""
  more = f" and {len(named) - shown} more" if len(named) > shown else ""
  return f" ({', '.join(named[:shown])}{more})"


def load_initial_weights(config, params, class_names=()):
  """Weights of a converted or trained checkpoint (or a backbone-only one) replacing the random ones.

  A box model's weights initialise the detector inside a panoptic model (stage 2 of the recipe).
  A converted DETR whose class count differs from config.model.num_classes keeps our fresh class
  head; every other mismatch is an error.
  """
  src_cfg, src = model_checkpoint.load_model(config.init_from)
  flat_src = traverse_util.flatten_dict(src)
  flat = traverse_util.flatten_dict(params)
  if src_cfg.get("backbone_only", False):
    prefix = ("detr", "backbone") if config.model.masks else ("backbone",)
    flat_src = {prefix + k[1:]: v for k, v in flat_src.items()}
  elif config.model.masks and not src_cfg.model.masks:  # panoptic stage 2 from the stage-1 box model
    flat_src = {("detr",) + k: v for k, v in flat_src.items()}
  reinit, old_classes = [], None
  for path, value in flat_src.items():
    if path not in flat:
      raise UserError(f"{config.init_from}: parameter {'/'.join(path)} (init_from) does not exist in this model")
    if value.shape != flat[path].shape:
      if "class_embed" in path:
        reinit.append("/".join(path))
        old_classes = value.shape[-1] - 1
        continue
      raise UserError(f"{config.init_from}: {'/'.join(path)} (init_from) has shape {value.shape}, "
                       f"this model needs {flat[path].shape}")
    flat[path] = value
  if reinit and jax.process_index() == 0:
    print(f"init_from: class head re-initialised for this dataset's {config.model.num_classes} class ids"
          f"{_named_classes(class_names)}; the checkpoint's head for {old_classes} classes is not used",
          file=sys.stderr)
  return traverse_util.unflatten_dict(flat)


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
  current, theirs = config.model.to_dict(), {**ADDED_FIELD_DEFAULTS, **saved["model"]}
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
