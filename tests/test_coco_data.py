"""COCO-format sources and the official transforms, on real JPEG/PNG files and json written here.

Expected values are computed in the tests from the rules in docs/parity.md §10, not by the code
under test: sizes from the documented examples, pixels by PIL, boxes in float32.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detr_jax.data import fake_coco, transforms
from detr_jax.data.batching import normalize_image
from detr_jax.data.coco import CocoDetection, CocoPanoptic
from detr_jax.data.pipeline import bucket_shape
from detr_jax.panoptic_png import id2rgb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _write_image(path, w, h, seed=0):
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:h, 0:w]
  image = np.stack([xs * 255 // max(w - 1, 1), ys * 255 // max(h - 1, 1), (xs + ys) % 256], -1)
  image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
  Image.fromarray(image).save(path)
  return np.asarray(Image.open(path).convert("RGB"))


def _instances(tmp_path, images, annotations, categories=None):
  (tmp_path / "img").mkdir(exist_ok=True)
  path = tmp_path / "instances.json"
  categories = categories or [{"id": i, "name": f"c{i}"} for i in (1, 2, 7)]
  path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
  return str(path)


def _ann(id, image_id, bbox, category_id=1, **extra):
  return {"id": id, "image_id": image_id, "bbox": bbox, "category_id": category_id,
          "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


# ---- resize rule (docs/parity.md §10.2 examples, written as w x h) ----

@pytest.mark.parametrize("wh, expected_wh", [
    ((451, 300), (1202, 800)),    # long side truncated (1202.67)
    ((740, 370), (1332, 666)),    # round(666.5) = 666 (ties to even), then 1332 truncated
    ((1536, 600), (1333, 521)),   # short side from max_size: round(520.3) = 521
    ((640, 480), (1066, 800)),
    ((480, 640), (800, 1066)),    # portrait
    ((1000, 800), (1000, 800)),   # short side already 800: unchanged
])
def test_val_resize_sizes_follow_the_official_rule(wh, expected_wh):
  (w, h), (ew, eh) = wh, expected_wh
  assert transforms.resized_shape((h, w), 800, 1333) == (eh, ew)


def test_val_transform_matches_the_official_pixels_boxes_and_areas(tmp_path):
  """Source + val plan vs PIL bilinear / float32 box arithmetic done here, on a PNG and a JPEG."""
  sizes = {1: (451, 300, "png"), 2: (740, 370, "jpg"), 3: (1000, 800, "jpg")}
  images, anns, pixels = [], [], {}
  for image_id, (w, h, ext) in sizes.items():
    name = f"{image_id}.{ext}"
    (tmp_path / "img").mkdir(exist_ok=True)
    pixels[image_id] = _write_image(tmp_path / "img" / name, w, h, seed=image_id)
    images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    anns += [_ann(10 * image_id, image_id, [10.3, 20.7, 100.1, 50.9], 7, area=3001.7),
             _ann(10 * image_id + 1, image_id, [0.0, 1.0, 33.0, 44.0], 2)]
  ds = CocoDetection(str(tmp_path / "img"), _instances(tmp_path, images, anns))
  for i, (image_id, (w, h, _)) in enumerate(sorted(sizes.items())):
    e = transforms.apply_plan(ds[i], transforms.plan_val(ds.image_hw(i)))
    # expected, from the rules: short side 800 (max 1333), long side truncated, PIL bilinear
    short = 800 if max(w, h) / min(w, h) * 800 <= 1333 else int(round(1333 * min(w, h) / max(w, h)))
    nw, nh = (short, int(short * h / w)) if w < h else (int(short * w / h), short)
    expected_image = pixels[image_id] if (nw, nh) == (w, h) else \
        np.asarray(Image.fromarray(pixels[image_id]).resize((nw, nh), Image.BILINEAR))
    np.testing.assert_array_equal(e["image"], expected_image)
    np.testing.assert_array_equal(normalize_image(e["image"]),
                                  (expected_image.astype(np.float32) / np.float32(255) - MEAN) / STD)
    assert e["size"].tolist() == [nh, nw] and e["orig_size"].tolist() == [h, w]
    rw, rh = np.float32(nw / w), np.float32(nh / h)
    xyxy = np.array([[10.3, 20.7, 10.3 + np.float32(100.1), 20.7 + np.float32(50.9)], [0, 1, 33, 45]], np.float32)
    np.testing.assert_array_equal(e["boxes"], xyxy * np.array([rw, rh, rw, rh], np.float32))
    np.testing.assert_array_equal(e["area"], np.array([3001.7, 33 * 44], np.float32) * np.float32(nw / w * nh / h))
    assert e["labels"].tolist() == [7, 2] and e["image_id"] == image_id


def test_detection_source_drops_crowd_and_degenerate_keeps_empty_images_and_order(tmp_path):
  (tmp_path / "img").mkdir()
  for image_id in (5, 3):
    _write_image(tmp_path / "img" / f"{image_id}.png", 64, 48)
  images = [{"id": 5, "file_name": "5.png", "height": 48, "width": 64},
            {"id": 3, "file_name": "3.png", "height": 48, "width": 64}]
  anns = [_ann(9, 5, [50, 10, 30, 20], 2),                 # clamped to x1 = 64
          _ann(2, 5, [1, 2, 3, 4], 1, iscrowd=1),          # crowd: dropped
          _ann(4, 5, [70, 10, 5, 5], 7),                   # outside the image: empty after clamping
          _ann(3, 5, [5, 6, 0, 10], 1),                    # zero width
          _ann(1, 5, [4, 4, 8, 8], 7)]                     # kept, after id 9 (json order)
  ds = CocoDetection(str(tmp_path / "img"), _instances(tmp_path, images, anns))
  assert len(ds) == 2 and ds.num_classes == 8 and ds.class_names[7] == "c7" and ds.class_names[4] == "4"
  empty, e = ds[0], ds[1]  # sorted by image id: 3 (no annotations), then 5
  assert empty["image_id"] == 3 and empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
  assert e["labels"].tolist() == [2, 7] and e["iscrowd"].tolist() == [0, 0]
  np.testing.assert_array_equal(e["boxes"], [[50, 10, 64, 30], [4, 4, 12, 12]])
  np.testing.assert_array_equal(e["area"], [600, 64])


def test_masks_from_polygons_and_rle_and_clear_errors(tmp_path):
  (tmp_path / "img").mkdir()
  _write_image(tmp_path / "img" / "1.png", 20, 10)
  from pycocotools import mask as coco_mask
  square = np.zeros((10, 20), np.uint8)
  square[2:6, 3:9] = 1
  rle = coco_mask.encode(np.asfortranarray(square))
  anns = [_ann(1, 1, [3, 2, 6, 4], segmentation=[[3, 2, 9, 2, 9, 6, 3, 6]]),
          _ann(2, 1, [3, 2, 6, 4], segmentation={"size": [10, 20], "counts": rle["counts"].decode()}),
          _ann(3, 1, [3, 2, 6, 4], segmentation={"size": [10, 20], "counts": _counts(square)})]
  images = [{"id": 1, "file_name": "1.png", "height": 10, "width": 20}]
  ds = CocoDetection(str(tmp_path / "img"), _instances(tmp_path, images, anns), masks=True)
  masks = ds[0]["masks"]
  assert masks.shape == (3, 10, 20) and masks.dtype == bool
  for m in masks[1:]:
    np.testing.assert_array_equal(m, square.astype(bool))
  assert masks[0][2:6, 3:9].all() and masks[0].sum() <= 7 * 5  # polygon rasterisation covers the square
  anns[0]["segmentation"] = [[3, 2, 9, 2]]
  ds = CocoDetection(str(tmp_path / "img"), _instances(tmp_path, images, anns), masks=True)
  with pytest.raises(ValueError, match=r"annotation id 1: polygon with 4 numbers"):
    ds[0]


def _counts(mask):
  """Uncompressed RLE counts (column-major runs, starting with zeros)."""
  flat = mask.T.reshape(-1)
  changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
  return np.diff(np.concatenate([[0], changes])).tolist()


def test_custom_dataset_class_range_and_json_errors(tmp_path):
  (tmp_path / "img").mkdir()
  _write_image(tmp_path / "img" / "1.png", 20, 10)
  images = [{"id": 1, "file_name": "1.png", "height": 10, "width": 20}]
  ann_file = _instances(tmp_path, images, [_ann(1, 1, [1, 1, 5, 5], 7)])
  assert CocoDetection(str(tmp_path / "img"), ann_file).num_classes == 8
  with pytest.raises(ValueError, match=r"annotation id 1: category_id 7 is out of range for num_classes=5"):
    CocoDetection(str(tmp_path / "img"), ann_file, num_classes=5)
  bad = _instances(tmp_path, images, [_ann(1, 1, [1, 1, 5, 5], 4)])
  with pytest.raises(ValueError, match=r"category_id 4 is not in 'categories'"):
    CocoDetection(str(tmp_path / "img"), bad)
  wrong_size = _instances(tmp_path, [{"id": 1, "file_name": "1.png", "height": 11, "width": 20}], [])
  with pytest.raises(ValueError, match=r"1.png: image is 10x20 \(h x w\) but the annotation file says 11x20"):
    CocoDetection(str(tmp_path / "img"), wrong_size)[0]


def test_panoptic_masks_boxes_crowd_and_ids(tmp_path):
  h, w = 6, 8
  ids = np.zeros((h, w), np.int64)
  ids[:, :] = 300          # stuff, full width
  ids[1:4, 2] = 70000      # 1-pixel-wide thing, id needs all three channels
  ids[4:, 5:7] = 11        # crowd thing
  ids[0, 0] = 0            # void
  (tmp_path / "img").mkdir()
  (tmp_path / "png").mkdir()
  _write_image(tmp_path / "img" / "000000000042.jpg", w, h)
  Image.fromarray(id2rgb(ids)).save(tmp_path / "png" / "000000000042.png")
  segments = [{"id": 70000, "category_id": 3, "iscrowd": 0, "area": 3, "bbox": [2, 1, 1, 3]},
              {"id": 300, "category_id": 184, "iscrowd": 0, "area": 40, "bbox": [0, 0, 8, 6]},
              {"id": 11, "category_id": 1, "iscrowd": 1, "area": 4, "bbox": [5, 4, 2, 2]}]
  data = {"images": [{"id": 42, "file_name": "000000000042.jpg", "height": h, "width": w}],
          "annotations": [{"image_id": 42, "file_name": "000000000042.png", "segments_info": segments}],
          "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
                         {"id": 184, "name": "tree", "isthing": 0}]}
  (tmp_path / "pan.json").write_text(json.dumps(data))
  ds = CocoPanoptic(str(tmp_path / "img"), str(tmp_path / "png"), str(tmp_path / "pan.json"))
  e = ds[0]
  assert e["image_id"] == 42 and e["labels"].tolist() == [3, 184, 1] and e["iscrowd"].tolist() == [0, 0, 1]
  np.testing.assert_array_equal(e["masks"][0], ids == 70000)
  np.testing.assert_array_equal(e["masks"][1], ids == 300)
  # inclusive max pixel: the 1-pixel-wide segment has width 0; the full-width one ends at w - 1
  np.testing.assert_array_equal(e["boxes"], [[2, 1, 2, 3], [0, 0, 7, 5], [5, 4, 6, 5]])
  assert ds.num_classes == 185 and not ds.is_thing[184]
  del segments[0]["area"]
  (tmp_path / "pan.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"pan.json: image_id 42: segment: missing key\(s\) \['area'\]"):
    CocoPanoptic(str(tmp_path / "img"), str(tmp_path / "png"), str(tmp_path / "pan.json"))
  segments[0]["area"] = 3
  segments.append({"id": 99, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]})
  (tmp_path / "pan.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"segment id 99 is listed .* but has no pixels"):
    CocoPanoptic(str(tmp_path / "img"), str(tmp_path / "png"), str(tmp_path / "pan.json"))[0]


# ---- train transforms ----

def test_flip_crop_and_resize_keep_boxes_on_their_masks():
  """Every augmented box stays the tight box of its augmented mask (within resize rounding)."""
  rng = np.random.default_rng(0)
  h, w = 300, 400
  masks = np.zeros((3, h, w), bool)
  masks[0, 10:60, 20:90] = masks[1, 200:290, 300:390] = masks[2, 120:180, 5:395] = True
  boxes = np.array([[20, 10, 90, 60], [300, 200, 390, 290], [5, 120, 395, 180]], np.float32)
  example = {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "boxes": boxes,
             "labels": np.array([1, 2, 3], np.int32), "area": np.array([1, 2, 3], np.float32),
             "iscrowd": np.zeros(3, np.int32), "masks": masks, "image_id": 1, "orig_size": np.array([h, w])}
  branches = set()
  for seed in range(40):
    plan = transforms.plan_train(transforms.example_rng(7, seed), (h, w))
    branches.add(tuple(op for op, _ in plan))
    out = transforms.apply_plan(example, plan)
    assert tuple(out["size"]) == out["image"].shape[:2] == transforms.planned_size(plan, (h, w))
    assert 480 <= min(out["size"]) and max(out["size"]) <= 1333
    assert len(out["labels"]) == len(out["boxes"]) == len(out["masks"]) == len(out["area"])
    for box, mask in zip(out["boxes"], out["masks"]):
      ys, xs = np.nonzero(mask)
      tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      np.testing.assert_allclose(box, tight, atol=2.5)
  assert len(branches) == 4  # flip or not x multi-scale or crop branch


def test_crop_removes_objects_outside_and_flip_mirrors():
  boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 70]], np.float32)
  e = {"image": np.zeros((100, 100, 3), np.uint8), "boxes": boxes, "labels": np.array([1, 2]),
       "area": np.array([100, 200], np.float32), "iscrowd": np.zeros(2, np.int32), "image_id": 0,
       "orig_size": np.array([100, 100])}
  out = transforms.apply_plan(e, (("crop", (40, 45, 30, 20)),))  # top 40, left 45, h 30, w 20
  assert out["labels"].tolist() == [2] and out["size"].tolist() == [30, 20]
  np.testing.assert_array_equal(out["boxes"], [[5, 10, 15, 30]])
  np.testing.assert_array_equal(out["area"], [200])
  out = transforms.apply_plan(e, (("flip", None),))
  np.testing.assert_array_equal(out["boxes"], [[90, 0, 100, 10], [40, 50, 50, 70]])


def test_buckets():
  assert bucket_shape((800, 1066), (640, 800, 1088, 1344)) == (800, 1088)
  assert bucket_shape((801, 500), (640, 800, 1088, 1344)) == (1088, 640)
  with pytest.raises(ValueError, match="exceeds the largest bucket side 1344"):
    bucket_shape((1400, 10), (640, 800, 1088, 1344))


# ---- detr_jax.data.inspect ----

def test_inspect_writes_pictures_and_the_transformed_examples(tmp_path):
  fake_coco.write_split(str(tmp_path / "coco"), "val", 3, image_size=(120, 90))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "detr_jax.data.inspect", "--config", "configs/coco_custom.py",
         f"--config.dataset.val_images={tmp_path}/coco/val2017",
         f"--config.dataset.val_json={tmp_path}/coco/annotations/instances_val2017.json",
         "--config.dataset.masks=True", "--split", "val", "--out", str(out), "--limit", "2"]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in out.glob("*.png")) == ["00000_1000.png", "00001_1007.png"]
  data = np.load(out / "examples.npz")
  ds = CocoDetection(f"{tmp_path}/coco/val2017", f"{tmp_path}/coco/annotations/instances_val2017.json", masks=True)
  for i in range(2):
    raw = ds[i]
    h, w = raw["orig_size"]
    nh, nw = (int(800 * h / w), 800) if w < h else (800, int(800 * w / h))
    expected = np.asarray(Image.fromarray(raw["image"]).resize((nw, nh), Image.BILINEAR))
    np.testing.assert_array_equal(data[f"image_{i}"], (expected.astype(np.float32) / np.float32(255) - MEAN) / STD)
    assert data[f"size_{i}"].tolist() == [nh, nw] and data[f"orig_size_{i}"].tolist() == [h, w]
    assert data[f"image_id_{i}"] == raw["image_id"] and data[f"labels_{i}"].tolist() == raw["labels"].tolist()
    x0, y0, x1, y1 = (raw["boxes"] * np.array([nw / w, nh / h] * 2, np.float32)).T
    np.testing.assert_allclose(data[f"boxes_{i}"], np.stack([(x0 + x1) / 2 / nw, (y0 + y1) / 2 / nh,
                                                            (x1 - x0) / nw, (y1 - y0) / nh], -1), atol=1e-6)
    assert data[f"masks_{i}"].shape == (len(raw["labels"]), nh, nw)
  bad_cmd = [a if "val_json" not in a else "--config.dataset.val_json=/nonexistent.json" for a in cmd]
  bad = subprocess.run(bad_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "error: /nonexistent.json (dataset.val_json) does not exist" in bad.stderr
