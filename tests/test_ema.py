"""Parameter EMA: the update, train checkpoints (with, without, old ones), and the weights evaluated.

(The EMA inside the pmapped train step is checked in tests/test_train_step.py.)
"""
import numpy as np
import optax

from detr_jax import model_checkpoint
from detr_jax.config import dataset_config, model_config, training_config
from detr_jax.training import loop
from detr_jax.training.state import TrainState, ema_update
from detr_jax.training.train_checkpoints import Checkpointer


def _params(value):
  return {"w": np.full((3, 2), value, np.float32), "frozen": np.array([0.1, 0.7, 1e-3], np.float32)}


def _state(step, ema=True):
  state = TrainState.create(_params(1.0), optax.adam(1e-3), np.zeros(2, np.uint32), ema=ema)
  if ema:  # an average that differs from the parameters
    state = state.replace(ema_params=_params(0.5))
  return state.replace(step=np.int32(step))


def _config():
  config = training_config(ema_decay=0.99)
  config.model = model_config(backbone="resnet18", hidden_dim=32, num_queries=5, num_classes=7)
  config.dataset = dataset_config(name="synthetic", augment=False, val_resize=False, bucket_sides=(64,), workers=0)
  config.dataset.update(dict(image_size=(64, 64), num_train=4, num_val=2, num_objects=(1, 2), object_size=(0.3, 0.6),
                             seed=0))
  return config


def test_ema_update_is_decay_times_ema_plus_the_rest_times_params():
  ema = {"w": np.array([1.0, -2.0, 3.0], np.float32), "frozen": np.array([0.1, 0.2, 0.3], np.float32)}
  params = {"w": np.array([2.0, 2.0, -1.0], np.float32), "frozen": ema["frozen"].copy()}
  new = ema_update(ema, params, 0.9)
  np.testing.assert_allclose(new["w"], 0.9 * ema["w"] + 0.1 * params["w"], rtol=1e-6)
  np.testing.assert_array_equal(new["frozen"], ema["frozen"])  # a parameter that does not move keeps its value exactly


def test_the_ema_is_what_is_evaluated():
  state = TrainState.create(_params(1.0), optax.adam(1e-3), np.zeros(2, np.uint32), ema=True)
  np.testing.assert_array_equal(state.ema_params["w"], state.params["w"])  # starts at the parameters
  assert state.replace(ema_params=_params(0.5)).eval_params()["w"][0, 0] == 0.5
  without = TrainState.create(_params(1.0), optax.adam(1e-3), np.zeros(2, np.uint32))
  assert without.ema_params is None and without.eval_params()["w"][0, 0] == 1.0


def test_checkpoints_keep_the_ema_and_load_model_returns_it(tmp_path, capsys):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(_state(3), _config().to_dict(), {"grain": {}})
  ckpt.close()
  restored, _ = ckpt.restore(_state(0), 3)
  assert int(restored.step) == 3
  np.testing.assert_array_equal(restored.ema_params["w"], _params(0.5)["w"])
  np.testing.assert_array_equal(restored.params["w"], _params(1.0)["w"])
  assert capsys.readouterr().err == ""
  # predict, init_from, the converter and --mode eval read the EMA weights of a run that kept them
  assert model_checkpoint.has_ema(ckpt.step_dir(3))
  _, params = model_checkpoint.load_model(ckpt.step_dir(3))
  np.testing.assert_array_equal(params["w"], _params(0.5)["w"])
  # resumed with ema_decay 0: the average is dropped, and that is said
  restored, _ = ckpt.restore(_state(0, ema=False), 3)
  assert restored.ema_params is None
  assert "ema_decay is 0: the EMA parameters of" in capsys.readouterr().err


def test_a_checkpoint_without_ema_resumes_with_the_ema_starting_at_its_parameters(tmp_path, capsys):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(_state(2, ema=False), _config().to_dict(), {"grain": {}})  # as every checkpoint before the EMA
  ckpt.close()
  assert not model_checkpoint.has_ema(ckpt.step_dir(2)) and ckpt.damage(2) is None
  restored, _ = ckpt.restore(_state(0), 2)
  np.testing.assert_array_equal(restored.ema_params["w"], _params(1.0)["w"])
  assert "has no EMA parameters: the EMA starts from its parameters" in capsys.readouterr().err
  _, params = model_checkpoint.load_model(ckpt.step_dir(2))
  np.testing.assert_array_equal(params["w"], _params(1.0)["w"])


def test_mode_eval_evaluates_the_ema_weights_and_says_so(tmp_path, capsys, monkeypatch):
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(_state(4), _config().to_dict(), {"grain": {}})
  ckpt.close()
  evaluated = []

  def fake_evaluate_and_draw(p_eval, params_repl, val_ds, config, workdir, step, log):
    evaluated.append(np.asarray(params_repl["w"])[0])  # the first device's copy
    return {"AP": 0.5}, None

  monkeypatch.setattr(loop, "_evaluate_and_draw", fake_evaluate_and_draw)
  assert loop.evaluate_checkpoint(_config(), str(tmp_path)) == {"AP": 0.5}
  np.testing.assert_array_equal(evaluated[0], _params(0.5)["w"])
  assert f"evaluating the EMA weights of {ckpt.step_dir(4)}" in capsys.readouterr().out
