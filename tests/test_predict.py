"""python -m detr_jax.predict on tiny filled checkpoints (detection, panoptic) and a trained synthetic one;
every kind of input file, class names."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from detr_jax import predict
from detr_jax.model_checkpoint import save_model
from detr_jax.coco_categories import DETECTION_NAMES, PANOPTIC_CATEGORIES, panoptic_names
from detr_jax.config import dataset_config, model_config
from detr_jax.data.images import to_rgb
from detr_jax.data.synthetic import CLASS_NAMES
from detr_jax.errors import UserError
from detr_jax.models import build_model
from detr_jax.torch_io.convert import filled_params
from detr_jax.visualize import draw_detections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(backbone="resnet18", hidden_dim=64, nheads=8, enc_layers=1, dec_layers=1, dim_feedforward=64,
            num_queries=8, dropout=0.0)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _image(path, h, w, seed):
  image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(image).save(path)
  return image


def _predict(capsys, *argv):
  code = predict.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _load(path):
  with open(path) as f:
    return json.load(f)


def _reference(model_cfg, params, image, resized):
  """scores, labels [Q] and xyxy boxes [Q, 4] (original pixels) of the official model run on the image
  alone (no padding), computed here from scratch: PIL bilinear resize to `resized`, ImageNet normalisation."""
  h, w = resized
  pixels = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.float32)
  x = ((pixels / 255 - MEAN) / STD).astype(np.float32)[None]
  out = jax.jit(build_model(model_cfg).apply)({"params": params}, x, np.zeros((1, h, w), bool))
  logits = np.asarray(out["pred_logits"][0], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (probs / probs.sum(-1, keepdims=True))[..., :-1]
  cx, cy, bw, bh = np.asarray(out["pred_boxes"][0], np.float64).T
  oh, ow = image.shape[:2]
  boxes = np.stack([(cx - bw / 2) * ow, (cy - bh / 2) * oh, (cx + bw / 2) * ow, (cy + bh / 2) * oh], axis=-1)
  return probs.max(-1), probs.argmax(-1), boxes


def _threshold_between(scores):
  """A threshold in the widest gap of the middle of the sorted scores: about half are kept."""
  s = np.sort(scores.ravel())
  k = len(s) // 4 + int(np.argmax(np.diff(s[len(s) // 4:3 * len(s) // 4])))
  assert s[k + 1] - s[k] > 1e-3
  return float((s[k] + s[k + 1]) / 2)


def test_converted_checkpoint_matches_the_model_on_each_image_alone(tmp_path, capsys):
  """Official preprocessing (resize 800 / max 1333), padding that changes nothing, boxes, names, threshold."""
  config = ml_collections.ConfigDict({"name": "tiny", "model": model_config(**TINY, num_classes=91)})
  params = filled_params(config.model)
  save_model(str(tmp_path / "ckpt"), config, params)
  images = [_image(tmp_path / "wide.png", 60, 80, 1), _image(tmp_path / "tall.jpg.png", 90, 50, 2)]
  # 60x80 -> 800x1066, 90x50 -> 1333x741 (long side capped); the CLI pads both to the (1344, 1088) bucket.
  scores, labels, boxes = (np.stack(r) for r in zip(*(_reference(config.model, params, image, resized)
                                                     for image, resized in zip(images, [(800, 1066), (1333, 741)]))))
  threshold = _threshold_between(scores)
  code, out, err = _predict(capsys, "--checkpoint", tmp_path / "ckpt", tmp_path / "wide.png",
                            tmp_path / "tall.jpg.png", "--out-dir", tmp_path / "out", "--threshold", threshold,
                            "--batch-size", 2)
  assert code == 0, err
  assert len(out.strip().splitlines()) == 2
  total = 0
  for i, (stem, image) in enumerate(zip(("wide", "tall.jpg"), images)):
    record = _load(tmp_path / "out" / f"{stem}.json")
    assert record["size"] == list(image.shape[:2])
    kept = np.flatnonzero(scores[i] >= threshold)
    kept = kept[np.argsort(-scores[i][kept])]
    dets = record["detections"]
    assert [d["label"] for d in dets] == labels[i][kept].tolist()
    assert [d["name"] for d in dets] == [DETECTION_NAMES[label] for label in labels[i][kept]]
    np.testing.assert_allclose([d["score"] for d in dets], scores[i][kept], atol=1e-4)
    np.testing.assert_allclose(np.array([d["box_xyxy"] for d in dets]).reshape(-1, 4), boxes[i][kept], atol=1e-2)
    total += len(dets)
    with Image.open(tmp_path / "out" / f"{stem}.png") as picture:
      scale = 400 // max(image.shape[:2])  # small images are drawn enlarged
      assert picture.size == (image.shape[1] * scale, image.shape[0] * scale)
  assert 0 < total < scores.size  # the threshold kept some and dropped some


def test_default_preprocessing_and_buckets():
  converted = ml_collections.ConfigDict({"model": model_config()})
  prep = predict.preprocessing(converted)
  assert prep == (True, 800, 1333, (640, 800, 1088, 1344))
  batch = predict.prepare_batch([np.zeros((480, 640, 3), np.uint8)], prep)
  assert batch["images"].shape == (1, 800, 1088, 3) and batch["size"].tolist() == [[800, 1066]]
  assert batch["orig_size"].tolist() == [[480, 640]] and batch["mask"][0, :800, 1066:].all()
  synthetic = ml_collections.ConfigDict({"model": model_config(), "dataset": dataset_config(
      name="synthetic", augment=False, val_resize=False, bucket_sides=(64,))})
  prep = predict.preprocessing(synthetic)
  batch = predict.prepare_batch([np.zeros((70, 64, 3), np.uint8)], prep)  # no resize; beyond the largest bucket
  assert batch["images"].shape == (1, 128, 64, 3) and batch["size"].tolist() == [[70, 64]]


def _cat_and_tree_checkpoint(path, bucket_sides):
  """Saves a 250-class mask model whose class head favours cat (thing) and tree-merged (stuff)."""
  config = ml_collections.ConfigDict({
      "model": model_config(**{**TINY, "hidden_dim": 128}, num_classes=250, masks=True),  # GroupNorm(8) of d/16
      "dataset": dataset_config(name="coco_panoptic", val_size=96, max_size=160, bucket_sides=bucket_sides),
      "class_names": panoptic_names(250)})
  params = filled_params(config.model, seed=3)
  head = params["detr"]["class_embed"]
  head["bias"][[17, 184]] += 30.0
  head["kernel"][:, [17, 184]] *= 30.0
  save_model(str(path), config, params)


def test_panoptic_model_writes_segments(tmp_path, capsys):
  """A 250-class mask model whose class head favours cat (thing) and tree-merged (stuff)."""
  _cat_and_tree_checkpoint(tmp_path / "ckpt", bucket_sides=(64, 128, 192))
  image = _image(tmp_path / "scene.png", 75, 100, 4)
  code, out, err = _predict(capsys, "--checkpoint", tmp_path / "ckpt", tmp_path / "scene.png", "--out-dir",
                            tmp_path, "--threshold", 0.5)
  assert code == 0, err
  assert "panoptic segments" in out
  record = _load(tmp_path / "scene.json")
  segments = record["segments_info"]
  names = {s["name"] for s in segments}
  assert names <= {"cat", "tree-merged"} and len(names) == 2, segments
  assert sum(s["area"] for s in segments) == 75 * 100  # every pixel belongs to one segment
  assert all(s["isthing"] == (s["category_id"] == 17) for s in segments)
  assert len([s for s in segments if not s["isthing"]]) == 1  # stuff of one class is merged
  assert {d["name"] for d in record["detections"]} <= {"cat", "tree-merged"} and record["detections"]
  with Image.open(tmp_path / "scene_panoptic.png") as picture:
    pixels = np.asarray(picture.convert("RGB"))
  assert pixels.shape == (75 * 4, 100 * 4, 3)
  assert not np.array_equal(pixels[::4, ::4], image)  # segment colours blended in


def test_masks_of_a_padded_input_line_up_with_the_image():
  """A 96x128 image padded to 128x128 (masks 32x32 at stride 4): query 0 owns the image's top half."""
  config = ml_collections.ConfigDict({"model": model_config(num_classes=250, masks=True)})
  logits = np.zeros((1, 2, 251), np.float32)
  logits[0, 0, 17] = logits[0, 1, 184] = 20.0
  masks = np.full((1, 2, 32, 32), -10.0, np.float32)
  masks[0, 0, :12], masks[0, 1, 12:] = 10.0, 10.0  # rows 0..47 of the 96 image rows: its top half
  out = {"pred_logits": logits, "pred_masks": masks, "pred_boxes": np.zeros((1, 2, 4), np.float32),
         "scores": np.ones((1, 2), np.float32), "labels": np.array([[17, 184]]), "boxes": np.zeros((1, 2, 4))}
  result = predict.image_results(out, 0, (96, 128), (75, 100), 0.5, config)
  areas = {s["category_id"]: s["area"] for s in result["panoptic"]["segments_info"]}
  assert abs(areas[17] / (75 * 100) - 0.5) < 0.02 and areas[17] + areas[184] == 75 * 100
  assert abs(result["masks"][0].mean() - 0.5) < 0.02 and abs(result["masks"][1].mean() - 0.5) < 0.02


