"""One architecture table (detr_jax.architecture) for the Flax model and the official key layout."""
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from detr_jax.architecture import RESNET_SPECS, num_channels, resnet_stages
from detr_jax.config import model_config
from detr_jax.errors import UserError
from detr_jax.models import build_model
from detr_jax.torch_io.mapping import flax_shape, model_layout, official_layout


def test_layout_modules_import_no_jax():
  code = ("import sys, detr_jax.architecture, detr_jax.torch_io.mapping; "
          "assert not {'jax', 'flax'} & set(sys.modules), sorted({'jax', 'flax'} & set(sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides", [
    dict(backbone="resnet18", position_embedding="learned"), dict(backbone="resnet34", pre_norm=True),
    dict(backbone="resnet50", dilation=True, masks=True), dict(backbone="resnet101", masks=True, nheads=16),
    dict(backbone="resnet34", backbone_layers=3)])
def test_model_parameters_follow_the_layout(overrides):
  """Every parameter the model creates is in the layout with the layout's shape, and nothing else."""
  cfg = model_config(hidden_dim=128, dim_feedforward=32, enc_layers=1, dec_layers=2, num_queries=5, **overrides)
  x, m = np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 64, 64), bool)
  shapes = jax.eval_shape(build_model(cfg).init, jax.random.PRNGKey(0), x, m)["params"]
  ours = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes).items()}
  assert ours == {e.path: flax_shape(e.kind, e.shape) for e in model_layout(cfg)}


@pytest.mark.parametrize("arch", sorted(RESNET_SPECS))
def test_resnet_stages(arch):
  blocks, bottleneck = RESNET_SPECS[arch]
  for dilation in (False, True):
    stages = resnet_stages(arch, dilation)
    assert [len(stage) for stage in stages] == list(blocks)
    assert [stage[-1].out_channels for stage in stages] == list(num_channels(arch))
    assert [stage[0].stride for stage in stages] == [1, 2, 2, 1 if dilation else 2]
    assert [block.dilation for block in stages[3]] == [1] + [2 if dilation else 1] * (blocks[3] - 1)
    downsampled = [(block.stage, block.index) for stage in stages for block in stage if block.downsample]
    assert downsampled == ([(1, 0)] if bottleneck else []) + [(2, 0), (3, 0), (4, 0)]


def test_three_backbone_layers_feed_layer3_to_the_transformer():
  """model.backbone_layers=3: no layer4 parameters, the transformer reads layer3 (stride 16), whose
  features are the full backbone's with the same weights; no official layout to export to."""
  full = model_config(backbone="resnet18", hidden_dim=32, dim_feedforward=32, enc_layers=1, dec_layers=1,
                      num_queries=3, dropout=0.0)
  short = model_config(**{**full.to_dict(), "backbone_layers": 3})
  x, m = jax.random.normal(jax.random.PRNGKey(1), (1, 64, 96, 3)), np.zeros((1, 64, 96), bool)
  full_params = build_model(full).init(jax.random.PRNGKey(0), x, m)["params"]
  flat = traverse_util.flatten_dict(build_model(short).init(jax.random.PRNGKey(0), x, m)["params"])
  assert not [path for path in flat if path[1].startswith("layer4")]
  full_flat = traverse_util.flatten_dict(full_params)
  flat.update({path: full_flat[path] for path in flat if path[0] == "backbone"})
  _, ours = build_model(short).apply({"params": traverse_util.unflatten_dict(flat)}, x, m, return_internals=True)
  _, theirs = build_model(full).apply({"params": full_params}, x, m, return_internals=True)
  assert len(ours["levels"]) == 3 and ours["src_proj"].shape == (1, 4, 6, 32) and ours["mask"].shape == (1, 4, 6)
  np.testing.assert_array_equal(ours["levels"][2], theirs["levels"][2])
  with pytest.raises(UserError, match=r"^model.backbone_layers=3 \(the transformer reads layer3\) has no official"):
    official_layout(short)


def test_group_norm_is_flax_two_pass_group_norm():
  """The mask head's written-out GroupNorm against nn.GroupNorm(8, eps 1e-5, two-pass variance), on
  maps whose mean is far from 0 (x * s + t must not lose the normalised values to cancellation)."""
  import flax.linen as nn

  from detr_jax.models.segmentation import GroupNorm
  rng = np.random.default_rng(0)
  x = (30 + 0.5 * rng.normal(size=(3, 5, 7, 32)) * rng.uniform(0.1, 2, size=(1, 1, 1, 32))).astype(np.float32)
  params = {"scale": rng.normal(size=32).astype(np.float32), "bias": rng.normal(size=32).astype(np.float32)}
  ours = GroupNorm().apply({"params": params}, x)
  flax_gn = nn.GroupNorm(num_groups=8, epsilon=1e-5, use_fast_variance=False).apply({"params": params}, x)
  assert np.abs(np.asarray(ours) - np.asarray(flax_gn)).max() < 2e-5 * np.abs(np.asarray(flax_gn)).max()
