"""--runtime onnxruntime: the forward exported by jax2onnx equals the jitted JAX forward and the reference."""
import logging
import os
import sys

import jax
import numpy as np
import pytest

import convert_torch_weights
from helpers import filled_state_dict, fixture_path, small_config
from detr_jax import compare, predict
from detr_jax.errors import UserError
from detr_jax.torch_io.convert import filled_params
from detr_jax.models import build_model
from detr_jax import onnx_runtime
from detr_jax.onnx_runtime import OnnxFunction, export, export_key
from detr_jax.torch_io import save_pth
from test_predict import _cat_and_tree_checkpoint, _image, _load


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The public fixture's detection and panoptic checkpoints, converted from official-layout .pth files."""
  tmp = tmp_path_factory.mktemp("onnx")
  dirs = {}
  for name in ("detection", "panoptic"):
    save_pth({"model": filled_state_dict(name)}, str(tmp / f"{name}.pth"))
    dirs[name] = str(tmp / name)
    assert convert_torch_weights.main([str(tmp / f"{name}.pth"), dirs[name]]) == 0
  return dirs


@pytest.mark.parametrize("name", ["detection", "panoptic"])
def test_compare_checks_the_onnx_forward_against_the_reference(name, converted, capsys):
  argv = ["model", "--checkpoint", converted[name], "--inputs", fixture_path("inputs.npz"),
          "--reference", fixture_path(f"{name}_small.npz"), "--runtime", "onnxruntime"]
  assert compare.main(argv) == 0
  out = capsys.readouterr().out
  assert "pred_logits" in out and "aux_pred_boxes" in out and "FAIL" not in out
  assert ("pred_masks" in out) == (name == "panoptic")


def test_compare_fails_when_the_onnx_forward_is_wrong(converted, tmp_path, capsys, monkeypatch):
  """The check can fail: a graph that adds 1e-2 to the boxes is caught."""
  run = OnnxFunction.__call__
  monkeypatch.setattr(OnnxFunction, "__call__",
                      lambda self, *args: {**(out := run(self, *args)), "pred_boxes": out["pred_boxes"] + 1e-2})
  argv = ["model", "--checkpoint", converted["detection"], "--inputs", fixture_path("inputs.npz"),
          "--reference", fixture_path("detection_small.npz"), "--runtime", "onnxruntime"]
  assert compare.main(argv) == 1
  assert "FAIL" in capsys.readouterr().out


def test_onnx_function_equals_jax_for_each_input_shape():
  """Padding, two shapes (one session each) and the batch-invariant backbone: outputs within 1e-5."""
  cfg = small_config("detection")
  params = filled_params(cfg, seed=1)
  jax_model, onnx_model = build_model(cfg, isolate_padding=True), build_model(cfg, isolate_padding=True, for_onnx=True)
  forward = OnnxFunction(lambda x, m: onnx_model.apply({"params": params}, x, m))
  rng = np.random.default_rng(0)
  for b, h, w in ((2, 64, 96), (1, 96, 64)):
    images = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    mask = np.zeros((b, h, w), bool)
    mask[-1, h // 2:] = True
    images[mask] = 0
    ours = forward(images, mask)
    expected = jax.jit(jax_model.apply)({"params": params}, images, mask)
    assert sorted(ours) == sorted(expected)
    for key, value in expected.items():
      scale = np.abs(np.asarray(value)).max()
      np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-5 * scale, err_msg=key)
  assert len(forward._sessions) == 2


def test_export_writes_a_model_with_named_outputs(tmp_path, caplog):
  import onnx
  cfg = small_config("detection")
  params = filled_params(cfg)
  model = build_model(cfg, for_onnx=True)
  export(lambda x, m: model.apply({"params": params}, x, m), np.zeros((1, 32, 32, 3), np.float32),
         np.zeros((1, 32, 32), bool), path=str(tmp_path / "detr.onnx"))
  graph = onnx.load(str(tmp_path / "detr.onnx")).graph
  assert [o.name for o in graph.output] == ["aux_pred_boxes", "aux_pred_logits", "pred_boxes", "pred_logits"]
  assert "Einsum" not in {node.op_type for node in graph.node}  # 1x1 convolutions are Conv nodes for onnxruntime
  # The stem's max pool carries torch's padding itself (no Pad node), so that onnxruntime keeps its blocked layout.
  pools = [node for node in graph.node if node.op_type == "MaxPool"]
  assert "Pad" not in {node.op_type for node in graph.node} and len(pools) == 1
  assert {a.name: onnx.helper.get_attribute_value(a) for a in pools[0].attribute}["pads"] == [1, 1, 1, 1]
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # nothing for users to read