def test_coco_category_tables():
  assert len(DETECTION_NAMES) == 91 and DETECTION_NAMES.count("N/A") == 11
  assert len(PANOPTIC_CATEGORIES) == 133 and sum(thing for _, _, thing in PANOPTIC_CATEGORIES) == 80
  things = {i: name for i, name, thing in PANOPTIC_CATEGORIES if thing}
  assert things == {i: name for i, name in enumerate(DETECTION_NAMES) if name != "N/A"}
  assert all(i > 90 for i, _, thing in PANOPTIC_CATEGORIES if not thing)
  names = panoptic_names()
  assert len(names) == 250 and names[1] == "person" and names[200] == "rug-merged" and names[12] == "N/A"


@pytest.mark.parametrize("case", ["missing checkpoint", "out-dir is a file", "bad class_names"])
def test_fatal_errors_are_one_line_and_exit_1(case, tmp_path, capsys):
  config = ml_collections.ConfigDict({"model": model_config(**TINY)})
  if case == "bad class_names":
    config.class_names = ["a", "b"]
  ckpt = tmp_path / "ckpt"
  if case != "missing checkpoint":
    save_model(str(ckpt), config, filled_params(config.model))
  _image(tmp_path / "x.png", 8, 8, 0)
  (tmp_path / "out").write_text("a file" if case == "out-dir is a file" else "")
  out_dir = tmp_path / ("out" if case == "out-dir is a file" else "predictions")
  code, out, err = _predict(capsys, "--checkpoint", ckpt, tmp_path / "x.png", "--out-dir", out_dir)
  assert code == 1 and out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  expected = {"missing checkpoint": f"{ckpt}: not a detr-jax model checkpoint",
              "out-dir is a file": f"--out-dir {out_dir}: exists and is not a directory",
              "bad class_names": f"{ckpt}: config class_names has 2 names for 91 classes"}
  assert expected[case] in lines[0], lines[0]


