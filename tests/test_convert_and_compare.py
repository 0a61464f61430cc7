"""convert_torch_weights.py and `python -m detr_jax.compare model`, end to end on the public fixture."""
import argparse
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import convert_torch_weights
from helpers import filled_state_dict, fixture_path, load_npz, small_config, small_full_config
from detr_jax import compare, model_checkpoint
from detr_jax.errors import UserError
from detr_jax.fill import fill_v1
from detr_jax.torch_io import load_pth, save_pth
from detr_jax.torch_io.convert import infer_model_config, state_dict_to_params
from detr_jax.torch_io.mapping import model_layout, resnet_layout

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
  cfg, _ = model_checkpoint.load_model(converted["panoptic"])
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


def _bad_inputs(kind, tmp_path):
  inputs = load_npz("inputs.npz")
  path = tmp_path / "in.npz"
  if kind == "channels last":
    inputs["images_padded"] = inputs["images_padded"].transpose(0, 2, 3, 1)
  elif kind == "uint8 images":
    inputs["images_padded"] = inputs["images_padded"].astype(np.uint8)
  elif kind == "int mask":
    inputs["mask"] = inputs["mask"].astype(np.int64)
  elif kind == "mask shape":
    inputs["mask"] = inputs["mask"][:, :-1]
  elif kind == "no mask":
    del inputs["mask"]
  elif kind == "sizes shape":
    inputs["orig_target_sizes"] = np.array([[10, 20, 30]])
  elif kind == "object array":
    inputs["mask"] = np.array(["a", None], dtype=object)
  elif kind == "npy":
    path = tmp_path / "in.npy"
    np.save(path, inputs["images_padded"])
  elif kind == "text":
    path.write_text("images_padded = ...")
  elif kind == "directory":
    path.mkdir()
  elif kind == "truncated":
    np.savez(path, **inputs)
    path.write_bytes(path.read_bytes()[:1000])
  if not path.exists():
    np.savez(path, **inputs)
  return path, inputs


@pytest.mark.parametrize("kind, message", [
    ("channels last", "images_padded has shape (2, 96, 150, 3), expected [B, 3, H, W] (NCHW, not channels last)"),
    ("uint8 images", "images_padded has dtype uint8, expected float32 (normalised pixels)"),
    ("int mask", "mask has dtype int64, expected bool (True = padding)"),
    ("mask shape", "mask has shape (2, 95, 150), expected (2, 96, 150) ([B, H, W] of images_padded)"),
    ("no mask", "missing array 'mask' (have ['image_sizes', 'images_padded'])"),
    ("sizes shape", "orig_target_sizes has shape (1, 3) (int64), expected (2, 2) numbers: (h, w) per image"),
    ("object array", "unreadable .npz archive (ValueError: Object arrays cannot be loaded when allow_pickle=False)"),
    ("npy", "a single .npy array, expected an .npz archive of named arrays (np.savez)"),
    ("text", "not an .npz archive (np.savez output)"),
    ("truncated", "unreadable .npz archive (BadZipFile: "),
    ("directory", "cannot read it (Is a directory)"),
])
def test_compare_malformed_inputs_exit_2_with_one_line(kind, message, converted, tmp_path, capsys):
  path, _ = _bad_inputs(kind, tmp_path)
  assert _compare(converted["detection"], str(path), fixture_path("detection_small.npz")) == 2
  captured = capsys.readouterr()
  assert captured.out == ""  # refused before anything ran
  line, = captured.err.strip().splitlines()
  assert line.startswith(f"error: inputs {path}: {message}")


def test_compare_bad_checkpoint_or_reference_exit_2(converted, tmp_path, capsys):
  np.savez(tmp_path / "ref.npz", pred_logits=np.zeros(3), pred_boxes=np.array(["x"]))
  assert _compare(converted["detection"], fixture_path("inputs.npz"), str(tmp_path / "ref.npz")) == 2
  assert _error_lines(capsys) == [f"error: reference {tmp_path / 'ref.npz'}: 'pred_boxes' is <U1, expected a numeric "
                                  "or bool array"]
  assert _compare(str(tmp_path), fixture_path("inputs.npz"), fixture_path("detection_small.npz")) == 2
  assert _error_lines(capsys) == [f"error: {tmp_path}: not a detr-jax model checkpoint (expected a directory holding "
                                  "params/ and config/)"]


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
  cfg, params = model_checkpoint.load_model(dst)
  assert cfg.model.num_classes == 5 and params["class_embed"]["kernel"].shape == (128, 6)
  sd = filled_state_dict("detection")
  np.testing.assert_array_equal(params["bbox_embed"]["layers_2"]["kernel"], sd["bbox_embed.layers.2.weight"].T)


