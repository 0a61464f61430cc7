"""The fine-tuning workflow: a converted checkpoint (init_from) fine-tuned on a COCO-format folder
with evaluations every N steps, the best model in WORKDIR/best, early stopping and TensorBoard
(one train.py run), and the best-model bookkeeping in process."""
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from detr_jax import model_checkpoint, predict
from detr_jax.config import dataset_config, model_config, training_config
from detr_jax.data import fake_coco
from detr_jax.errors import UserError
from detr_jax.models import build_model
from detr_jax.training.best import BestModel, best_model
from detr_jax.training.metrics_log import display_value
from helpers import XLA_CACHE_FLAG, train_env
from test_tensorboard import read_events, scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(backbone="resnet18", hidden_dim=32, dim_feedforward=64, enc_layers=1, dec_layers=1, num_queries=6,
                  dropout=0.0)
BOXES_ONLY = types.SimpleNamespace()  # a dataset without panoptic PNGs


def _config(best_metric="eval/AP", patience=0, masks=False):
  config = training_config(best_metric=best_metric, early_stopping_evals=patience)
  config.model = model_config(**TINY_MODEL, num_classes=5, masks=masks)
  config.dataset = dataset_config(name="coco_custom", masks=masks)
  return config


def _saved_config():
  return {"name": "tiny", "model": model_config(**TINY_MODEL, num_classes=5).to_dict(),
          "class_names": ["0", "cat", "dog", "3", "fish"]}


def test_best_model_continues_from_the_evaluations_so_far_and_keeps_the_best(tmp_path):
  """A resumed run knows its evaluations from metrics.jsonl: best 0.3 at step 4, one evaluation
  since without improvement. A worse one counts towards early stopping and writes nothing; a
  better one replaces WORKDIR/best (a model checkpoint with the dataset's class names + best.json)."""
  history = {2: {"AP": 0.1, "AP50": 0.9}, 4: {"AP": 0.3}, 6: {"AP": 0.2}}
  best = BestModel(str(tmp_path), _config(patience=2), BOXES_ONLY, history, enabled=True)
  assert (best.best_step, best.best_value, best.evals_without_improvement) == (4, 0.3, 1)
  assert not best.should_stop()
  params = {"class_embed": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  best.update(8, {"AP": 0.3, "AP50": 1.0}, params, _saved_config())  # equal is no improvement
  assert best.should_stop() and not (tmp_path / "best").exists()
  assert best.stop_message(8) == (f"early stopping: eval/AP has not improved for 2 evaluations (best 30.0 at step 4, "
                                  f"in {tmp_path / 'best'}); stopped after step 8")

  best.update(10, {"AP": 0.35}, params, _saved_config())
  assert (best.best_step, best.evals_without_improvement, best.should_stop()) == (10, 0, False)
  assert json.load(open(tmp_path / "best" / "best.json")) == {"step": 10, "metric": "eval/AP", "value": 0.35}
  config, loaded = model_checkpoint.load_model(str(tmp_path / "best"))
  np.testing.assert_array_equal(loaded["class_embed"]["kernel"], params["class_embed"]["kernel"])
  assert predict.class_names(config, str(tmp_path / "best"))[1:3] == ("cat", "dog")  # what predict labels with
  params["class_embed"]["kernel"] = params["class_embed"]["kernel"] + 1
  best.update(12, {"AP": 0.5}, params, _saved_config())  # replaces the previous best
  assert json.load(open(tmp_path / "best" / "best.json"))["step"] == 12
  assert model_checkpoint.load_model(str(tmp_path / "best"))[1]["class_embed"]["kernel"][0, 0] == 1
  best.update(14, {"AP": math.nan}, params, _saved_config())  # a NaN is never the best
  assert (best.best_step, best.evals_without_improvement) == (12, 1)


def test_best_metric_and_early_stopping_settings_are_checked(tmp_path):
  with pytest.raises(UserError, match=r"best_metric is 'AP'; this model and dataset are evaluated on eval/AP, "
                                      r"eval/AP50, .*, eval/ARl$"):
    best_model(str(tmp_path), _config("AP"), BOXES_ONLY, {})
  with pytest.raises(UserError, match="best_metric is 'eval/PQ'"):  # a box model on box data has no PQ
    best_model(str(tmp_path), _config("eval/PQ"), BOXES_ONLY, {})
  panoptic = types.SimpleNamespace(png_dir="somewhere")
  assert best_model(str(tmp_path), _config("eval/PQ_Things", masks=True), panoptic, {}).metric == "eval/PQ_Things"
  assert best_model(str(tmp_path), _config("eval/segm/AP", masks=True), BOXES_ONLY, {}) is not None
  with pytest.raises(UserError, match=r"^config key early_stopping_evals needs best_metric"):
    best_model(str(tmp_path), _config("", patience=3), BOXES_ONLY, {})
  assert best_model(str(tmp_path), _config(""), BOXES_ONLY, {}) is None
  (tmp_path / "best").mkdir()
  (tmp_path / "best" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match=r"best is not a model checkpoint \(params/ and config/\), so the best model"):
    best_model(str(tmp_path), _config(), BOXES_ONLY, {})  # before training, not at the first evaluation
  assert display_value("PQ", 45.06) == "45.1" and display_value("segm/AR10", 0.5) == "50.0"


def _converted_checkpoint(directory: str) -> None:
  """A stand-in for convert_torch_weights.py's output: the tiny model with 5 classes and small
  random weights (FrozenBatchNorm and LayerNorm as identities)."""
  config = ml_collections.ConfigDict({"name": "tiny", "model": model_config(**TINY_MODEL, num_classes=5)})
  shapes = jax.eval_shape(lambda: build_model(config.model).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64), bool))["params"])
  rng = np.random.default_rng(0)
  fill = {"scale": np.ones, "var": np.ones, "mean": np.zeros, "bias": np.zeros}
  params = {path: fill[path[-1]](leaf.shape, np.float32) if path[-1] in fill
            else (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)
            for path, leaf in traverse_util.flatten_dict(shapes).items()}
  model_checkpoint.save_model(directory, config, traverse_util.unflatten_dict(params))