def _save(array_or_image, path, **kwargs):
  image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  image.save(path, **kwargs)


def _rgb(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif(orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  return exif


def test_every_file_on_its_own_in_a_mixed_folder(tmp_path, capsys):
  """Broken files (and a second file with the stem `good`) give one error line each, every image mode is
  read as RGB, EXIF orientation is honoured, the checkpoint's class names label the detections; batches
  of 4 with the failures in between."""
  names = [f"part-{i}" for i in range(91)]  # a custom dataset with 91 classes: not the COCO names
  config = ml_collections.ConfigDict({"model": model_config(**TINY, num_classes=91), "class_names": names,
                                      "dataset": dataset_config(name="coco_custom", val_size=48, max_size=64,
                                                                bucket_sides=(48, 64))})
  save_model(str(tmp_path / "ckpt"), config, filled_params(config.model, seed=5))
  d = tmp_path / "in"
  d.mkdir()
  (d / "a_directory.jpg").mkdir()
  (d / "empty.jpg").write_bytes(b"")
  (d / "text.jpg").write_text("not an image\n")
  _save(_rgb(40, 30, 0), d / "good.jpg")
  (d / "truncated.jpg").write_bytes((d / "good.jpg").read_bytes()[:-200])
  deep = (np.random.default_rng(1).integers(0, 65536, (40, 30))).astype(np.uint16)
  _save(deep, d / "deep16.png")
  _save(np.concatenate([_rgb(40, 30, 2), np.full((40, 30, 1), 100, np.uint8)], -1), d / "rgba.png")
  _save(Image.fromarray(_rgb(40, 30, 3)).quantize(16), d / "palette.png", transparency=0)
  _save(_rgb(40, 30, 4)[..., 0], d / "grey.png")
  _save(Image.fromarray(_rgb(40, 30, 5)).convert("CMYK"), d / "cmyk.jpg")
  _save(_rgb(30, 40, 6), d / "rotated.jpg", exif=_exif(6).tobytes())  # stored 30x40, shown upright 40x30
  with Image.open(d / "rotated.jpg") as stored:
    _save(np.rot90(np.asarray(stored), k=-1), d / "upright.png")  # orientation 6: turn 90 degrees clockwise
  broken = {"a_directory.jpg": "Is a directory", "empty.jpg": "empty file", "text.jpg": "not an image file",
            "truncated.jpg": "broken image data (image file is truncated", "missing.jpg": "No such file or directory",
            "good.png": f"{d / 'good.jpg'} already writes good.png/.json; rename one"}
  good = ["cmyk", "deep16", "good", "grey", "palette", "rgba", "rotated", "upright"]
  (tmp_path / "other").mkdir()
  _save(_rgb(40, 30, 7), tmp_path / "other" / "good.png")  # its outputs would overwrite good.jpg's
  paths = sorted(d.iterdir()) + [d / "missing.jpg", tmp_path / "other" / "good.png"]
  code, out, err = _predict(capsys, "--checkpoint", tmp_path / "ckpt", *paths, "--out-dir", tmp_path / "out",
                            "--threshold", 0, "--batch-size", 4)
  assert code == 1
  errors = err.strip().splitlines()
  assert len(errors) == len(broken), err
  for line, path in zip(errors, [p for p in paths if p.name in broken]):  # in argument order
    assert line.startswith(f"error: {path}: {broken[path.name]}"), line
  assert len(out.strip().splitlines()) == len(good)
  records = {stem: _load(tmp_path / "out" / f"{stem}.json") for stem in good}
  assert sorted(p.stem for p in (tmp_path / "out").glob("*.json")) == good
  assert records["good"]["image"] == str(d / "good.jpg")
  for record in records.values():
    assert record["size"] == [40, 30] and len(record["detections"]) == TINY["num_queries"]  # threshold 0
    assert all(det["name"] == names[det["label"]] for det in record["detections"])
  # EXIF orientation: the same results as the image stored upright
  rotated, upright = records["rotated"]["detections"], records["upright"]["detections"]
  assert [det["label"] for det in rotated] == [det["label"] for det in upright]
  np.testing.assert_allclose([det["box_xyxy"] for det in rotated], [det["box_xyxy"] for det in upright], atol=1e-3)
  np.testing.assert_allclose([det["score"] for det in rotated], [det["score"] for det in upright], atol=1e-5)
  # 16-bit: the picture is the 8-bit greyscale (65535 -> 255) with the detections drawn
  grey = np.round(deep / 257).astype(np.uint8)
  dets = records["deep16"]["detections"]
  expected = draw_detections(np.repeat(grey[..., None], 3, -1), [det["box_xyxy"] for det in dets],
                             [det["label"] for det in dets], [det["score"] for det in dets], names, 0,
                             scale=predict.display_scale((40, 30)))
  with Image.open(tmp_path / "out" / "deep16.png") as picture:
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(expected))


def test_image_modes_become_rgb(tmp_path):
  """16-bit greyscale scaled (not white), transparency composited on white, palette, L, 1, CMYK."""
  deep = np.array([[0, 257, 32896], [40000, 65280, 65535]], np.uint16)
  expected_deep = np.repeat(np.array([[0, 1, 128], [156, 254, 255]], np.uint8)[..., None], 3, -1)
  _save(deep, tmp_path / "deep.png")
  with Image.open(tmp_path / "deep.png") as img:
    assert img.mode == "I;16"
  np.testing.assert_array_equal(predict.load_image(str(tmp_path / "deep.png")), expected_deep)
  for array in (deep.astype(">u2"), deep.astype(np.int32)):  # I;16B and I
    np.testing.assert_array_equal(to_rgb(Image.fromarray(array)), expected_deep)
  rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], np.uint8)
  _save(rgba, tmp_path / "rgba.png")
  alpha = rgba[..., 3:] / 255
  composited = rgba[..., :3] * alpha + 255 * (1 - alpha)
  np.testing.assert_allclose(predict.load_image(str(tmp_path / "rgba.png")), composited, atol=1)
  la = Image.fromarray(rgba[..., [0, 3]], "LA")
  np.testing.assert_allclose(to_rgb(la)[..., 1], (rgba[..., 0] * alpha[..., 0] + 255 * (1 - alpha[..., 0])),
                             atol=1)
  palette = Image.new("P", (2, 1))
  palette.putpalette([10, 20, 30, 40, 50, 60])
  palette.putdata([0, 1])
  assert to_rgb(palette).tolist() == [[[10, 20, 30], [40, 50, 60]]]
  _save(palette, tmp_path / "transparent.png", transparency=1)
  assert predict.load_image(str(tmp_path / "transparent.png")).tolist() == [[[10, 20, 30], [255, 255, 255]]]
  assert to_rgb(Image.fromarray(np.array([[7, 250]], np.uint8))).tolist() == [[[7] * 3, [250] * 3]]
  assert to_rgb(Image.fromarray(np.array([[True, False]]))).tolist() == [[[255] * 3, [0] * 3]]
  _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
  np.testing.assert_allclose(predict.load_image(str(tmp_path / "cmyk.jpg")), np.full((8, 8, 3), [255, 0, 0]), atol=3)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_turns_the_image_upright(orientation, tmp_path):
  stored = _rgb(6, 10, 0)
  _save(stored, tmp_path / "photo.png", exif=_exif(orientation).tobytes())  # lossless: exact pixels
  upright = {6: np.rot90(stored, k=-1), 8: np.rot90(stored, k=1), 3: np.rot90(stored, k=2)}[orientation]
  np.testing.assert_array_equal(predict.load_image(str(tmp_path / "photo.png")), upright)