def _error_lines(capsys) -> list[str]:
  return capsys.readouterr().err.strip().splitlines()


def test_wrong_variant_is_a_short_summary(pth_files, tmp_path, capsys):
  assert convert_torch_weights.main([pth_files["detection"], str(tmp_path / "x"), "--model", "detr_resnet50"]) == 1
  lines = _error_lines(capsys)
  assert len(lines) == 2 and lines[0].startswith("note: the file fits custom (resnet50, 2+2 layers, d=128")
  assert lines[1] == (
      f"error: {pth_files['detection']} does not match detr_resnet50: 120 missing keys "
      "(transformer.encoder.layers.2.self_attn.in_proj_weight; transformer.encoder.layers.2.self_attn.in_proj_bias; "
      "... 118 more), 71 mis-shaped keys (transformer.encoder.layers.0.self_attn.in_proj_weight: got (384, 128), "
      "expected (768, 256); transformer.encoder.layers.0.self_attn.in_proj_bias: got (384,), expected (768,); "
      "... 69 more) (--list-keys lists them all)")
  assert not (tmp_path / "x").exists()
  assert convert_torch_weights.main([pth_files["detection"], str(tmp_path / "x"), "--model", "detr_resnet50",
                                     "--list-keys"]) == 1
  lines = _error_lines(capsys)
  assert len(lines) == 120 + 71 + 2 and "shape mismatch: query_embed.weight: got (20, 128), expected (100, 256)" in lines
  assert lines[-1].endswith("... 69 more)")