def test_finetune_from_a_converted_checkpoint_keeps_the_best_and_stops_early(tmp_path):
  """train.py on a COCO-format folder from a converted 5-class checkpoint (class head re-initialised
  for the folder's 91 ids): evaluations at steps 2 and 4, the best model in WORKDIR/best, early
  stopping after 1 evaluation without improvement (lr 0: the model, hence AP, stays the same) with
  its final checkpoint, no repeated final evaluation, and TensorBoard showing exactly metrics.jsonl's
  values plus the pictures of each evaluation."""
  data, run = tmp_path / "data", tmp_path / "run"
  fake_coco.write_split(str(data), "train", 8, image_size=(64, 64))
  fake_coco.write_split(str(data), "val", 4, image_size=(64, 64))
  _converted_checkpoint(str(tmp_path / "converted"))
  args = ["--config", "configs/coco_custom.py", "--workdir", str(run), f"--config.init_from={tmp_path / 'converted'}",
          f"--config.dataset.train_images={data}/train2017",
          f"--config.dataset.train_json={data}/annotations/instances_train2017.json",
          f"--config.dataset.val_images={data}/val2017",
          f"--config.dataset.val_json={data}/annotations/instances_val2017.json",
          "--config.dataset.augment=False", "--config.dataset.val_resize=False", "--config.dataset.bucket_sides=(64,)",
          "--config.dataset.workers=0", *[f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()],
          "--config.global_batch_size=4", "--config.max_objects=8", "--config.lr=0", "--config.lr_backbone=0",
          "--config.total_steps=8", "--config.eval_every=2", "--config.checkpoint_every=0", "--config.log_every=1",
          "--config.num_pictures=2", "--config.early_stopping_evals=1", XLA_CACHE_FLAG]
  result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=train_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  train_rows, eval_rows = [r for r in rows if "loss" in r], [r for r in rows if "eval/AP" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4] and [r["step"] for r in eval_rows] == [2, 4]
  assert all(r["lr"] == 0.0 and r["lr_backbone"] == 0.0 for r in train_rows)
  assert eval_rows[0]["eval/AP"] == eval_rows[1]["eval/AP"]
  ap = display_value("AP", eval_rows[0]["eval/AP"])
  assert (f"early stopping: eval/AP has not improved for 1 evaluation (best {ap} at step 2, in {run / 'best'}); "
          f"stopped after step 4; checkpoint saved in {run / 'checkpoints' / '4'}") in result.stdout.splitlines()
  assert result.stdout.splitlines()[-1].startswith(f"eval: AP {ap}, AP50 ")
  assert "eval: 100%" in result.stderr  # the evaluation's progress bar
  names = ", ".join(c["name"] for c in fake_coco.CATEGORIES)
  assert (f"init_from: class head re-initialised for this dataset's 91 class ids ({names}); the checkpoint's "
          f"head for 5 classes is not used") in result.stderr.splitlines()
  assert os.listdir(run / "checkpoints") == ["4"]

  assert json.load(open(run / "best" / "best.json")) == {"step": 2, "metric": "eval/AP",
                                                         "value": eval_rows[0]["eval/AP"]}
  config, params = model_checkpoint.load_model(str(run / "best"))
  assert params["class_embed"]["kernel"].shape == (32, 92)  # re-initialised for the folder's ids (max 90) + no-object
  names = predict.class_names(config, str(run / "best"))
  assert [names[c["id"]] for c in fake_coco.CATEGORIES] == [c["name"] for c in fake_coco.CATEGORIES]

  events = read_events(run / "tensorboard")
  for key in rows[0].keys() - {"step"}:
    assert scalars(events, f"train/{key}") == pytest.approx({r["step"]: r[key] for r in train_rows}, rel=1e-6), key
  for key in eval_rows[0].keys() - {"step"}:
    assert scalars(events, key) == pytest.approx({r["step"]: r[key] for r in eval_rows}), key
  assert "train/lr_backbone" in events.Tags()["scalars"] and "train/images_per_s" in events.Tags()["scalars"]
  assert [e.step for e in events.Images("eval/predictions")] == [2, 4]
