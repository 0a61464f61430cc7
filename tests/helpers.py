"""Shared test helpers: the public reference data and models filled with fill procedure v1."""
import json
import os
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