@pytest.mark.parametrize("fill, padding, folded", [
    (-np.inf, ((0, 0), (1, 2), (0, 1), (0, 0)), True),
    (0.0, ((0, 0), (1, 1), (1, 1), (0, 0)), False),  # not a max pool's padding
    (-np.inf, ((0, 0), (1, 1), (1, 1), (1, 0)), False)])  # pads channels
def test_padded_max_pools_keep_their_values(fill, padding, folded):
  """A -inf padding of H and W goes into the MaxPool (its attribute `pads`); any other stays a Pad node."""
  import flax.linen as nn
  import jax.numpy as jnp
  pool = lambda x: nn.max_pool(jnp.pad(x, padding, constant_values=fill), window_shape=(3, 3), strides=(2, 2),
                               padding="VALID")
  x = np.random.default_rng(0).normal(size=(2, 9, 8, 4)).astype(np.float32)
  graph = export(pool, x).graph
  assert ("Pad" not in {node.op_type for node in graph.node}) == folded
  np.testing.assert_array_equal(OnnxFunction(pool)(x), pool(x))


def _small_forward(seed=1):
  cfg = small_config("detection")
  params = filled_params(cfg, seed=seed)
  model = build_model(cfg, for_onnx=True)
  return lambda x, m: model.apply({"params": params}, x, m)


def _inputs(h=64, w=64):
  return np.random.default_rng(0).normal(size=(1, h, w, 3)).astype(np.float32), np.zeros((1, h, w), bool)


def test_export_key_names_the_program_its_parameters_and_the_shapes():
  forward, x, m = _small_forward(), *_inputs()
  key = export_key(forward, x, m)
  assert key == export_key(_small_forward(), x, m)  # the same model and weights, traced again
  assert len({key, export_key(_small_forward(seed=2), x, m), export_key(forward, *_inputs(64, 96))}) == 3


def test_exports_are_kept_between_runs(tmp_path, monkeypatch):
  forward, (x, m), cache = _small_forward(), _inputs(), str(tmp_path / "cache")
  seen = []
  expected = OnnxFunction(forward, on_export=lambda shapes, cached: seen.append(cached), cache_dir=cache)(x, m)
  assert seen == [None] and os.listdir(cache) == [export_key(forward, x, m) + ".onnx"]

  def no_export(*args, **kwargs):
    raise AssertionError("exported although the cache has the graph")
  monkeypatch.setattr(onnx_runtime, "export", no_export)
  again = OnnxFunction(forward, on_export=lambda shapes, cached: seen.append(cached), cache_dir=cache)(x, m)
  assert seen == [None, os.path.join(cache, os.listdir(cache)[0])]
  for key in expected:
    np.testing.assert_array_equal(again[key], expected[key])


def test_an_unreadable_cached_export_is_exported_again(tmp_path, capsys):
  forward, (x, m) = _small_forward(), _inputs()
  path = tmp_path / (export_key(forward, x, m) + ".onnx")
  path.write_bytes(b"half a file")
  seen = []
  out = OnnxFunction(forward, on_export=lambda shapes, cached: seen.append(cached), cache_dir=str(tmp_path))(x, m)
  assert seen == [str(path), None]
  assert capsys.readouterr().err.startswith(f"warning: {path}: unreadable cached ONNX export (")
  np.testing.assert_allclose(out["pred_boxes"], jax.jit(forward)(x, m)["pred_boxes"], atol=1e-5)
  assert os.path.getsize(path) > 1000 and os.listdir(tmp_path) == [path.name]  # replaced whole, no temporary left


