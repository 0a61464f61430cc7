"""A model checkpoint: an orbax directory holding a model's `params` and its `config` (as JSON).

Converted official weights and trained models share this layout, so every tool loads either.
(The full train state, rotated during training, is `detr_jax.training.train_checkpoints`.) A train
checkpoint of a run with a parameter EMA (ema_decay > 0) also holds `ema_params`, which `load_model`
returns: the weights evaluated during that run.
"""
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from detr_jax.errors import UserError

ITEMS = ("params", "config")
EMA_ITEM = "ema_params"


def is_model_checkpoint(directory: str) -> bool:
  """Whether `directory` holds params/ and config/, as `save_model` and training write them."""
  return all(os.path.isdir(os.path.join(directory, item)) for item in ITEMS)


def has_ema(directory: str) -> bool:
  """Whether `directory` holds EMA parameters (a train checkpoint of a run with ema_decay > 0)."""
  return os.path.isdir(os.path.join(directory, EMA_ITEM))


def save_model(directory: str, config: ml_collections.ConfigDict, params, replace: bool = False) -> None:
  """Writes params and config to `directory` atomically: into a temporary directory beside it, then renamed.

  `directory` must not exist, or with `replace` be a model checkpoint (`is_model_checkpoint`), which
  is swapped for the new one only once that is complete. Anything else there is a UserError and
  stays untouched. An interrupted save leaves at most a hidden `.NAME.*.tmp` directory beside it.
  """
  path = os.path.abspath(directory)
  if os.path.lexists(path) and not (replace and is_model_checkpoint(path)):
    raise UserError(f"{directory} already exists" + (" and is not a detr-jax model checkpoint (params/ and "
                                                     "config/); refusing to replace it" if replace else ""))
  params = jax.tree_util.tree_map(np.asarray, params)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
      new, old = os.path.join(staging, "new"), os.path.join(staging, "old")
      with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(new, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config.to_dict())))
      if os.path.lexists(path):
        os.rename(path, old)
        try:
          os.rename(new, path)
        except OSError:
          os.rename(old, path)
          raise
      else:
        os.rename(new, path)
    finally:  # after Ctrl-C, orbax's writer threads may still be adding files: what is left stays
      shutil.rmtree(staging, ignore_errors=True)
  except OSError as e:  # no permission, no space, a parent that is a file, ...
    reason = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else e.strerror or str(e)
    raise UserError(f"{directory}: cannot write the checkpoint ({reason})") from e


def load_model(directory: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, params as numpy) from a directory written by `save_model` or by training; the EMA
  parameters when it holds them (`has_ema`).

  A directory that is not a model checkpoint, or a damaged one, is a UserError.
  """
  path = os.path.abspath(directory)
  if not is_model_checkpoint(path):
    raise UserError(f"{directory}: not a detr-jax model checkpoint (expected a directory holding params/ and "
                    "config/)")
  weights = EMA_ITEM if has_ema(path) else "params"
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(path, args=ocp.args.Composite(**{weights: ocp.args.StandardRestore()},
                                                             config=ocp.args.JsonRestore()))
  except (OSError, ValueError) as e:  # missing or corrupt files (orbax, tensorstore and json errors)
    message = " ".join(str(e).split())
    raise UserError(f"{directory}: damaged checkpoint, cannot restore {weights}/config "
                    f"({type(e).__name__}: {message[:300]})") from None
  config = restored["config"]
  if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
    raise UserError(f"{directory}: damaged checkpoint, config/ holds no 'model' settings")
  params = jax.tree_util.tree_map(np.asarray, restored[weights])
  return ml_collections.ConfigDict(config), params
