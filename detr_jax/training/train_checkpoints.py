"""Train-state checkpoints: WORKDIR/checkpoints/<step>/ written atomically and asynchronously by orbax.

Each step directory holds `params` and `config` (so `detr_jax.model_checkpoint.load_model` reads it
like a converted checkpoint; the config also carries the dataset's `class_names`), plus
`opt_state`, `meta` (step and PRNG key), `data` (the input iterator's state as JSON) and, when the
run keeps a parameter EMA (ema_decay > 0), `ema_params`.

As soon as orbax has finished a checkpoint, `files.json` records the size of every file in it, so a
checkpoint later cut short or missing a file (a full disk, a killed copy) is recognised before
anything reads it; `set_aside` moves such a checkpoint to WORKDIR/damaged_checkpoints/.
"""
import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from detr_jax.model_checkpoint import EMA_ITEM, has_ema
from detr_jax.training.processes import sync_processes
from detr_jax.training.state import TrainState

ITEMS = ("params", "opt_state", "meta", "config", "data")  # in every checkpoint; EMA_ITEM when kept
FILE_LIST = "files.json"


def _file_sizes(directory: str) -> dict:
  """{path relative to `directory`: size in bytes} of every file below it, FILE_LIST excepted."""
  sizes = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel != FILE_LIST:
        sizes[rel] = os.path.getsize(path)
  return sizes


class Checkpointer:
  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True)
    self.manager = self._new_manager()
    self._unlisted = None  # step saved, its file list not yet written

  def _new_manager(self):
    return ocp.CheckpointManager(self.directory, item_names=ITEMS + (EMA_ITEM,), options=self._options)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, state: TrainState, config: dict, data_state: dict) -> None:
    """Starts writing `state` (host copy), `config` (a JSON-able dict) and the data state in the
    background; returns at once."""
    self._list_files()  # of the previous save, which orbax finishes before starting this one
    state = jax.device_get(state)
    ema = {} if state.ema_params is None else {EMA_ITEM: ocp.args.StandardSave(state.ema_params)}
    self.manager.save(int(state.step), args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.StandardSave({"step": np.asarray(state.step), "key": np.asarray(state.key)}),
        config=ocp.args.JsonSave(config), data=ocp.args.JsonSave(data_state), **ema))
    self._unlisted = int(state.step)

  def poll(self) -> None:
    """Writes the file list of the last save once orbax has finished it (cheap; call every step)."""
    if self._unlisted is not None and not self.manager.is_saving_in_progress():
      self._list_files()

  def _list_files(self) -> None:
    if self._unlisted is None:
      return
    self.manager.wait_until_finished()
    step, self._unlisted = self._unlisted, None
    directory = self.step_dir(step)
    if jax.process_index() == 0 and os.path.isdir(directory):  # absent: already rotated out
      sizes, tmp = _file_sizes(directory), os.path.join(directory, FILE_LIST + ".tmp")
      with open(tmp, "w") as f:
        json.dump(sizes, f)
      os.replace(tmp, os.path.join(directory, FILE_LIST))

  def damage(self, step: int) -> str | None:
    """What is wrong with the files of checkpoint `step` (None: complete). Without a file list
    (killed before orbax finished, or older than file lists) only the items and the config are
    checked."""
    directory = self.step_dir(step)
    listed = os.path.join(directory, FILE_LIST)
    if not os.path.exists(listed):
      missing = [item for item in ITEMS if not os.path.isdir(os.path.join(directory, item))]
      if missing:
        return f"{missing[0]}/ is missing"
      try:
        self.saved_config(step)
      except (OSError, json.JSONDecodeError) as e:
        return f"config/metadata is unreadable ({e})"
      return None
    with open(listed) as f:
      try:
        expected = json.load(f)
      except json.JSONDecodeError:
        return f"{FILE_LIST} is unreadable"
    found = _file_sizes(directory)
    for rel, size in sorted(expected.items()):
      if rel not in found:
        return f"{rel} is missing"
      if found[rel] != size:
        return f"{rel} has {found[rel]} bytes, {size} were written"
    return None

  def set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/ (never deleted); returns where."""
    aside = os.path.join(self.workdir, "damaged_checkpoints")
    target, n = os.path.join(aside, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(aside, f"{step}.{n}"), n + 1
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      os.replace(self.step_dir(step), target)
    sync_processes(f"set_aside {step}")
    self.manager.close()
    self.manager = self._new_manager()
    return target

  def saved_config(self, step: int) -> dict:
    """The config dict saved with checkpoint `step`."""
    with open(os.path.join(self.step_dir(step), "config", "metadata")) as f:
      return json.load(f)

  def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """(state, data iterator state) of `step` (default: the latest), shaped like `template` (arrays
    or jax.ShapeDtypeStructs).

    The EMA follows the template: a template with EMA parameters and a checkpoint without (EMA
    switched on when resuming, or a run older than the EMA) starts the average at the checkpoint's
    parameters; a template without EMA parameters drops the checkpoint's. Either is said on one line.
    """
    step = self.latest_step() if step is None else step
    as_abstract = lambda tree: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
    want_ema, saved_ema = template.ema_params is not None, has_ema(self.step_dir(step))
    ema = {EMA_ITEM: ocp.args.StandardRestore(as_abstract(template.ema_params))} if want_ema and saved_ema else {}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(as_abstract(template.params)),
        opt_state=ocp.args.StandardRestore(as_abstract(template.opt_state)),
        meta=ocp.args.StandardRestore(as_abstract({"step": template.step, "key": template.key})),
        data=ocp.args.JsonRestore(), **ema))
    if want_ema != saved_ema and jax.process_index() == 0:
      print(f"{self.step_dir(step)} has no EMA parameters: the EMA starts from its parameters" if want_ema else
            f"ema_decay is 0: the EMA parameters of {self.step_dir(step)} are not kept", file=sys.stderr, flush=True)
    meta = restored["meta"]
    ema_params = (restored[EMA_ITEM] if saved_ema else restored["params"]) if want_ema else None
    state = TrainState(step=meta["step"], params=restored["params"], opt_state=restored["opt_state"],
                       key=meta["key"], ema_params=ema_params)
    return state, restored["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._list_files()

  def close(self) -> None:
    self.wait()
    self.manager.close()
