"""TensorBoard events as TensorBoard itself reads them, the learning rates in metrics.jsonl, and how
eval metrics are printed. (train.py writing them end to end: tests/test_finetune.py.)"""
import json

import jax
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from detr_jax.config import training_config
from detr_jax.training.loop import learning_rates
from detr_jax.training.metrics_log import MetricsLog, format_stats
from detr_jax.training.optimizer import make_optimizer


def read_events(directory) -> event_accumulator.EventAccumulator:
  """Every scalar and image TensorBoard shows for `directory` (no sampling)."""
  events = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0,
                                                                             event_accumulator.IMAGES: 0})
  events.Reload()
  return events


def scalars(events, tag) -> dict:
  points = [(e.step, e.value) for e in events.Scalars(tag)]
  assert len({step for step, _ in points}) == len(points), f"{tag}: a step appears twice: {points}"
  return dict(points)


def _run(log, steps, loss_offset, eval_steps=()):
  for step in steps:
    log.write({"step": step, "loss": loss_offset + step, "lr": 1e-4, "images_per_s": 2.5})
    if step in eval_steps:
      log.write({"step": step, "eval/AP": step / 100, "eval/PQ": 10.0 * step})
      log.write_image("eval/predictions", np.full((6, 8, 3), step, np.uint8), step)


def test_events_mirror_metrics_jsonl_and_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
  """A run logs steps 1-6 (evals at 2 and 4) and dies; the rerun resumes from its checkpoint at 3
  and logs 4-7 (eval at 4) with other values: TensorBoard shows each step once, the rerun's
  values from step 4 on, as metrics.jsonl does."""
  first = MetricsLog(str(tmp_path), tensorboard=True)
  first.truncate_after(0)
  _run(first, range(1, 7), loss_offset=0.0, eval_steps=(2, 4))
  first.close()
  second = MetricsLog(str(tmp_path), tensorboard=True)
  assert sorted(second.evaluations(up_to=3)) == [2]  # what the resumed run knows of its evaluations
  second.truncate_after(3)
  _run(second, range(4, 8), loss_offset=100.0, eval_steps=(4,))
  second.close()

  events = read_events(tmp_path / "tensorboard")
  assert sorted(events.Tags()["scalars"]) == ["eval/AP", "eval/PQ", "train/images_per_s", "train/loss", "train/lr"]
  expected_loss = {1: 1.0, 2: 2.0, 3: 3.0, 4: 104.0, 5: 105.0, 6: 106.0, 7: 107.0}
  assert scalars(events, "train/loss") == expected_loss
  assert scalars(events, "eval/AP") == pytest.approx({2: 0.02, 4: 0.04})
  assert scalars(events, "eval/PQ") == {2: 20.0, 4: 40.0}
  assert scalars(events, "train/lr") == pytest.approx({s: 1e-4 for s in range(1, 8)})
  images = events.Images("eval/predictions")
  assert [(e.step, e.width, e.height) for e in images] == [(2, 8, 6), (4, 8, 6)]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert {r["step"]: r["loss"] for r in rows if "loss" in r} == expected_loss
  assert [r["step"] for r in rows if "eval/AP" in r] == [2, 4]


def test_other_processes_and_tensorboard_false_write_no_events(tmp_path):
  for name, log in (("other", MetricsLog(str(tmp_path / "other"), enabled=False, tensorboard=True)),
                    ("off", MetricsLog(str(tmp_path / "off"), tensorboard=False))):
    (tmp_path / name).mkdir()
    _run(log, range(1, 3), 0.0, eval_steps=(2,))
    log.close()
    assert not (tmp_path / name / "tensorboard").exists()
  assert len(MetricsLog(str(tmp_path / "off")).rows()) == 3 and MetricsLog(str(tmp_path / "other")).rows() == []


def test_logged_learning_rates_are_the_ones_the_optimizer_applies():
  """With constant gradients, no clipping and no weight decay, AdamW's update of each parameter is
  -lr (the Adam ratio is 1): step k's update must be -learning_rates(config, k) of its group, through
  the warm-up and the lr drop."""
  config = ml_collections.ConfigDict(training_config(lr=1e-3, lr_backbone=2e-4, warmup_steps=3, lr_drop_step=5,
                                                     weight_decay=0.0, clip_max_norm=0.0))
  params = {"backbone": {"layer2_0": {"conv1": {"kernel": np.zeros(2, np.float32)}}},
            "class_embed": {"kernel": np.zeros(2, np.float32)}}
  tx = make_optimizer(config, params)
  opt_state, grads = tx.init(params), jax.tree_util.tree_map(np.ones_like, params)
  update = jax.jit(tx.update)
  applied, logged = [], []
  for step in range(1, 9):
    updates, opt_state = update(grads, opt_state, params)
    applied.append((-float(updates["class_embed"]["kernel"][0]),
                    -float(updates["backbone"]["layer2_0"]["conv1"]["kernel"][0])))
    rates = learning_rates(config, step)
    logged.append((rates["lr"], rates["lr_backbone"]))
  np.testing.assert_allclose(applied, logged, rtol=1e-4, atol=1e-12)  # Adam's eps, float32
  assert logged[0] == (0.0, 0.0) and logged[3] == pytest.approx((1e-3, 2e-4))  # warm-up from 0
  assert logged[5] == pytest.approx((1e-4, 2e-5))  # the update of step 6 (count 5) is after the drop
  config.lr_backbone = 0.0
  assert learning_rates(config, 4)["lr_backbone"] == 0.0  # frozen backbone


def test_eval_line_prints_ap_and_pq_in_percent():
  stats = {"AP": 0.41234, "AP50": 0.6, "APl": -1.0, "segm/AP": 0.3, "PQ": 45.12, "SQ_Things": 80.0}
  assert format_stats(stats) == "AP 41.2, AP50 60.0, APl n/a, segm/AP 30.0, PQ 45.1, SQ_Things 80.0"
