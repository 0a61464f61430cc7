"""SetCriterion against the official reference values, and the `compare criterion` CLI."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from detr_jax import compare
from detr_jax.criterion import BASE_LOSSES, SetCriterion, num_boxes_normalizer, weight_dict
from helpers import fixture_path, load_npz

VARIANTS = ("boxes", "masks")


def _fixture(variant):
  ref = load_npz(f"criterion_{variant}_small.npz")
  slots = ref["tgt_labels"].shape[1]
  targets = {"labels": ref["tgt_labels"].astype(np.int32), "boxes": ref["tgt_boxes"],
             "valid": np.arange(slots)[None] < ref["tgt_counts"][:, None]}
  if variant == "masks":
    targets["masks"] = ref["tgt_masks"]
  outputs = {k: ref[k] for k in compare.CRITERION_PREDICTIONS if k in ref}
  return ref, outputs, targets


def _criterion(variant, **kwargs):
  return SetCriterion(losses=BASE_LOSSES + (("masks",) if variant == "masks" else ()), **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_dict_as_official_build(variant):
  with open(fixture_path("criterion_small.json")) as f:
    expected = json.load(f)[variant]["weight_dict"]
  assert _criterion(variant).weight_dict(2) == expected
  assert weight_dict(0) == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


@pytest.mark.parametrize("backend", ("scipy", "optax"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_criterion_reproduces_official_loss_dict(variant, backend):
  with open(fixture_path("criterion_small.json")) as f:
    expected = json.load(f)[variant]
  _, outputs, targets = _fixture(variant)
  total, losses = jax.jit(_criterion(variant, matcher_backend=backend))(outputs, targets)
  assert sorted(losses) == sorted(expected["loss_dict"])
  for key, value in expected["loss_dict"].items():
    np.testing.assert_allclose(losses[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(total, expected["total_weighted_loss"], rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_reference(variant):
  ref, outputs, targets = _fixture(variant)
  criterion = _criterion(variant)
  grads = jax.jit(jax.grad(lambda p: criterion(p, targets)[0]))(outputs)
  for key, grad in grads.items():
    expected = ref[f"grad_{key}"]
    np.testing.assert_allclose(grad, expected, atol=1e-6 + 1e-4 * np.abs(expected).max(), err_msg=key)


@pytest.mark.parametrize("backend", ("scipy", "optax"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_compare_cli_passes(variant, backend, capsys):
  path = fixture_path(f"criterion_{variant}_small.npz")
  assert compare.main(["criterion", "--reference", path, "--backend", backend]) == 0
  out = capsys.readouterr().out
  assert "FAIL" not in out and "grad_pred_boxes" in out and "match_src" in out


@pytest.mark.parametrize("key,delta", [("lossdict_loss_giou", 1e-3), ("grad_pred_logits", 1e-3), ("match_src", 0)])
def test_compare_cli_detects_a_perturbed_reference(tmp_path, key, delta):
  ref = load_npz("criterion_masks_small.npz")
  if key == "match_src":
    ref[key] = ref[key].copy()
    ref[key][0, :2] = ref[key][0, 1::-1]
  else:
    ref[key] = ref[key] + np.float32(delta)
  path = tmp_path / "perturbed.npz"
  np.savez(path, **ref)
  assert compare.main(["criterion", "--reference", str(path)]) == 1


def test_compare_cli_usage_error(tmp_path):
  ref = load_npz("criterion_boxes_small.npz")
  del ref["tgt_boxes"]
  path = tmp_path / "broken.npz"
  np.savez(path, **ref)
  assert compare.main(["criterion", "--reference", str(path)]) == 2
  assert compare.main(["criterion", "--reference", str(tmp_path / "missing.npz")]) == 2


def test_official_matches_layout():
  src, tgt = compare.official_matches(np.array([[[5, -1, 2, 9], [-1, -1, -1, -1]]]))
  np.testing.assert_array_equal(src, [[[2, 5, 9, -1], [-1] * 4]])
  np.testing.assert_array_equal(tgt, [[[2, 0, 3, -1], [-1] * 4]])


def test_no_targets_anywhere():
  _, outputs, targets = _fixture("masks")
  targets["valid"] = np.zeros_like(targets["valid"])
  total, losses = jax.jit(_criterion("masks"))(outputs, targets)
  assert losses["class_error"] == 100.0
  for key in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_bbox_1"):
    assert losses[key] == 0.0, key
  grads = jax.jit(jax.grad(lambda p: _criterion("masks")(p, targets)[0]))(outputs)
  assert np.isfinite(total) and all(np.isfinite(g).all() for g in grads.values())


def test_padded_slots_do_not_matter():
  """Garbage in padded target slots (nan boxes, any label, random masks) changes nothing."""
  _, outputs, targets = _fixture("masks")
  criterion = _criterion("masks")
  loss_fn = jax.jit(jax.value_and_grad(lambda p, t: criterion(p, t)[0]))
  clean_loss, clean_grads = loss_fn(outputs, targets)
  pad = ~targets["valid"]
  dirty = dict(targets, labels=np.where(pad, 90, targets["labels"]).astype(np.int32),
               boxes=np.where(pad[..., None], np.nan, targets["boxes"]).astype(np.float32),
               masks=np.where(pad[..., None, None], True, targets["masks"]))
  dirty_loss, dirty_grads = loss_fn(outputs, dirty)
  np.testing.assert_allclose(dirty_loss, clean_loss, rtol=1e-6)
  for key in clean_grads:
    np.testing.assert_allclose(dirty_grads[key], clean_grads[key], atol=1e-7, err_msg=key)


def test_num_boxes_is_averaged_over_the_named_axis():
  """Under vmap(axis_name) the normalisers are means over devices: local losses scale by local / mean."""
  _, outputs, targets = _fixture("boxes")
  counts = np.array([3, 0, 7, 2])
  stacked_outputs = jax.tree_util.tree_map(lambda x: np.stack([x] * 4), outputs)
  stacked_targets = jax.tree_util.tree_map(lambda x: np.stack([x] * 4), targets)
  stacked_targets["valid"] = np.arange(7)[None, None] < np.array([[c, 0, 0] for c in counts])[..., None]
  criterion = _criterion("boxes")
  _, local = jax.jit(jax.vmap(criterion))(stacked_outputs, stacked_targets)
  _, shared = jax.jit(jax.vmap(lambda o, t: criterion(o, t, axis_name="d"), axis_name="d"))(stacked_outputs,
                                                                                            stacked_targets)
  scale = np.maximum(counts, 1) / counts.mean()
  for key in ("loss_bbox", "loss_giou", "loss_bbox_0", "loss_giou_1"):
    np.testing.assert_allclose(shared[key], local[key] * scale, rtol=1e-5, err_msg=key)
  # loss_ce: the weight sum is averaged over devices too (0.1 per no-object slot, 1 per target).
  weight_sums = 0.1 * (3 * 20 - counts) + counts
  np.testing.assert_allclose(shared["loss_ce"], local["loss_ce"] * weight_sums / weight_sums.mean(), rtol=1e-5)


def test_num_classes_must_match_the_logits():
  _, outputs, targets = _fixture("boxes")
  with pytest.raises(ValueError, match="expected num_classes"):
    SetCriterion(num_classes=250)(outputs, targets)


def test_num_boxes_normalizer_clamps_to_one():
  assert num_boxes_normalizer(np.zeros((2, 5), bool)) == 1.0
  assert num_boxes_normalizer(np.ones((2, 5), bool)) == 10.0


def test_criterion_under_pmap_with_fake_devices():
  """psum'd num_boxes and the scipy matcher callback under jax.pmap on 4 fake CPU devices."""
  script = textwrap.dedent("""
      import jax, numpy as np
      from detr_jax.criterion import SetCriterion, num_boxes_normalizer
      assert jax.local_device_count() == 4
      valid = np.arange(5)[None, None] < np.array([1, 2, 0, 5])[:, None, None]
      print(jax.pmap(lambda v: num_boxes_normalizer(v, "d"), axis_name="d")(valid).tolist())
      rng = np.random.default_rng(0)
      outputs = {"pred_logits": rng.normal(size=(4, 1, 6, 4)).astype(np.float32),
                 "pred_boxes": rng.uniform(0.3, 0.6, (4, 1, 6, 4)).astype(np.float32)}
      targets = {"labels": np.zeros((4, 1, 5), np.int32), "valid": valid,
                 "boxes": rng.uniform(0.3, 0.6, (4, 1, 5, 4)).astype(np.float32)}
      _, losses = jax.pmap(lambda o, t: SetCriterion(num_classes=3)(o, t, axis_name="d"), axis_name="d")(outputs, targets)
      print(bool(np.isfinite(losses["loss_bbox"]).all()))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  run = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split() == ["[2.0,", "2.0,", "2.0,", "2.0]", "True"]
