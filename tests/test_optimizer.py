"""Parameter groups, frozen parameters, clipping and AdamW of the official recipe."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from detr_jax.config import training_config
from detr_jax.training.optimizer import BACKBONE, FROZEN, REST, lr_schedule, make_optimizer, param_label


def test_labels_follow_the_official_groups():
  assert param_label(("backbone", "conv1", "kernel"), 1e-5) == FROZEN
  assert param_label(("backbone", "layer1_2", "conv3", "kernel"), 1e-5) == FROZEN
  assert param_label(("backbone", "layer3_0", "bn2", "scale"), 1e-5) == FROZEN      # FrozenBatchNorm
  assert param_label(("backbone", "layer3_0", "downsample_bn", "mean"), 1e-5) == FROZEN
  assert param_label(("backbone", "layer2_0", "conv2", "kernel"), 1e-5) == BACKBONE
  assert param_label(("backbone", "layer4_2", "downsample_conv", "kernel"), 1e-5) == BACKBONE
  assert param_label(("detr", "backbone", "layer4_0", "conv1", "kernel"), 1e-5) == BACKBONE
  assert param_label(("position_embedding", "row_embed", "embedding"), 1e-5) == BACKBONE
  assert param_label(("backbone", "layer4_0", "conv1", "kernel"), 0.0) == FROZEN
  assert param_label(("transformer", "encoder", "layers_0", "self_attn", "in_proj_kernel"), 1e-5) == REST
  assert param_label(("class_embed", "kernel"), 1e-5) == REST
  assert param_label(("detr", "class_embed", "kernel"), 1e-5, freeze_detr=True) == FROZEN
  assert param_label(("mask_head", "lay1", "kernel"), 1e-5, freeze_detr=True) == REST


def _params():
  rng = np.random.default_rng(0)
  return {"backbone": {"conv1": {"kernel": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)},
                       "layer2_0": {"conv1": {"kernel": jnp.ones((2, 2))}, "bn1": {"mean": jnp.zeros(2)}}},
          "class_embed": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}


def test_frozen_untouched_and_excluded_from_clipping():
  config = training_config(lr=1e-4, lr_backbone=1e-5, clip_max_norm=0.1)
  params = _params()
  tx = make_optimizer(config, params)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  grads["backbone"]["conv1"]["kernel"] = jnp.full((3, 3), 1e6)  # huge frozen gradient: must not matter
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  flat_new, flat_old = traverse_util.flatten_dict(new), traverse_util.flatten_dict(params)
  for path in [("backbone", "conv1", "kernel"), ("backbone", "layer2_0", "bn1", "mean")]:
    np.testing.assert_array_equal(flat_new[path], flat_old[path])
  # First AdamW step: update = -lr * (sign(g) + wd * p) whatever the clipped scale, so the lr
  # groups show directly: 1e-5 for the backbone conv, 1e-4 for the head.
  np.testing.assert_allclose(flat_new[("backbone", "layer2_0", "conv1", "kernel")],
                             1 - 1e-5 * (1 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(flat_new[("class_embed", "kernel")], 1 - 1e-4 * (1 + 1e-4), rtol=1e-6)


def test_clipping_uses_trained_parameters_only():
  """The global norm is that of the trained gradients: Adam's first moment shows the clip scale."""
  params = _params()
  tx = make_optimizer(training_config(clip_max_norm=0.1), params)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  grads["backbone"]["conv1"]["kernel"] = jnp.full((3, 3), 1e6)
  _, state = tx.update(grads, tx.init(params), params)
  trained = 4 + 4 + 2  # layer2_0 conv1, class_embed kernel and bias (bn mean is frozen)
  clipped = 0.1 / np.sqrt(trained)
  mus = [leaf for path, leaf in optax.tree_utils.tree_get_all_with_path(state, "mu")]
  head_mu = [m["class_embed"]["kernel"] for m in mus if "class_embed" in m and
             not isinstance(m["class_embed"]["kernel"], optax.MaskedNode)]
  np.testing.assert_allclose(head_mu[0], 0.1 * clipped, rtol=1e-5)  # (1 - b1) * clipped gradient


@pytest.mark.parametrize("warmup_steps", [0, 4])
def test_lr_drops_at_the_configured_step_with_and_without_warmup(warmup_steps):
  """x0.1 from lr_drop_step on (optimizer step count from 0); warm-up rises linearly before it."""
  schedule = lr_schedule(1e-4, training_config(lr_drop_step=10, warmup_steps=warmup_steps))
  lrs = {step: float(schedule(step)) for step in (0, 2, 4, 9, 10, 11, 100)}
  assert lrs[9] == pytest.approx(1e-4) and lrs[10] == lrs[11] == lrs[100] == pytest.approx(1e-5)
  if warmup_steps:
    assert (lrs[0], lrs[2], lrs[4]) == (0.0, pytest.approx(0.5e-4), pytest.approx(1e-4))
  else:
    assert lrs[0] == lrs[4] == pytest.approx(1e-4)


def test_lr_drop_inside_the_warmup():
  schedule = lr_schedule(1.0, training_config(lr_drop_step=2, warmup_steps=4))
  np.testing.assert_allclose([schedule(s) for s in range(6)], [0, 0.25, 0.05, 0.075, 0.1, 0.1], rtol=1e-6)
