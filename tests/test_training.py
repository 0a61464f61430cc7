"""train.py end to end on a tiny synthetic config: exact resume, interruptions, divergence, damaged checkpoints.

Each run is a subprocess, so that XLA_FLAGS can fake several CPU devices before jax starts.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from detr_jax import predict
from detr_jax.data.synthetic import CLASS_NAMES, SyntheticShapes

from helpers import CACHEABLE, ROOT, TINY_TRAIN as TINY, logged_losses as _losses, train_cli as _train, train_env

def test_batch_must_divide_over_devices(tmp_path):
  result = _train(tmp_path, 3, "--config.total_steps=1", check=False)
  assert result.returncode == 1
  assert "global batch size 8 must be divisible by the number of devices (3)" in result.stderr


def _params_finite(step_dir):
  import jax
  from detr_jax import model_checkpoint
  _, params = model_checkpoint.load_model(str(step_dir))
  return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("backend", ["scipy", "optax"])
def test_divergence_never_writes_a_non_finite_checkpoint(tmp_path, backend):
  """Absurd lr, metrics only every 6 steps, a checkpoint every step: the run stops at the first
  non-finite step and every checkpoint it kept, including the one the message names, is finite."""
  result = _train(tmp_path, 1, "--config.total_steps=12", "--config.checkpoint_every=1", "--config.log_every=6",
                  "--config.lr=1e30", "--config.lr_backbone=1e30", f"--config.loss.matcher_backend={backend}",
                  "--config.max_objects=6", check=False)
  assert result.returncode == 1, result.stdout + result.stderr
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite predictions, loss or updates (NaN/inf) at step "), last
  assert "training stopped, the last good checkpoint is step" in last
  named = int(last.split("the last good checkpoint is step ")[1].split()[0])
  bad = int(last.split(" at step ")[1].split(";")[0])
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept and kept[-1] == named == bad - 1
  for step in kept:
    assert _params_finite(tmp_path / "checkpoints" / str(step)), step


@pytest.fixture(scope="module")
def imagenet_r18(tmp_path_factory):
  """(checkpoint directory, torch state dict) of a converted torchvision ResNet-18 (fill procedure weights)."""
  from detr_jax.fill import fill_v1
  from detr_jax.torch_io import save_pth
  from detr_jax.torch_io.mapping import resnet_layout

  import convert_torch_weights
  directory = tmp_path_factory.mktemp("imagenet")
  state = fill_v1([(e.key, e.shape) for e in resnet_layout("resnet18")] + [("fc.weight", (1000, 512))], seed=5)
  save_pth(state, str(directory / "r18.pth"))
  assert convert_torch_weights.main([str(directory / "r18.pth"), str(directory / "r18")]) == 0
  return directory / "r18", state


@pytest.fixture(scope="module")
def resumable(imagenet_r18):
  """Settings of the runs compared with the straight run: dropout on, a checkpoint every 2 steps,
  the backbone initialised from the converted ResNet-18 (all four layers, as the official model)."""
  return ["--config.model.dropout=0.1", "--config.checkpoint_every=2", *CACHEABLE,
          f"--config.init_from={imagenet_r18[0]}", "--config.model.backbone_layers=4"]


@pytest.fixture(scope="module")
def straight_workdir(tmp_path_factory, resumable):
  """10 steps, the reference for the extended, damaged and interrupted runs."""
  workdir = tmp_path_factory.mktemp("straight")
  _train(workdir, 1, *resumable, "--config.total_steps=10")
  return workdir


def test_init_from_an_imagenet_backbone_keeps_the_frozen_stem(straight_workdir, imagenet_r18):
  """The converted torchvision ResNet-18 initialised the backbone; its frozen stem stays as loaded."""
  from detr_jax import model_checkpoint
  _, state = imagenet_r18
  _, params = model_checkpoint.load_model(str(straight_workdir / "checkpoints" / "10"))
  np.testing.assert_array_equal(params["backbone"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["backbone"]["layer3_1"]["bn2"]["var"], state["layer3.1.bn2.running_var"])


@pytest.fixture(scope="module")
def straight_run(straight_workdir):
  return _losses(straight_workdir)


def test_predict_names_the_saved_classes_and_computes_in_float32(tmp_path, straight_workdir, capsys):
  """predict on the straight run's checkpoint: the synthetic class names saved in it; a copy whose
  config says bfloat16 still gives the float32 detections, unless --dtype bfloat16."""
  image = SyntheticShapes(1, image_size=(64, 64), split="val")[0]["image"]
  Image.fromarray(image).save(tmp_path / "shapes.png")
  checkpoint, bf16 = straight_workdir / "checkpoints" / "10", tmp_path / "bf16"
  shutil.copytree(checkpoint, bf16)
  with open(bf16 / "config" / "metadata") as f:
    saved = json.load(f)
  saved["model"]["dtype"] = "bfloat16"
  with open(bf16 / "config" / "metadata", "w") as f:
    json.dump(saved, f)

  def detections(checkpoint, out, *extra):
    code = predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "shapes.png"), "--out-dir", str(tmp_path / out),
                         "--threshold", "0", *extra])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / out / "shapes.json") as f:
      return json.load(f)["detections"]

  dets = detections(checkpoint, "f32")
  assert len(dets) == 6  # threshold 0: every query
  assert all(d["name"] == CLASS_NAMES[d["label"]] for d in dets)
  assert detections(bf16, "default") == dets
  in_bf16 = [d["score"] for d in detections(bf16, "bf16", "--dtype", "bfloat16")]
  assert in_bf16 != [d["score"] for d in dets] and np.allclose(in_bf16, [d["score"] for d in dets], atol=0.05)


def test_extend_a_finished_run_then_resume_past_a_damaged_checkpoint(tmp_path, straight_run, resumable):
  """5 steps, extended to 7 (from the final checkpoint, not a multiple of checkpoint_every), then
  the latest checkpoint is cut short and the run extended to 10 with a different model setting on
  the command line: the damaged checkpoint is moved aside, the run resumes from the one before
  with the checkpoint's own model, and the losses are those of a straight 10-step run, bit for bit."""
  workdir = tmp_path / "run"
  _train(workdir, 1, *resumable, "--config.total_steps=5")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "5"]
  result = _train(workdir, 1, *resumable, "--config.total_steps=7")
  assert "resumed from" in result.stdout and "/checkpoints/5" in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["5", "6", "7"]
  biggest = max((os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints" / "7" / "params") for f in fs),
                key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  result = _train(workdir, 1, *resumable, "--config.total_steps=10", "--config.model.dim_feedforward=128")
  err = result.stderr.splitlines()
  damaged = [line for line in err if "is damaged" in line]
  assert len(damaged) == 1 and f"{workdir}/checkpoints/7 is damaged" in damaged[0], result.stderr
  assert f"moved to {workdir}/damaged_checkpoints/7" in damaged[0]
  assert (workdir / "damaged_checkpoints" / "7" / "params").is_dir()  # kept, not deleted
  assert [line for line in err if line.startswith("warning: model.")] == [
      f"warning: model.dim_feedforward is 128 here but 64 in {workdir}/checkpoints/6; using the checkpoint's"]
  assert "Traceback" not in result.stderr
  ours = _losses(workdir)
  assert sorted(ours) == list(range(1, 11))
  np.testing.assert_array_equal([ours[s] for s in range(1, 11)], [straight_run[s] for s in range(1, 11)])

  # --mode eval: the damaged latest is set aside the same way; only the val settings are needed
  os.remove(workdir / "checkpoints" / "10" / "config" / "metadata")
  result = _train(workdir, 1, "--mode", "eval", "--config.model.hidden_dim=16", check=False)
  assert result.returncode == 0, result.stderr
  assert f"{workdir}/checkpoints/10 is damaged (config/metadata is missing)" in result.stderr
  assert "Traceback" not in result.stderr and "Event loop" not in result.stderr
  assert result.stdout.strip().splitlines()[-1].startswith("eval: AP")
  # none usable: one clear line
  for step in os.listdir(workdir / "checkpoints"):
    if step.isdigit():
      with open(workdir / "checkpoints" / step / "files.json", "w") as f:
        f.write("{\"gone\": 1}")
  result = _train(workdir, 1, "--mode", "eval", check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: no usable checkpoint in {workdir}/checkpoints")


def _wait_for_step(proc, metrics, step):
  """Returns once the run has logged `step` (or has ended, or after 300 s)."""
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and f'{{"step": {step},' in metrics.read_text():
      return
    time.sleep(0.05)


def test_sigterm_then_sigkill_then_resume_reproduce_the_uninterrupted_run(tmp_path, straight_run, resumable):
  """SIGTERM saves a checkpoint after the current step and exits 0 with a line saying where; the
  restart continues from it, is killed without warning (SIGKILL) past its next checkpoint, and the
  run resumed from there ends with the straight run's losses, bit for bit."""
  workdir, metrics = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"
  args = [*resumable, "--config.total_steps=10"]
  proc = _train(workdir, 1, *args, wait=False)
  _wait_for_step(proc, metrics, 3)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  stopped = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM after step")]
  assert len(stopped) == 1, out
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 3 <= step <= 6 and f"checkpoint saved in {workdir}/checkpoints/{step}" in stopped[0]
  assert str(step) in os.listdir(workdir / "checkpoints")

  proc = _train(workdir, 1, *args, wait=False)
  _wait_for_step(proc, metrics, 9)  # past the checkpoint at step 8
  proc.send_signal(signal.SIGKILL)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert f"resumed from {workdir}/checkpoints/{step}" in out

  result = _train(workdir, 1, *args)
  assert "resumed from" in result.stdout
  ours = _losses(workdir)
  assert sorted(ours) == list(range(1, 11))
  np.testing.assert_array_equal([ours[s] for s in range(1, 11)], [straight_run[s] for s in range(1, 11)])


def test_train_and_evaluate_on_a_coco_format_folder(tmp_path):
  """A few steps on a tiny on-disk COCO-format dataset with the official augmentation (scaled
  down), then pycocotools box AP on its val json; eval mode re-evaluates the checkpoint."""
  from detr_jax.data import fake_coco
  data = tmp_path / "data"
  fake_coco.write_split(str(data), "train", 12, image_size=((60, 100), (60, 100)))
  fake_coco.write_split(str(data), "val", 4, image_size=(80, 100))
  args = ["--config", "configs/coco_custom.py", "--workdir", str(tmp_path / "run"),
          f"--config.dataset.train_images={data}/train2017",
          f"--config.dataset.train_json={data}/annotations/instances_train2017.json",
          f"--config.dataset.val_images={data}/val2017",
          f"--config.dataset.val_json={data}/annotations/instances_val2017.json",
          "--config.dataset.scales=(64, 96)", "--config.dataset.max_size=128", "--config.dataset.crop_resize=(80,)",
          "--config.dataset.crop_size=(48, 64)", "--config.dataset.val_size=64", "--config.dataset.bucket_sides=(64, 96, 128)",
          "--config.dataset.workers=0", "--config.model.backbone=resnet18", *TINY[:5],
          "--config.global_batch_size=4", "--config.total_steps=3", "--config.log_every=1", "--config.num_pictures=2",
          "--config.progress=False", "--config.max_objects=8"]
  env = train_env(2)
  result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
  final = [r for r in rows if "eval/AP" in r]
  assert len(final) == 1 and set(final[0]) >= {"eval/AP", "eval/AP50", "eval/ARl"}
  assert 0 <= final[0]["eval/AP"] <= 1 and final[0]["eval/APs"] != -1  # small objects exist in val
  config = json.load(open(tmp_path / "run" / "checkpoints" / "3" / "config" / "metadata"))
  assert config["model"]["num_classes"] == 91  # max category id (90) + 1, read from train_json
  categories = json.load(open(data / "annotations" / "instances_train2017.json"))["categories"]
  assert len(config["class_names"]) == 91  # saved for predict: the dataset's names by id
  assert all(config["class_names"][c["id"]] == c["name"] for c in categories)
  # eval needs only the val settings: the model comes from the checkpoint
  val_only = [a for a in args if not a.startswith(("--config.dataset.train_", "--config.model."))]
  again = subprocess.run([sys.executable, "train.py", *val_only, "--mode", "eval"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr
  assert again.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]  # same AP line


def test_panoptic_stage_2_needs_init_from(tmp_path):
  """Training only the mask head on a random frozen detector is refused before any work."""
  result = subprocess.run([sys.executable, "train.py", "--config", "configs/detr_resnet50_panoptic.py",
                           "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=train_env())
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: freeze_detr (panoptic stage 2) trains only the mask head: set init_from to the stage-1 box "
      "model's checkpoint"]
