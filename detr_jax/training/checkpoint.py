"""Training checkpoints: WORKDIR/checkpoints/<step>/ written atomically and asynchronously by orbax.

Each step directory holds `params` and `config` (so `detr_jax.checkpoints.load_model` reads it
like a converted checkpoint), plus `opt_state`, `meta` (step and PRNG key) and `data` (the input
iterator's state as JSON). Only complete checkpoints are ever restored.
"""
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from detr_jax.training.state import TrainState

ITEMS = ("params", "opt_state", "meta", "config", "data")


class Checkpointer:
  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, state: TrainState, config: ml_collections.ConfigDict, data_state: dict) -> None:
    """Starts writing `state` (host copy) in the background; returns at once."""
    state = jax.device_get(state)
    self.manager.save(int(state.step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.StandardSave({"step": np.asarray(state.step), "key": np.asarray(state.key)}),
        config=ocp.args.JsonSave(config.to_dict()), data=ocp.args.JsonSave(data_state)))

  def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """(state, data iterator state) of `step` (default: the latest), shaped like `template`."""
    step = self.latest_step() if step is None else step
    as_abstract = lambda tree: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, jax.device_get(tree))
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(as_abstract(template.params)),
        opt_state=ocp.args.StandardRestore(as_abstract(template.opt_state)),
        meta=ocp.args.StandardRestore(as_abstract({"step": template.step, "key": template.key})),
        data=ocp.args.JsonRestore()))
    meta = restored["meta"]
    state = TrainState(step=meta["step"], params=restored["params"], opt_state=restored["opt_state"],
                       key=meta["key"])
    return state, restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