def test_unreadable_file_is_a_user_error(tmp_path, monkeypatch):
  """chmod 000 does not stop root (tests may run as root): the open is made to fail as it would."""
  path = str(tmp_path / "secret.png")
  _image(path, 4, 4, 0)

  def denied(fp, *args, **kwargs):
    raise PermissionError(13, "Permission denied", fp)

  monkeypatch.setattr(predict.Image, "open", denied)
  with pytest.raises(UserError, match=f"^{path}: Permission denied$"):
    predict.load_image(path)


def test_class_names_from_the_checkpoint():
  def names(num_classes=91, **fields):
    return predict.class_names(ml_collections.ConfigDict({"model": model_config(num_classes=num_classes), **fields}),
                               "ckpt")
  custom = [f"c{i}" for i in range(91)]
  assert names(class_names=custom, dataset=dataset_config(name="coco_custom")) == tuple(custom)
  assert names() == DETECTION_NAMES  # converted official (no dataset)
  assert names(250) == panoptic_names(250)
  assert names(5) == ("0", "1", "2", "3", "4")  # converted with a re-initialised class head
  assert names(dataset=dataset_config(name="coco_custom")) == tuple(str(i) for i in range(91))  # never COCO's
  assert names(len(CLASS_NAMES), dataset=dataset_config(name="synthetic")) == CLASS_NAMES
  with pytest.raises(UserError, match="ckpt: config class_names has 3 names for 91 classes"):
    names(class_names=["a", "b", "c"])


