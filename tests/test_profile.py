"""The train-step profile (detr_jax/training/profile.py): its parts add up to the whole step."""
import os

from detr_jax.config import load_config_file
from detr_jax.torch_io.convert import filled_params
from detr_jax.training.profile import float32_matmul_peak, format_table, profile_train_step, synthetic_batch
from helpers import ROOT

ADDED = ("host -> device", "backbone", "transformer", "heads", "criterion", "optimizer")


def test_parts_add_up_to_the_step():
  config = load_config_file(os.path.join(ROOT, "configs", "synthetic.py"))
  config.model.update(hidden_dim=32, dim_feedforward=64, enc_layers=1, dec_layers=1, num_queries=6, dropout=0.1)
  config.update(global_batch_size=2, lr_backbone=1e-5)  # the official recipe: layer2-4 trained
  config.loss.matcher_backend = "scipy"  # the official host matcher, whose callback has a row
  batch = synthetic_batch(2, 192, 192, 3, config.model.num_classes, config.max_objects, False)
  parts, step = profile_train_step(config, filled_params(config.model), batch, reps=9)
  step_s = step.seconds
  by_name = {p.name: p for p in parts}
  assert [p.name for p in parts if p.added] == list(ADDED)
  assert {"backbone forward", "transformer forward", "dropout", "matcher host callback"} <= set(by_name)
  assert all(p.seconds > 0 for p in parts if p.added)
  assert by_name["backbone forward"].seconds < by_name["backbone"].seconds
  added = sum(p.seconds for p in parts if p.added)
  assert abs(added - step_s) <= 0.2 * step_s, format_table(parts, step)
  table = format_table(parts, step)
  assert table.splitlines()[-1].split()[:4] == ["whole", "train", "step", f"{step_s:.4f}"]

  # XLA's FLOP counts: the parts hold the step's work, the backward about twice the forward.
  added_flops = sum(p.flops for p in parts if p.added and p.flops is not None)
  assert abs(added_flops - step.flops) <= 0.05 * step.flops, table
  assert 1.5 * by_name["backbone forward"].flops < by_name["backbone"].flops < 4 * by_name["backbone forward"].flops
  assert by_name["host -> device"].flops is None and by_name["matcher host callback"].flops is None
  peak_line = format_table(parts, step, peak_flops=1e11).splitlines()[-1]
  assert f"{step.flops / 1e9:.1f} GFLOP take at least {step.flops / 1e11:.3f} s" in peak_line


def test_float32_matmul_peak_is_a_rate():
  peak = float32_matmul_peak(n=256, reps=3)
  assert 1e8 < peak < 1e14  # FLOP/s: more than any CPU's 0.1 GFLOP/s, less than 100 TFLOP/s
