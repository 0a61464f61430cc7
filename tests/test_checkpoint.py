"""Training checkpoints: file lists, damage detection and setting damaged checkpoints aside."""
import os
import time

import ml_collections
import numpy as np
import optax

from detr_jax.config import model_config
from detr_jax.models import ADDED_FIELD_DEFAULTS
from detr_jax.training.setup import adopt_checkpoint_model
from detr_jax.training.train_checkpoints import FILE_LIST, Checkpointer
from detr_jax.training.state import TrainState


def _state(step):
  params = {"w": np.arange(4096, dtype=np.float32).reshape(64, 64), "b": np.ones(64, np.float32)}
  state = TrainState.create(params, optax.adam(1e-3), np.zeros(2, np.uint32))
  return state.replace(step=np.int32(step))


def _biggest_file(directory):
  return max((os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs), key=os.path.getsize)


def test_file_lists_detect_truncated_and_missing_files(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(_state(1), {"model": {}}, {"grain": {}})
  deadline = time.time() + 60
  while not os.path.exists(os.path.join(ckpt.step_dir(1), FILE_LIST)) and time.time() < deadline:
    ckpt.poll()  # written once orbax has finished, without waiting for the next save
    time.sleep(0.01)
  ckpt.save(_state(2), {"model": {}}, {"grain": {}})
  ckpt.close()
  assert ckpt.all_steps() == [1, 2] and ckpt.damage(1) is None and ckpt.damage(2) is None
  restored, data = ckpt.restore(_state(0), 2)
  assert int(restored.step) == 2 and data == {"grain": {}}

  victim = _biggest_file(os.path.join(ckpt.step_dir(2), "params"))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.truncate(size - 1)
  rel = os.path.relpath(victim, ckpt.step_dir(2))
  assert ckpt.damage(2) == f"{rel} has {size - 1} bytes, {size} were written"
  os.remove(victim)
  assert ckpt.damage(2) == f"{rel} is missing"

  # without a file list (killed before it was written): the items and the config are checked
  os.remove(os.path.join(ckpt.step_dir(1), FILE_LIST))
  assert ckpt.damage(1) is None
  with open(os.path.join(ckpt.step_dir(1), "config", "metadata"), "w") as f:
    f.write('{"model": ')
  assert ckpt.damage(1).startswith("config/metadata is unreadable")


def test_set_aside_moves_and_never_overwrites(tmp_path):
  ckpt = Checkpointer(str(tmp_path))
  for step in (1, 2):
    ckpt.save(_state(step), {"model": {}}, {"grain": {}})
  ckpt.wait()
  assert ckpt.set_aside(2) == str(tmp_path / "damaged_checkpoints" / "2")
  assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
  assert (tmp_path / "damaged_checkpoints" / "2" / "params").is_dir()
  ckpt.save(_state(2), {"model": {}}, {"grain": {}})
  ckpt.wait()
  assert ckpt.set_aside(2) == str(tmp_path / "damaged_checkpoints" / "2.1")  # the first is kept
  assert sorted(os.listdir(tmp_path / "damaged_checkpoints")) == ["2", "2.1"]
  ckpt.close()


def test_a_config_saved_before_the_added_model_fields_stands_for_their_defaults(capsys):
  """A checkpoint's model config without backbone_layers/dtype/remat/attention is the official model:
  resuming adopts those defaults and warns only about settings that really differ."""
  current = model_config(backbone="resnet18", dim_feedforward=128)
  saved = {key: value for key, value in current.to_dict().items() if key not in ADDED_FIELD_DEFAULTS}
  config = ml_collections.ConfigDict({"model": current})
  adopt_checkpoint_model(config, {"model": saved}, "old")
  assert capsys.readouterr().err == "" and config.model.to_dict() == current.to_dict()
  adopt_checkpoint_model(config, {"model": {**saved, "dim_feedforward": 64}}, "old")
  assert capsys.readouterr().err == "warning: model.dim_feedforward is 128 here but 64 in old; using the checkpoint's\n"
  assert config.model.dim_feedforward == 64 and config.model.backbone_layers == 4
