"""Model checkpoints: an orbax directory holding `params` and the `config` (as JSON).

Converted official weights and trained models share this layout, so every tool loads either.
"""
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def save_model(directory: str, config: ml_collections.ConfigDict, params) -> None:
  """Writes params and config to `directory` (must not exist yet; written atomically)."""
  params = jax.tree_util.tree_map(np.asarray, params)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(os.path.abspath(directory), args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config.to_dict())))


def load_model(directory: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, params as numpy) from a directory written by `save_model`."""
  path = os.path.abspath(directory)
  if not os.path.isdir(os.path.join(path, "params")) or not os.path.isdir(os.path.join(path, "config")):
    raise FileNotFoundError(f"{directory}: not a detr-jax model checkpoint (expected params/ and config/)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                           config=ocp.args.JsonRestore()))
  params = jax.tree_util.tree_map(np.asarray, restored["params"])
  return ml_collections.ConfigDict(restored["config"]), params