def test_json_leaves_out_detections_with_non_finite_numbers(tmp_path):
  """A NaN / inf score or box coordinate would be written as NaN / Infinity, which is not JSON: such a detection
  is left out; the file parses with a strict parser (no NaN constants) and keeps the finite detections."""
  image = np.full((20, 30, 3), 128, np.uint8)
  result = {"scores": np.array([0.9, np.nan, 0.8, 0.75, np.inf], np.float32),
            "labels": np.array([1, 2, 3, 4, 5], np.int32),
            "boxes": np.array([[1, 2, 10, 12], [0, 0, 5, 5], [np.nan, 0, 5, 5], [3, 4, 20, np.inf], [0, 0, 1, 1]],
                              np.float32)}
  names = [str(i) for i in range(6)]
  line = predict.write_outputs("photo.jpg", image, result, names, str(tmp_path), threshold=0.7)
  assert line == f"photo.jpg: 1 detections -> {tmp_path / 'photo'}.png"

  def no_constants(name):
    raise AssertionError(f"{name} in the JSON")
  record = json.loads((tmp_path / "photo.json").read_text(), parse_constant=no_constants)
  assert record["detections"] == [{"label": 1, "name": "1", "score": pytest.approx(0.9), "box_xyxy": [1, 2, 10, 12]}]