def test_a_cache_that_cannot_be_written_costs_a_warning(tmp_path, capsys):
  forward, (x, m) = _small_forward(), _inputs()
  (tmp_path / "file").write_text("")
  cache = str(tmp_path / "file" / "cache")  # under a file: cannot be made
  out = OnnxFunction(forward, cache_dir=cache)(x, m)
  assert capsys.readouterr().err.startswith(f"warning: cannot keep the ONNX export in {cache}: ")
  np.testing.assert_allclose(out["pred_boxes"], jax.jit(forward)(x, m)["pred_boxes"], atol=1e-5)
  assert os.listdir(tmp_path) == ["file"]


def test_predict_with_onnxruntime_writes_the_jax_results(tmp_path, capsys):
  """A mask model (top-K masks, then all queries when needed) and a batch of two bucket shapes."""
  _cat_and_tree_checkpoint(tmp_path / "ckpt", bucket_sides=(128,))
  _image(tmp_path / "scene.png", 75, 100, 4)
  _image(tmp_path / "tall.png", 120, 60, 5)
  paths = [str(tmp_path / "scene.png"), str(tmp_path / "tall.png")]
  cache = str(tmp_path / "cache")
  for runtime in ("jax", "onnxruntime"):
    assert predict.main(["--checkpoint", str(tmp_path / "ckpt"), *paths, "--out-dir", str(tmp_path / runtime),
                         "--threshold", "0.5", "--runtime", runtime, "--onnx-cache", cache]) == 0
  announced = [line for line in capsys.readouterr().out.splitlines() if line.startswith("onnxruntime:")]
  assert announced == [f"onnxruntime: exporting the forward for 1x{h}x128 image batches (once per shape; kept in "
                       f"{cache})" for h in (128, 256)]  # one export per bucket shape
  # A second run loads both exports from the cache and writes the same outputs.
  assert predict.main(["--checkpoint", str(tmp_path / "ckpt"), *paths, "--out-dir", str(tmp_path / "again"),
                       "--threshold", "0.5", "--runtime", "onnxruntime", "--onnx-cache", cache]) == 0
  announced = [line for line in capsys.readouterr().out.splitlines() if line.startswith("onnxruntime:")]
  files = sorted(os.listdir(cache))
  assert len(files) == 2 and len(announced) == 2
  assert all(line.startswith(f"onnxruntime: the forward for 1x{h}x128 image batches, exported in an earlier run: "
                             f"{cache}/") for line, h in zip(announced, (128, 256)))
  assert sorted(os.path.basename(line.split(": ")[-1]) for line in announced) == files
  for stem in ("scene", "tall"):
    assert _load(tmp_path / "again" / f"{stem}.json") == _load(tmp_path / "onnxruntime" / f"{stem}.json")
  for stem in ("scene", "tall"):
    jax_record, onnx_record = _load(tmp_path / "jax" / f"{stem}.json"), _load(tmp_path / "onnxruntime" / f"{stem}.json")
    assert jax_record["segments_info"] == onnx_record["segments_info"] and onnx_record["segments_info"]
    assert len(jax_record["detections"]) == len(onnx_record["detections"])
    for a, b in zip(jax_record["detections"], onnx_record["detections"]):
      assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
      np.testing.assert_allclose(a["box_xyxy"], b["box_xyxy"], atol=1e-2)


def test_predict_refuses_bfloat16_on_onnxruntime(tmp_path, capsys):
  _cat_and_tree_checkpoint(tmp_path / "ckpt", bucket_sides=(128,))
  _image(tmp_path / "scene.png", 75, 100, 4)
  assert predict.main(["--checkpoint", str(tmp_path / "ckpt"), str(tmp_path / "scene.png"), "--out-dir",
                       str(tmp_path / "out"), "--runtime", "onnxruntime", "--dtype", "bfloat16"]) == 1
  assert capsys.readouterr().err.strip() == "error: --runtime onnxruntime computes in float32 (got --dtype bfloat16)"


def test_missing_extra_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
  with pytest.raises(UserError, match=r"^--runtime onnxruntime needs the onnx extra \(missing: onnxruntime\): "
                                      r"pip install -e '\.\[onnx\]'$"):
    OnnxFunction(lambda x: x)
