"""Shared test helpers: the public reference data and models filled with fill procedure v1."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import ml_collections
import numpy as np

from detr_jax.config import model_config
from detr_jax.fill import fill_v1
from detr_jax.torch_io.mapping import model_layout

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# train.py runs in tests share a persistent XLA cache of their own, one per pytest-xdist worker (jax
# writes cache files in place, so two processes compiling the same program must not share a folder).
XLA_CACHE_FLAG = "--config.compilation_cache_dir=" + os.path.join(
    tempfile.gettempdir(), "detr_jax_test_xla", os.environ.get("PYTEST_XDIST_WORKER", "main"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train.py on a tiny synthetic DETR (ResNet-18, d=32, 64x64 images, 8 per batch).
TINY_TRAIN = ["--config.model.hidden_dim=32", "--config.model.dim_feedforward=64", "--config.model.enc_layers=1",
              "--config.model.dec_layers=2", "--config.model.num_queries=6", "--config.dataset.image_size=(64, 64)",
              "--config.dataset.bucket_sides=(64,)", "--config.dataset.num_val=8", "--config.global_batch_size=8",
              "--config.log_every=1", "--config.eval_every=0", "--config.num_pictures=0", "--config.progress=False",
              XLA_CACHE_FLAG]
# The in-graph matcher: unlike the scipy host callback, it lets the persistent XLA cache reuse one
# compiled train step across the runs of a test (a run then costs ~20 s instead of ~45 s).
CACHEABLE = ["--config.loss.matcher_backend=optax", "--config.max_objects=6"]


def train_env(devices: int = 1) -> dict:
  """Environment of a train.py subprocess: CPU with `devices` fake devices, and XLA's LLVM
  optimisation of the compiled code off. These runs test the training loop, not its speed: a cold
  tiny run measured 94 CPU-s instead of 115 (68 s wall instead of 77)."""
  flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")


def train_cli(workdir, devices, *extra, wait=True, check=True):
  """train.py on `devices` fake CPU devices with TINY_TRAIN + `extra`: the CompletedProcess (asserting
  exit 0 when `check`), or with wait=False the running Popen (stdout and stderr merged)."""
  env = train_env(devices)
  cmd = [sys.executable, "train.py", "--config", "configs/synthetic.py", "--workdir", str(workdir), *TINY_TRAIN, *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert not check or result.returncode == 0, result.stdout + result.stderr
  return result


def logged_losses(workdir) -> dict:
  """{step: loss} of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def outputs_of(procs, timeout: float = 600) -> list:
  """The merged stdout/stderr of each of the Popen `procs` once all have exited 0 (every one is
  killed if any fails or times out)."""
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0] * len(procs), outputs
  return outputs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def fixture_path(name: str) -> str:
  return os.path.join(FIXTURES, name)


def load_npz(name: str) -> dict:
  with np.load(fixture_path(name)) as data:
    return dict(data)


def small_config(name: str):
  """Model config of a public reference model ("detection" or "panoptic")."""
  masks = name == "panoptic"
  return model_config(hidden_dim=128, enc_layers=2, dec_layers=2, dim_feedforward=256, num_queries=20,
                      dropout=0.0, masks=masks, num_classes=250 if masks else 91)


def small_full_config(name: str):
  """A full config (name + model) around `small_config`, as a checkpoint stores it."""
  return ml_collections.ConfigDict({"name": f"{name}_small", "model": small_config(name)})


def filled_state_dict(name: str) -> dict:
  """The official state dict of a public reference model, rebuilt with fill procedure v1."""
  with open(fixture_path(f"params_{name}_small.json")) as f:
    seed = json.load(f)["seed"]
  return fill_v1([(e.key, e.shape) for e in model_layout(small_config(name))], seed)
