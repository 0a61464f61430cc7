"""convert_torch_weights.py and `python -m detr_jax.compare model`, end to end on the public fixture."""
import argparse
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import convert_torch_weights
from conftest import filled_state_dict, fixture_path, load_npz, small_config
from detr_jax import checkpoints, compare
from detr_jax.fill import fill_v1
from detr_jax.torch_io import load_pth, save_pth
from detr_jax.torch_io.convert import infer_model_config
from detr_jax.torch_io.mapping import resnet_layout

ROOT = fixture_path("..").rsplit("/tests", 1)[0]


@pytest.fixture(scope="module")
def pth_files(tmp_path_factory):
  """Official-layout .pth files of both public models, written by our own writer."""
  tmp = tmp_path_factory.mktemp("pth")
  paths = {}
  for name in ("detection", "panoptic"):
    paths[name] = str(tmp / f"{name}.pth")
    save_pth({"model": filled_state_dict(name)}, paths[name])
  return paths


@pytest.fixture(scope="module")
def converted(pth_files, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ckpt")
  dirs = {}
  for name, path in pth_files.items():
    dirs[name] = str(tmp / name)
    assert convert_torch_weights.main([path, dirs[name]]) == 0
  return dirs


def _compare(checkpoint, inputs, reference, *extra):
  return compare.main(["model", "--checkpoint", checkpoint, "--inputs", inputs, "--reference", reference, *extra])


@pytest.mark.parametrize("name", ["detection", "panoptic"])
def test_compare_model_passes_end_to_end(name, converted, capsys):
  assert _compare(converted[name], fixture_path("inputs.npz"), fixture_path(f"{name}_small.npz"),
                  "--intermediates") == 0
  out = capsys.readouterr().out
  assert "pred_logits" in out and "FAIL" not in out
  if name == "panoptic":
    assert "pred_masks" in out and "mask_head_gn5_q0to1" in out


def test_inferred_config_and_note(converted, pth_files, tmp_path, capsys):
  cfg, _ = checkpoints.load_model(converted["panoptic"])
  assert cfg.model.to_dict() == {**small_config("panoptic").to_dict(), "dropout": 0.1}
  assert convert_torch_weights.main([pth_files["detection"], str(tmp_path / "d")]) == 0
  assert "DC5 (dilation) cannot be seen in the weights" in capsys.readouterr().out


def test_postprocess_arrays_compared(converted, tmp_path, capsys):
  pp = load_npz("postprocess_small.npz")
  inputs = dict(load_npz("inputs.npz"), orig_target_sizes=pp["orig_target_sizes"])
  ref = dict(load_npz("panoptic_small.npz"))
  for key in ("scores", "labels", "boxes"):
    ref[f"pp_{key}"] = np.stack([pp[f"bbox_{key}_0"], pp[f"bbox_{key}_1"]])
  np.savez(tmp_path / "in.npz", **inputs)
  np.savez(tmp_path / "ref.npz", **ref)
  assert _compare(converted["panoptic"], str(tmp_path / "in.npz"), str(tmp_path / "ref.npz")) == 0
  assert "pp_labels" in capsys.readouterr().out
  ref["pp_labels"][0, 0] += 1
  np.savez(tmp_path / "ref.npz", **ref)
  assert _compare(converted["panoptic"], str(tmp_path / "in.npz"), str(tmp_path / "ref.npz")) == 1
  assert "pp_labels" in [line.split()[0] for line in capsys.readouterr().out.splitlines() if "FAIL" in line]


def test_compare_fails_on_perturbed_reference_and_usage_errors(converted, tmp_path, capsys):
  ref = load_npz("detection_small.npz")
  ref["pred_boxes"] = ref["pred_boxes"] + 1e-3
  np.savez(tmp_path / "ref.npz", **ref)
  assert _compare(converted["detection"], fixture_path("inputs.npz"), str(tmp_path / "ref.npz")) == 1
  assert _compare(converted["detection"], str(tmp_path / "missing.npz"), str(tmp_path / "ref.npz")) == 2
  np.savez(tmp_path / "no_logits.npz", pred_boxes=ref["pred_boxes"])
  assert _compare(converted["detection"], fixture_path("inputs.npz"), str(tmp_path / "no_logits.npz")) == 2
  assert "pred_logits" in capsys.readouterr().err


def test_export_round_trip_is_exact(converted, tmp_path):
  out = str(tmp_path / "exported.pth")
  assert convert_torch_weights.main(["--export", converted["panoptic"], out]) == 0
  assert zipfile.is_zipfile(out)
  exported = load_pth(out)["model"]
  original = filled_state_dict("panoptic")
  assert list(exported) == list(original)
  for key, value in original.items():
    assert exported[key].dtype == np.float32 and np.array_equal(exported[key], value), key


def test_export_loads_strictly_in_torch(converted, tmp_path):
  torch = pytest.importorskip("torch")
  out = str(tmp_path / "exported.pth")
  assert convert_torch_weights.main(["--export", converted["detection"], out]) == 0
  loaded = torch.load(out, weights_only=True)["model"]
  original = filled_state_dict("detection")
  assert list(loaded) == list(original)
  assert all(np.array_equal(loaded[k].numpy(), v) for k, v in original.items())


def test_num_classes_reinitialises_only_the_class_head(pth_files, tmp_path, capsys):
  dst = str(tmp_path / "ft")
  assert convert_torch_weights.main([pth_files["detection"], dst, "--num-classes", "5"]) == 0
  assert "class head re-initialised for 5 classes" in capsys.readouterr().out
  cfg, params = checkpoints.load_model(dst)
  assert cfg.model.num_classes == 5 and params["class_embed"]["kernel"].shape == (128, 6)
  sd = filled_state_dict("detection")
  np.testing.assert_array_equal(params["bbox_embed"]["layers_2"]["kernel"], sd["bbox_embed.layers.2.weight"].T)


def test_wrong_variant_lists_keys_and_fails(pth_files, tmp_path, capsys):
  assert convert_torch_weights.main([pth_files["detection"], str(tmp_path / "x"), "--model", "detr_resnet50"]) == 1
  err = capsys.readouterr().err
  assert "shape mismatch: query_embed.weight: got (20, 128), expected (100, 256)" in err
  assert "missing key: transformer.encoder.layers.2.self_attn.in_proj_weight" in err
  assert err.strip().splitlines()[-1].startswith("error: ")
  assert not (tmp_path / "x").exists()


def test_torchvision_resnet_becomes_backbone_checkpoint(tmp_path):
  layout = list(resnet_layout("resnet18"))
  sd = fill_v1([(e.key, e.shape) for e in layout] + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))], seed=3)
  save_pth(sd, str(tmp_path / "resnet18.pth"))
  assert convert_torch_weights.main([str(tmp_path / "resnet18.pth"), str(tmp_path / "r18")]) == 0
  cfg, params = checkpoints.load_model(str(tmp_path / "r18"))
  assert cfg.backbone_only and cfg.model.backbone == "resnet18"
  np.testing.assert_array_equal(params["backbone"]["layer2_0"]["downsample_conv"]["kernel"],
                                sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  assert convert_torch_weights.main(["--export", str(tmp_path / "r18"), str(tmp_path / "x.pth")]) == 1


def test_args_give_dc5_and_heads():
  sd = filled_state_dict("detection")
  cfg, notes = infer_model_config(sd, argparse.Namespace(dilation=True, nheads=4, dropout=0.0))
  assert cfg.dilation and cfg.nheads == 4 and cfg.num_classes == 91 and cfg.num_queries == 20
  assert "training args" in notes[0]


class _Exploit:
  def __reduce__(self):
    return (eval, ("open('PWNED', 'w')",))


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "malicious", "missing"])
def test_bad_input_is_one_line_and_exit_1(kind, pth_files, tmp_path):
  src = tmp_path / "bad.pth"
  if kind == "random":
    src.write_bytes(np.random.default_rng(0).bytes(4096))
  elif kind == "truncated":
    data = open(pth_files["detection"], "rb").read()
    src.write_bytes(data[: len(data) // 2])
  elif kind == "empty":
    src.write_bytes(b"")
  elif kind == "malicious":
    with zipfile.ZipFile(src, "w") as z:
      z.writestr("archive/data.pkl", pickle.dumps({"model": _Exploit()}, protocol=2))
  result = subprocess.run([sys.executable, "convert_torch_weights.py", str(src), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
  assert str(src) in lines[0]
  if kind == "malicious":
    assert "forbidden global '__builtin__.eval'" in lines[0]  # protocol 2 names builtins so
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()