@pytest.mark.parametrize("key, shape, expected", [
    ("transformer.decoder.layers.0.linear1.weight", (256, 129), (256, 128)),
    ("query_embed.weight", (20, 129), (20, 128)),  # was: hidden_dim 129 and 66 mis-shaped keys
    ("input_proj.bias", (127,), (128,)),
    ("query_embed.weight", (20,), (100, 128)),  # no query count to read: the default is assumed
])
def test_one_misshaped_tensor_is_reported_as_itself(key, shape, expected, tmp_path, capsys):
  """Inference takes the size most tensors agree on: one bad tensor cannot pick another architecture."""
  sd = filled_state_dict("detection")
  sd[key] = np.zeros(shape, np.float32)
  save_pth({"model": sd}, str(tmp_path / "bad.pth"))
  assert convert_torch_weights.main([str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 1
  assert _error_lines(capsys) == [f"error: {tmp_path / 'bad.pth'} does not match custom: 1 mis-shaped key "
                                  f"({key}: got {shape}, expected {expected})"]
  assert not (tmp_path / "out").exists()


def test_not_a_state_dict_is_one_sentence(tmp_path, capsys):
  save_pth({"model": {"query_embed.weight": "text"}}, str(tmp_path / "s.pth"))
  save_pth({"epoch": 3}, str(tmp_path / "e.pth"))
  save_pth({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(tmp_path / "r.pth"))
  for name, message in (("s", "no state dict found: its 'model' entry maps 'query_embed.weight' to a str, expected "
                         "str keys and tensors"),
                        ("e", "no state dict found: the file maps 'epoch' to a int, expected str keys and tensors"),
                        ("r", "not a DETR checkpoint: no query_embed.weight / class_embed.weight")):
    assert convert_torch_weights.main([str(tmp_path / f"{name}.pth"), str(tmp_path / "out")]) == 1
    assert _error_lines(capsys) == [f"error: {tmp_path / name}.pth: {message}"]


def test_force_refuses_a_folder_that_is_not_our_checkpoint(pth_files, tmp_path, capsys):
  user = tmp_path / "photos"
  user.mkdir()
  (user / "holiday.jpg").write_bytes(b"precious")
  (user / "params").mkdir()  # half of our layout is not enough
  (tmp_path / "notes.txt").write_text("mine")
  for dst in (user, tmp_path / "notes.txt"):
    assert convert_torch_weights.main([pth_files["detection"], str(dst), "--force"]) == 1
    assert _error_lines(capsys) == [f"error: {dst} exists and is not a detr-jax checkpoint (a directory holding "
                                    "params/ and config/); --force replaces nothing else, so it is left as it is"]
  assert (user / "holiday.jpg").read_bytes() == b"precious" and (tmp_path / "notes.txt").read_text() == "mine"
  assert convert_torch_weights.main([pth_files["detection"], str(user)]) == 1
  assert _error_lines(capsys) == [f"error: {user} already exists (use --force to replace it)"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_force_replaces_our_checkpoint(pth_files, tmp_path):
  dst = str(tmp_path / "ckpt")
  model_checkpoint.save_model(dst, small_full_config("panoptic"), {"old": {"w": np.ones(3, np.float32)}})
  assert convert_torch_weights.main([pth_files["detection"], dst, "--force"]) == 0
  cfg, params = model_checkpoint.load_model(dst)
  assert cfg.model.num_classes == 91 and "old" not in params
  np.testing.assert_array_equal(params["query_embed"]["embedding"], filled_state_dict("detection")["query_embed.weight"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing left beside it


def _tiny_params():
  return {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def test_save_model_is_atomic(tmp_path, monkeypatch):
  """A save that fails after writing leaves no output under the final name, and an old checkpoint intact."""
  real_save = model_checkpoint.ocp.Checkpointer.save

  def save_then_fail(self, directory, *args, **kwargs):
    real_save(self, directory, *args, **kwargs)
    assert os.listdir(directory)  # the data is written (under the temporary name) ...
    raise OSError(28, "No space left on device")  # ... and then the disk fills up

  monkeypatch.setattr(model_checkpoint.ocp.Checkpointer, "save", save_then_fail)
  with pytest.raises(UserError, match="cannot write the checkpoint \\(No space left on device\\)"):
    model_checkpoint.save_model(str(tmp_path / "new"), small_full_config("detection"), _tiny_params())
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  model_checkpoint.save_model(str(tmp_path / "old"), small_full_config("detection"), _tiny_params())
  monkeypatch.setattr(model_checkpoint.ocp.Checkpointer, "save", save_then_fail)
  with pytest.raises(UserError, match="cannot write the checkpoint \\(No space left on device\\)"):
    model_checkpoint.save_model(str(tmp_path / "old"), small_full_config("panoptic"), {"w": np.zeros(1, np.float32)},
                           replace=True)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ["old"]
  cfg, params = model_checkpoint.load_model(str(tmp_path / "old"))
  assert cfg.name == "detection_small"
  np.testing.assert_array_equal(params["w"], _tiny_params()["w"])


def test_save_model_never_replaces_other_things(tmp_path):
  (tmp_path / "dir").mkdir()
  (tmp_path / "dir" / "keep.txt").write_text("keep")
  for replace in (False, True):
    with pytest.raises(UserError, match="already exists"):
      model_checkpoint.save_model(str(tmp_path / "dir"), small_full_config("detection"), _tiny_params(), replace=replace)
  assert os.listdir(tmp_path / "dir") == ["keep.txt"] and len(os.listdir(tmp_path)) == 1


def test_export_is_atomic(converted, tmp_path, monkeypatch, capsys):
  out = tmp_path / "exported.pth"
  out.write_bytes(b"old")

  def no_space(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", no_space)  # the data is written, the rename is still to come
  assert convert_torch_weights.main(["--export", converted["detection"], str(out), "--force"]) == 1
  monkeypatch.undo()
  lines = _error_lines(capsys)
  assert len(lines) == 1 and lines[0].startswith(f"error: {out}: ") and "No space left on device" in lines[0]
  assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["exported.pth"]
  (tmp_path / "dir.pth").mkdir()
  assert convert_torch_weights.main(["--export", converted["detection"], str(tmp_path / "dir.pth"), "--force"]) == 1
  assert _error_lines(capsys) == [f"error: {tmp_path / 'dir.pth'} exists and is not a file; --force replaces nothing "
                                  "else, so it is left as it is"]


def test_export_of_a_training_checkpoint(tmp_path, capsys):
  """A training-style checkpoint (config without a name, with training and dataset fields) exports."""
  from configs.synthetic import get_config
  config = get_config()
  config.model.backbone_layers = 4  # the demo's own (3) has no official layout: see the next test
  layout = model_layout(config.model)
  sd = fill_v1([(e.key, e.shape) for e in layout], seed=7)
  model_checkpoint.save_model(str(tmp_path / "checkpoints" / "3"), config, state_dict_to_params(sd, layout))
  out = tmp_path / "trained.pth"
  assert convert_torch_weights.main(["--export", str(tmp_path / "checkpoints" / "3"), str(out)]) == 0
  assert capsys.readouterr().out == f"wrote {out}: {len(layout)} tensors in the official custom layout\n"
  exported = load_pth(str(out))["model"]
  assert list(exported) == list(sd)
  assert all(np.array_equal(exported[k], v) for k, v in sd.items())
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "trained.pth"]


def test_export_refuses_a_model_without_layer4(tmp_path, capsys):
  from configs.synthetic import get_config
  config = get_config()
  assert config.model.backbone_layers == 3
  model_checkpoint.save_model(str(tmp_path / "c"), config, _tiny_params())
  for flag, out in (("--export", "x.pth"), ("--export-hf", "hf")):
    assert convert_torch_weights.main([flag, str(tmp_path / "c"), str(tmp_path / out)]) == 1
    assert _error_lines(capsys) == [f"error: {tmp_path / 'c'}: model.backbone_layers=3 (the transformer reads layer3) "
                                    "has no official counterpart; only models with the full backbone (4) have the "
                                    "official layout"]
  assert sorted(os.listdir(tmp_path)) == ["c"]


def test_export_refuses_params_that_do_not_fit_their_config(tmp_path, capsys):
  model_checkpoint.save_model(str(tmp_path / "c"), small_full_config("detection"), _tiny_params())
  assert convert_torch_weights.main(["--export", str(tmp_path / "c"), str(tmp_path / "x.pth")]) == 1
  line, = _error_lines(capsys)
  assert line.startswith(f"error: {tmp_path / 'c'}: parameters do not fit the model in the config: 338 missing keys "
                         "(transformer/encoder/layers_0/self_attn/in_proj_kernel; ") and "1 unexpected key (w)" in line
  assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("damage", ["not a checkpoint", "empty config", "bad json", "no params"])
def test_damaged_checkpoint_is_one_line(damage, tmp_path, capsys):
  ckpt = tmp_path / "c"
  model_checkpoint.save_model(str(ckpt), small_full_config("detection"), _tiny_params())
  if damage == "not a checkpoint":
    shutil.rmtree(ckpt / "config")
  elif damage == "empty config":
    for f in (ckpt / "config").iterdir():
      f.unlink()
  elif damage == "bad json":
    for f in (ckpt / "config").iterdir():
      f.write_text("{")
  else:
    shutil.rmtree(ckpt / "params")
    (ckpt / "params").mkdir()
  assert convert_torch_weights.main(["--export", str(ckpt), str(tmp_path / "x.pth")]) == 1
  line, = _error_lines(capsys)
  assert line.startswith(f"error: {ckpt}: " + ("not a detr-jax model checkpoint" if damage == "not a checkpoint"
                                               else "damaged checkpoint"))


def test_torchvision_resnet_becomes_backbone_checkpoint(tmp_path):
  layout = list(resnet_layout("resnet18"))
  sd = fill_v1([(e.key, e.shape) for e in layout] + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))], seed=3)
  save_pth(sd, str(tmp_path / "resnet18.pth"))
  assert convert_torch_weights.main([str(tmp_path / "resnet18.pth"), str(tmp_path / "r18")]) == 0
  cfg, params = model_checkpoint.load_model(str(tmp_path / "r18"))
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
