"""train.py end to end on a tiny synthetic config: device-count invariance and exact resume.

Each run is a subprocess, so that XLA_FLAGS can fake several CPU devices before jax starts.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import XLA_CACHE_FLAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden_dim=32", "--config.model.dim_feedforward=64", "--config.model.enc_layers=1",
        "--config.model.dec_layers=2", "--config.model.num_queries=6", "--config.dataset.image_size=(64, 64)",
        "--config.dataset.bucket_sides=(64,)", "--config.dataset.num_val=8", "--config.global_batch_size=8",
        "--config.log_every=1", "--config.eval_every=0", "--config.num_pictures=0", "--config.progress=False",
        XLA_CACHE_FLAG]
# The in-graph matcher: unlike the scipy host callback, it lets the persistent XLA cache reuse one
# compiled train step across the runs of a test (a run then costs ~20 s instead of ~45 s).
CACHEABLE = ["--config.loss.matcher_backend=optax", "--config.max_objects=6"]


def _train(workdir, devices, *extra, wait=True):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir", str(workdir), *TINY, *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  return result


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


# 2 processes x 2 devices (below) and 1 x 1 device compare with this run.
FOUR_DEVICE_ARGS = ["--config.total_steps=6", "--config.checkpoint_every=2", "--config.num_pictures=2", *CACHEABLE]


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("four")
  _train(workdir, 4, *FOUR_DEVICE_ARGS)
  return _losses(workdir)


def test_one_and_four_devices_give_the_same_losses(tmp_path, four_device_run):
  _train(tmp_path / "one", 1, *FOUR_DEVICE_ARGS)
  one, four = _losses(tmp_path / "one"), four_device_run
  assert sorted(one) == sorted(four) == [1, 2, 3, 4, 5, 6]
  for step in one:
    assert four[step] == pytest.approx(one[step], rel=1e-4), step
  assert one[6] != one[1]  # the model trains: losses move


def test_batch_must_divide_over_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir",
                           str(tmp_path), *TINY, "--config.total_steps=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  assert "global batch size 8 must be divisible by the number of devices (3)" in result.stderr


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path, straight_run):
  steps = 10
  args = [*RESUMABLE, f"--config.total_steps={steps}"]
  proc = _train(tmp_path / "killed", 1, *args, wait=False)
  metrics = tmp_path / "killed" / "metrics.jsonl"
  deadline = time.time() + 300
  # Kill without warning once the run is past its checkpoint at step 2 (metrics for step 5 written).
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and '{"step": 5,' in metrics.read_text():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  result = _train(tmp_path / "killed", 1, *args)
  assert "resumed from" in result.stdout + result.stderr
  straight, resumed = straight_run, _losses(tmp_path / "killed")
  assert sorted(resumed) == list(range(1, steps + 1))
  np.testing.assert_array_equal([resumed[s] for s in range(1, steps + 1)], [straight[s] for s in range(1, steps + 1)])


def test_init_from_imagenet_backbone(tmp_path):
  """A converted torchvision ResNet-18 initialises the backbone; its frozen stem stays as loaded."""
  from detr_jax import model_checkpoint
  from detr_jax.fill import fill_v1
  from detr_jax.torch_io import save_pth
  from detr_jax.torch_io.mapping import resnet_layout

  import convert_torch_weights
  state = fill_v1([(e.key, e.shape) for e in resnet_layout("resnet18")] + [("fc.weight", (1000, 512))], seed=5)
  save_pth(state, str(tmp_path / "r18.pth"))
  assert convert_torch_weights.main([str(tmp_path / "r18.pth"), str(tmp_path / "r18")]) == 0
  _train(tmp_path / "run", 1, "--config.total_steps=1", "--config.checkpoint_every=0", *CACHEABLE,
         f"--config.init_from={tmp_path / 'r18'}")
  _, params = model_checkpoint.load_model(str(tmp_path / "run" / "checkpoints" / "1"))
  np.testing.assert_array_equal(params["backbone"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["backbone"]["layer3_1"]["bn2"]["var"], state["layer3.1.bn2.running_var"])


def _run(workdir, devices, *extra):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir", str(workdir),
                         *TINY, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _params_finite(step_dir):
  import jax
  from detr_jax import model_checkpoint
  _, params = model_checkpoint.load_model(str(step_dir))
  return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("backend", ["scipy", "optax"])
def test_divergence_never_writes_a_non_finite_checkpoint(tmp_path, backend):
  """Absurd lr, metrics only every 6 steps, a checkpoint every step: the run stops at the first
  non-finite step and every checkpoint it kept, including the one the message names, is finite."""
  result = _run(tmp_path, 1, "--config.total_steps=12", "--config.checkpoint_every=1", "--config.log_every=6",
                "--config.lr=1e30", "--config.lr_backbone=1e30", f"--config.loss.matcher_backend={backend}",
                "--config.max_objects=6")
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
def straight_run(tmp_path_factory):
  """10 steps with dropout, the reference for the extended, damaged and interrupted runs."""
  workdir = tmp_path_factory.mktemp("straight")
  _train(workdir, 1, *RESUMABLE, "--config.total_steps=10")
  return _losses(workdir)


RESUMABLE = ["--config.model.dropout=0.1", "--config.checkpoint_every=2", *CACHEABLE]


def test_extend_a_finished_run_then_resume_past_a_damaged_checkpoint(tmp_path, straight_run):
  """5 steps, extended to 7 (from the final checkpoint, not a multiple of checkpoint_every), then
  the latest checkpoint is cut short and the run extended to 10 with a different model setting on
  the command line: the damaged checkpoint is moved aside, the run resumes from the one before
  with the checkpoint's own model, and the losses are those of a straight 10-step run, bit for bit."""
  workdir = tmp_path / "run"
  _train(workdir, 1, *RESUMABLE, "--config.total_steps=5")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "5"]
  result = _train(workdir, 1, *RESUMABLE, "--config.total_steps=7")
  assert "resumed from" in result.stdout and "/checkpoints/5" in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["5", "6", "7"]
  biggest = max((os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints" / "7" / "params") for f in fs),
                key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  result = _train(workdir, 1, *RESUMABLE, "--config.total_steps=10", "--config.model.dim_feedforward=128")
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
  result = _run(workdir, 1, "--mode", "eval", "--config.model.hidden_dim=16")
  assert result.returncode == 0, result.stderr
  assert f"{workdir}/checkpoints/10 is damaged (config/metadata is missing)" in result.stderr
  assert "Traceback" not in result.stderr and "Event loop" not in result.stderr
  assert result.stdout.strip().splitlines()[-1].startswith("eval: AP")
  # none usable: one clear line
  for step in os.listdir(workdir / "checkpoints"):
    if step.isdigit():
      with open(workdir / "checkpoints" / step / "files.json", "w") as f:
        f.write("{\"gone\": 1}")
  result = _run(workdir, 1, "--mode", "eval")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: no usable checkpoint in {workdir}/checkpoints")


def test_sigterm_saves_and_exits_0_and_the_restart_continues_exactly(tmp_path, straight_run):
  workdir = tmp_path / "run"
  proc = _train(workdir, 1, *RESUMABLE, "--config.total_steps=10", wait=False)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and '{"step": 3,' in metrics.read_text():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 0, out
  stopped = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM after step")]
  assert len(stopped) == 1, out
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 3 <= step < 10 and f"checkpoint saved in {workdir}/checkpoints/{step}" in stopped[0]
  assert str(step) in os.listdir(workdir / "checkpoints")
  result = _train(workdir, 1, *RESUMABLE, "--config.total_steps=10")
  assert f"resumed from {workdir}/checkpoints/{step}" in result.stdout
  ours = _losses(workdir)
  np.testing.assert_array_equal([ours[s] for s in range(1, 11)], [straight_run[s] for s in range(1, 11)])


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_with_as_many_devices(tmp_path, four_device_run):
  """2 processes x 2 fake devices on loopback == 1 process x 4 devices (multi-host data split),
  with a SIGTERM to one process mid-run: both stop after the same step, save, exit 0, and the
  restarted pair continues exactly."""
  args = FOUR_DEVICE_ARGS
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")

  def launch():
    address = f"localhost:{_free_port()}"
    cmd = [sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "two"),
           *TINY, *args, f"--coordinator_address={address}", "--num_processes=2"]
    return [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]

  def finish(procs):
    try:
      outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
      for p in procs:
        p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs

  procs, metrics = launch(), tmp_path / "two" / "metrics.jsonl"
  deadline = time.time() + 300
  while procs[1].poll() is None and time.time() < deadline:
    if metrics.exists() and '{"step": 2,' in metrics.read_text():
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outputs = finish(procs)
  stopped = [line for line in outputs[0].splitlines() if line.startswith("stopped by SIGTERM after step")]
  assert len(stopped) == 1, outputs
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 2 <= step < 6 and str(step) in os.listdir(tmp_path / "two" / "checkpoints")
  outputs = finish(launch())
  assert f"resumed from {tmp_path / 'two'}/checkpoints/{step}" in outputs[0]
  one, two = four_device_run, _losses(tmp_path / "two")
  assert sorted(two) == list(range(1, 7))
  for s in one:
    assert two[s] == pytest.approx(one[s], rel=1e-5), s
  assert "6" in os.listdir(tmp_path / "two" / "checkpoints")
  assert (tmp_path / "two" / "predictions.png").exists()
  assert sum(out.count("eval: AP") for out in outputs) == 1  # reported once


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
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
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
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: freeze_detr (panoptic stage 2) trains only the mask head: set init_from to the stage-1 box "
      "model's checkpoint"]