def test_masks_of_the_likeliest_queries_give_the_full_models_results(tmp_path, monkeypatch):
  """--mask-queries K: masks for K queries, spread back to all; a batch needing more runs again with all."""
  _cat_and_tree_checkpoint(tmp_path / "ckpt", bucket_sides=(128,))
  _image(tmp_path / "scene.png", 75, 100, 4)
  calls = []
  make_forward = predict.make_forward

  def recording(model, *args):  # which model each forward call runs: its mask_queries
    forward = make_forward(model, *args)
    return lambda *inputs: calls.append(model.mask_queries) or forward(*inputs)

  monkeypatch.setattr(predict, "make_forward", recording)
  records = {}
  for k in (0, 1, 7):
    calls.clear()
    assert predict.predict(str(tmp_path / "ckpt"), [str(tmp_path / "scene.png")], str(tmp_path / f"k{k}"), 0.5, 1,
                           mask_queries=k) == 0
    records[k] = (_load(tmp_path / f"k{k}" / "scene.json"), calls[:])
  full = records[0][0]
  assert 1 < len(full["detections"]) < 7 and len(full["segments_info"]) >= 2
  assert [calls for _, calls in records.values()] == [[0], [1, 0], [7]]  # K = 1 is too few: run again with all
  assert records[1][0] == full and records[7][0] == full


def test_ctrl_c_keeps_the_finished_images_and_says_where(tmp_path, capsys, monkeypatch):
  """Ctrl-C while the second image's JSON is written: exit 130, one line, the first image's outputs
  whole, no half-written JSON."""
  _cat_and_tree_checkpoint(tmp_path / "ckpt", bucket_sides=(128,))
  paths = [tmp_path / "first.png", tmp_path / "second.png"]
  for seed, path in enumerate(paths):
    _image(path, 75, 100, seed)
  real_dump = predict.json.dump

  def dump(record, f, **kwargs):
    if isinstance(record, dict) and str(record.get("image")).endswith("second.png"):
      f.write('{"image": ')
      raise KeyboardInterrupt
    real_dump(record, f, **kwargs)
  monkeypatch.setattr(predict.json, "dump", dump)
  out_dir = tmp_path / "out"
  code, out, err = _predict(capsys, "--checkpoint", tmp_path / "ckpt", *paths, "--out-dir", out_dir)
  assert code == 130
  assert err == f"interrupted: the images listed above have their outputs in {out_dir}\n"
  assert out.splitlines()[-1].startswith(f"{paths[0]}: ")
  assert _load(out_dir / "first.json")["image"] == str(paths[0])
  files = set(os.listdir(out_dir))
  assert {"first.json", "first.png"} <= files and "second.json" not in files
  assert not [name for name in files if name.endswith(".tmp")]
