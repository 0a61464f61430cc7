"""`python -m detr_jax.compare train`: K steps of our train step against the official trainer's.

tests/fixtures/train/train_small.npz was written by tools/dump_official_train.py (official DETR,
torch 2.13 CPU): ResNet-18, hidden 32, 1+2 layers, 8 queries, fill procedure v1 (seed in its
settings), two images 64x64 and 32x96 padded to 64x96 with 3 and 1 boxes, 3 steps of the official
recipe (AdamW, lr 1e-4 / 1e-5 backbone, weight decay 1e-4, clip 0.1, all dropouts 0).

Measured here: the weighted total loss before update 1 is bit-equal, the last-layer terms agree to
5e-7 relative; after 3 updates the losses agree to 4e-6 and the deltas' RMS error is at most 3e-3
of K * lr (the first decoder self-attention's q/k projections, whose gradient is float noise on
both sides), against the documented tolerances 1e-5 * 3^(k-1) and 2e-2.
"""
import json

import ml_collections
import numpy as np
import pytest
from helpers import fixture_path

from detr_jax import compare
from detr_jax.config import model_config
from detr_jax.model_checkpoint import save_model
from detr_jax.torch_io.convert import filled_params

REFERENCE = fixture_path("train/train_small.npz")


def _reference() -> dict:
  with np.load(REFERENCE) as data:
    return dict(data)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """Our converted checkpoint of the fixture's official model (the same fill)."""
  settings = json.loads(str(_reference()["settings"]))
  cfg = model_config(**settings["model"])
  path = str(tmp_path_factory.mktemp("train") / "ckpt")
  save_model(path, ml_collections.ConfigDict({"name": "train_small", "model": cfg}),
             filled_params(cfg, settings["fill_seed"]))
  return path


def _run(argv, capsys):
  code = compare.main(["train", *argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_train_matches_official_trainer_and_a_perturbed_reference_fails(checkpoint, tmp_path, capsys):
  """One test, so that both comparisons run in one process: the second reuses the compiled step."""
  saved = tmp_path / "ours.npz"
  code, out, _ = _run(["--checkpoint", checkpoint, "--reference", REFERENCE, "--save", str(saved)], capsys)
  assert code == 0, out
  assert "78 of 78 quantities within tolerance" in out
  ref = _reference()
  with np.load(saved) as data:
    ours = dict(data)
  assert json.loads(str(ours["settings"]))["steps"] == 3
  for k in (1, 2, 3):  # the loss falls, as the official one does
    assert abs(ours[f"loss_step{k}"] - ref[f"loss_step{k}"]) <= 1e-5 * 3 ** (k - 1) * ref[f"loss_step{k}"]
  assert ours["loss_step3"] < ours["loss_step2"] < ours["loss_step1"]
  assert not ours["delta_backbone.0.body.conv1.weight"].any()  # frozen stem
  # Adam moves every trained weight by about lr per step: 3e-4 outside the backbone, 3e-5 in it.
  np.testing.assert_allclose(np.abs(ours["delta_class_embed.weight"]).max(), 3e-4, rtol=0.01)
  np.testing.assert_allclose(np.abs(ours["delta_backbone.0.body.layer2.0.downsample.0.weight"]).max(), 3e-5,
                             rtol=0.01)

  # A loss off by 1e-3 (relative) and a delta off by 10% fail; everything else still passes.
  ref["loss_step2"] = ref["loss_step2"] * np.float32(1.001)
  ref["delta_class_embed.bias"] = ref["delta_class_embed.bias"] * np.float32(1.1)
  perturbed = tmp_path / "perturbed.npz"
  np.savez(perturbed, **ref)
  code, out, _ = _run(["--checkpoint", checkpoint, "--reference", str(perturbed)], capsys)
  assert code == 1
  assert sorted(line.split()[0] for line in out.splitlines() if line.endswith("FAIL")) == \
      ["delta_class_embed.bias", "loss_step2"]
  assert "76 of 78 quantities within tolerance" in out


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(settings=np.array(json.dumps({**json.loads(str(r["settings"])), "dropout": 0.1}))),
     "settings['dropout'] is 0.1; the comparison needs 0 (the two sides cannot draw the same dropout masks)"),
    (lambda r: r.update(settings=np.array("{not json")), "settings is not JSON"),
    (lambda r: r.pop("boxes_1"), "missing labels_1 / boxes_1 (the targets of image 1)"),
    (lambda r: r.pop("loss_step3"), "settings['steps'] is 3 but ['loss_step3'] are missing"),
])
def test_bad_reference_is_one_line(tmp_path, capsys, change, message):
  ref = _reference()
  change(ref)
  path = tmp_path / "bad.npz"
  np.savez(path, **ref)
  code, out, err = _run(["--checkpoint", str(tmp_path), "--reference", str(path)], capsys)
  assert code == 2 and out == ""
  assert err.startswith(f"error: reference {path}: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("steps", ["4", "0"])
def test_steps_outside_the_reference(tmp_path, capsys, steps):
  code, _, err = _run(["--checkpoint", str(tmp_path), "--reference", REFERENCE, "--steps", steps], capsys)
  assert (code, err) == (2, f"error: --steps {steps}: the reference {REFERENCE} holds steps 1..3\n")
