"""HuggingFace DETR folders: import (convert_torch_weights.py HF_DIR), parity with transformers'
outputs (`compare model`), and --export-hf, on fixtures made by transformers itself.

tests/fixtures/hf/<name>/ (tools/dump_hf_reference.py; versions in source.json):
  det_r18_learned_v5  transformers 5 DetrForObjectDetection, timm resnet18, learned positions,
                      save_pretrained's model.safetensors and a state_dict() file (module names)
  seg_r50_dc5_v4      transformers 4 DetrForSegmentation, timm resnet50 DC5, sine positions,
                      save_pretrained(safe_serialization=False)'s pytorch_model.bin
Each weights file is stored as `<file>.sparse.npz` (its bytes outside the tensors, plus per tensor
an offset and the seeded draw that filled it); `rebuild` gives transformers' exact file back and
checks its sha256.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

import convert_torch_weights
from helpers import fixture_path
from detr_jax import compare, model_checkpoint
from detr_jax.errors import UserError
from detr_jax.torch_io import hf
from detr_jax.torch_io.pth import load_pth

FIXTURES = {"det_r18_learned_v5": "model.safetensors", "seg_r50_dc5_v4": "pytorch_model.bin"}


def _draw(seed, kind, a, b, count):
  rng = np.random.default_rng(seed)
  return (rng.normal if kind == 0 else rng.uniform)(a, b, count).astype("<f4")


def rebuild(sparse: str, out: str) -> None:
  """Writes the file stored in `sparse` (tools/dump_hf_reference.py's format) to `out`."""
  with np.load(sparse) as z:
    literal, segments, dists, sha = z["literal"].tobytes(), z["segments"], z["dists"], str(z["sha256"])
  data, pos = bytearray(), 0
  for (offset, count, seed), (kind, a, b) in zip(segments, dists):
    gap = int(offset) - len(data)
    data += literal[pos:pos + gap]
    pos += gap
    data += _draw(int(seed), int(kind), float(a), float(b), int(count)).tobytes()
  data += literal[pos:]
  assert hashlib.sha256(data).hexdigest() == sha, f"{sparse} does not rebuild transformers' file"
  with open(out, "wb") as f:
    f.write(data)


def _hf_folder(name: str, folder: str, weights: str, stored: str | None = None) -> str:
  os.makedirs(folder)
  shutil.copy(fixture_path(f"hf/{name}/config.json"), folder)
  rebuild(fixture_path(f"hf/{name}/{stored or weights}.sparse.npz"), os.path.join(folder, weights))
  return folder


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
  """transformers' folders (config.json + weights), rebuilt byte for byte."""
  tmp = tmp_path_factory.mktemp("hf")
  return {name: _hf_folder(name, str(tmp / name), weights) for name, weights in FIXTURES.items()}


@pytest.fixture(scope="module")
def converted(hf_folders, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ckpt")
  dirs = {}
  for name, folder in hf_folders.items():
    dirs[name] = str(tmp / name)
    assert convert_torch_weights.main([folder, dirs[name]]) == 0
  return dirs


@pytest.mark.parametrize("name", list(FIXTURES))
def test_outputs_match_transformers(name, converted, capsys):
  """compare model on transformers' inputs (pixel_mask 1 = real pixel) and outputs, 1e-4 absolute."""
  code = compare.main(["model", "--checkpoint", converted[name], "--inputs", fixture_path(f"hf/{name}/inputs.npz"),
                       "--reference", fixture_path(f"hf/{name}/reference.npz"), "--atol", "1e-4", "--rtol", "0"])
  rows = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()
          if line.startswith("pred_")}
  expected = {"pred_logits", "pred_boxes"} | ({"pred_masks"} if name.startswith("seg") else set())
  assert code == 0 and set(rows) == expected and max(rows.values()) < 1e-4, rows


def test_config_and_class_names():
  """Both config.json styles: transformers 5 (nested backbone_config), 4 (backbone, dilation,
  backbone_kwargs); id2label become the class names (the export test shows the checkpoint keeps them)."""
  det, notes = hf.read_config(fixture_path("hf/det_r18_learned_v5"))
  expected = dict(backbone="resnet18", dilation=False, position_embedding="learned", hidden_dim=32, nheads=4,
                  enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=5, num_classes=3, masks=False)
  assert {key: det.model[key] for key in expected} == expected and notes == []
  assert list(det.class_names) == ["N/A", "circle", "square"] and det.name == "custom"
  seg, _ = hf.read_config(fixture_path("hf/seg_r50_dc5_v4"))
  assert (seg.model.backbone, seg.model.dilation, seg.model.masks, seg.model.hidden_dim, seg.model.nheads,
          seg.model.num_queries, seg.model.position_embedding) == ("resnet50", True, True, 128, 8, 4, "sine")
  assert list(seg.class_names) == ["N/A", "thing"]


def test_module_names_of_transformers_5(hf_folders, tmp_path):
  """A state_dict() saved directly (transformers 5 module names: backbone.model, o_proj, mlp.fc1)
  gives the same weights as save_pretrained's file (transformers 4 names)."""
  name = "det_r18_learned_v5"
  folder = _hf_folder(name, str(tmp_path / "sd"), "model.safetensors", stored="state_dict.safetensors")
  module_names, _ = hf.load_weights(folder)
  assert any(".o_proj." in k for k in module_names) and any(".mlp.fc1." in k for k in module_names)
  cfg, _ = hf.read_config(folder)
  saved, _ = hf.load_weights(hf_folders[name])
  ours = hf.to_official(hf.file_key_names(module_names), cfg.model)
  theirs = hf.to_official(saved, cfg.model)
  assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_learned_position_names_of_transformers_4():
  """transformers 4 keeps the learned position embedding under model.backbone (5: under model)."""
  renamed = hf.file_key_names({"model.backbone.position_embedding.row_embeddings.weight": 0,
                               "detr.model.backbone.position_embedding.column_embeddings.weight": 1})
  assert list(renamed) == ["model.position_embedding.row_embeddings.weight",
                           "detr.model.position_embedding.column_embeddings.weight"]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_export_hf_gives_transformers_files(name, converted, hf_folders, tmp_path, capsys):
  """--export-hf writes exactly the tensors (names, shapes, float32 values) transformers wrote, and a
  config.json that reads back as the same model and class names."""
  out = str(tmp_path / "export")
  assert convert_torch_weights.main(["--export-hf", converted[name], out]) == 0
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  ours = load_file(os.path.join(out, "model.safetensors"))
  weights = os.path.join(hf_folders[name], FIXTURES[name])
  theirs = load_file(weights) if weights.endswith(".safetensors") else load_pth(weights)
  assert sorted(ours) == sorted(theirs)
  assert all(ours[k].dtype == np.float32 and np.array_equal(ours[k], theirs[k]) for k in ours)
  cfg, _ = hf.read_config(out)
  original, _ = hf.read_config(hf_folders[name])
  assert cfg.to_dict() == original.to_dict()
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["architectures"] == json.load(open(os.path.join(hf_folders[name], "config.json")))[
        "architectures"]
  assert "wrote" in capsys.readouterr().out


def test_export_hf_replaces_only_its_own_folders(converted, tmp_path, capsys):
  ckpt, out = converted["det_r18_learned_v5"], tmp_path / "export"
  assert convert_torch_weights.main(["--export-hf", ckpt, str(out)]) == 0
  assert convert_torch_weights.main(["--export-hf", ckpt, str(out)]) == 1
  assert "already exists (use --force to replace it)" in capsys.readouterr().err
  assert convert_torch_weights.main(["--export-hf", ckpt, str(out), "--force"]) == 0
  (out / "notes.txt").write_text("mine")
  assert convert_torch_weights.main(["--export-hf", ckpt, str(out), "--force"]) == 1
  assert "is not a folder holding only config.json and model.safetensors" in capsys.readouterr().err
  assert (out / "notes.txt").read_text() == "mine"


def test_num_classes_reinitialises_the_class_head(hf_folders, tmp_path, capsys):
  dst = str(tmp_path / "ft")
  assert convert_torch_weights.main([hf_folders["det_r18_learned_v5"], dst, "--num-classes", "7"]) == 0
  cfg, params = model_checkpoint.load_model(dst)
  assert cfg.model.num_classes == 7 and "class_names" not in cfg
  assert params["class_embed"]["kernel"].shape == (32, 8)
  assert "class head re-initialised for 7 classes" in capsys.readouterr().out


def _config(**changes) -> dict:
  with open(fixture_path("hf/seg_r50_dc5_v4/config.json")) as f:
    config = json.load(f)
  for key, value in changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  return config


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="deformable_detr"), "model_type is 'deformable_detr'; only 'detr'"),
    (dict(architectures=["DetrModel"]), "architectures is ['DetrModel']"),
    (dict(backbone="resnet50d"), "backbone is 'resnet50d'; supported: the timm ResNets"),
    (dict(backbone="resnet18"), "DC5 (dilation / output_stride 16) with resnet18"),
    (dict(backbone_config={"model_type": "resnet", "depths": [3, 4, 6, 3]}),
     "backbone_config.model_type is 'resnet': HF's own ResNet"),
    (dict(activation_function="gelu"), "activation_function is 'gelu'; only 'relu'"),
    (dict(decoder_ffn_dim=128), "encoder_ffn_dim (64) differs from decoder_ffn_dim (128)"),
    (dict(d_model="128"), "d_model is '128', expected int"),
    (dict(id2label={"a": "x"}), "id2label keys must be class ids"),
])
def test_unsupported_config_is_one_line(changes, message, tmp_path, capsys):
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(_config(**changes)))
  assert convert_torch_weights.main([str(folder), str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {folder}/config.json: ") and message in err and "\n" not in err, err
  assert not (tmp_path / "out").exists()


def test_bad_folders_and_weights_are_one_line(tmp_path, capsys):
  def run(folder):
    assert convert_torch_weights.main([str(folder), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err

  empty = tmp_path / "empty"
  empty.mkdir()
  assert "without config.json" in run(empty)
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(_config()))
  assert "no model.safetensors or pytorch_model.bin" in run(folder)
  (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
  assert "unreadable safetensors file" in run(folder)
  (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
  assert "is a Git LFS pointer, not the weights" in run(folder)
  from safetensors.numpy import save_file
  save_file({"detr.class_labels_classifier.weight": np.zeros((3, 128), np.float32),
             "detr.model.backbone.conv_encoder.model.conv1.weight": np.zeros((64, 3, 3, 3), np.float32),
             "detr.model.encoder.layers.0.self_attn.in_proj_weight": np.zeros((384, 128), np.float32)},
            str(folder / "model.safetensors"))
  err = run(folder)
  assert "does not match" in err and "missing keys" in err and "unexpected key" in err and "mis-shaped" in err
  assert "detr.model.backbone.conv_encoder.model.conv1.weight: got (64, 3, 3, 3), expected (64, 3, 7, 7)" in err


def test_compare_reads_transformers_names():
  inputs, ref = compare.from_hf_names({"pixel_values": np.zeros((1, 3, 2, 2), np.float32),
                                       "pixel_mask": np.array([[[1, 0], [1, 0]]])}, {"logits": np.ones(2)}, "in.npz")
  assert inputs["mask"].tolist() == [[[False, True], [False, True]]] and "pred_logits" in ref
  with pytest.raises(UserError, match="pixel_mask must hold 0"):
    compare.from_hf_names({"pixel_values": np.zeros((1, 3, 1, 1)), "pixel_mask": np.full((1, 1, 1), 2)}, {}, "in.npz")
