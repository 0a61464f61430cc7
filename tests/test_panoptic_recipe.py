"""Stage 2 of the panoptic recipe end to end through train.py, on synthetic shapes and on a tiny
COCO panoptic folder: it trains only bbox_attention + mask head; evaluation gives segm AP / PQ."""
import json
import os
import subprocess
import sys

import numpy as np

from detr_jax import model_checkpoint
from detr_jax.config import load_config_file
from detr_jax.data import fake_coco
from detr_jax.torch_io.convert import filled_params
from helpers import XLA_CACHE_FLAG, train_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The mask head reads layer4's features: the full ResNet-18, not the demo's three layers.
TINY = ["--config.model.backbone_layers=4", "--config.model.hidden_dim=128", "--config.model.dim_feedforward=64",
        "--config.model.enc_layers=1", "--config.model.dec_layers=2", "--config.model.num_queries=6",
        "--config.dataset.image_size=(64, 64)", "--config.dataset.bucket_sides=(64,)", "--config.dataset.num_val=4",
        "--config.global_batch_size=4", "--config.log_every=1", "--config.num_pictures=0", "--config.progress=False",
        "--config.total_steps=2", "--config.checkpoint_every=0", XLA_CACHE_FLAG]


def _train(workdir, *extra):
  env = train_env(2)
  result = subprocess.run([sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir", str(workdir),
                           *TINY, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return rows, model_checkpoint.load_model(os.path.join(workdir, "checkpoints", "2"))[1]


def test_two_stages_on_synthetic_masks(tmp_path):
  """Stage 2 from a stage-1 box model (a checkpoint of the synthetic box config with deterministic
  weights, standing in for stage 1's training, which the other train.py tests cover)."""
  config = load_config_file(os.path.join(ROOT, "configs", "synthetic.py"))
  config.model.update(backbone_layers=4, hidden_dim=128, dim_feedforward=64, enc_layers=1, dec_layers=2, num_queries=6)
  boxes = filled_params(config.model)
  model_checkpoint.save_model(str(tmp_path / "boxes"), config, boxes)
  rows, masks = _train(tmp_path / "masks", "--config.model.masks=True", "--config.freeze_detr=True",
                       f"--config.init_from={tmp_path}/boxes")
  for path, value in _flat(boxes).items():  # the detector is the stage-1 model, unchanged
    np.testing.assert_array_equal(_flat(masks["detr"])[path], value, err_msg="/".join(path))
  assert set(masks) == {"detr", "bbox_attention", "mask_head"}
  train_rows = [r for r in rows if "loss_mask" in r]
  assert len(train_rows) == 2 and all(np.isfinite(r["loss_dice"]) for r in train_rows)
  final = rows[-1]
  assert {"eval/AP", "eval/segm/AP", "eval/segm/AP50"} <= set(final) and 0 <= final["eval/segm/AP"] <= 1


def test_panoptic_stage_two_on_a_coco_panoptic_folder_reports_pq(tmp_path):
  data = tmp_path / "coco"
  fake_coco.write_split(str(data), "train", 4, image_size=(64, 80))
  fake_coco.write_split(str(data), "val", 3, image_size=(64, 80))
  rows, _ = _train(tmp_path / "pan", "--config.model.masks=True", "--config.model.num_classes=250",
                   "--config.dataset.name=coco_panoptic", f"--config.dataset.coco_path={data}",
                   f"--config.dataset.coco_panoptic_path={data}/panoptic", "--config.dataset.bucket_sides=(64, 96)",
                   "--config.max_objects=6")
  final = rows[-1]
  assert {"eval/PQ", "eval/SQ", "eval/RQ", "eval/PQ_Things", "eval/PQ_Stuff"} <= set(final)
  assert 0 <= final["eval/PQ"] <= 100
  predictions = json.load(open(tmp_path / "pan" / "eval" / "panoptic" / "predictions.json"))
  assert sorted(a["image_id"] for a in predictions["annotations"]) == [1000, 1007, 1014]
  assert all((tmp_path / "pan" / "eval" / "panoptic" / a["file_name"]).exists() for a in predictions["annotations"])


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out
