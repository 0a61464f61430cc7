"""Datasets are checked up front: every problem of a split listed in one bounded error, before training.

Small COCO-format folders written by `detr_jax.data.fake_coco`, then damaged here file by file.
"""
import json
import os
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from detr_jax.config import dataset_config
from detr_jax.data import build_dataset, fake_coco, resolve_num_classes, validate_datasets
from detr_jax.data.coco import CocoDetection, CocoPanoptic
from detr_jax.data.validation import DatasetError, DatasetNotFoundError, image_problem
from detr_jax.errors import UserError

H, W = 24, 32  # fake_coco image size


def _coco(tmp_path, n):
  """(image folder, instances json, panoptic json, PNG folder, images sorted by id) of a fake val split."""
  root = tmp_path / "coco"
  fake_coco.write_split(str(root), "val", n, image_size=(H, W))
  ann_file = root / "annotations" / "instances_val2017.json"
  images = sorted(json.loads(ann_file.read_text())["images"], key=lambda img: img["id"])
  return (root / "val2017", ann_file, root / "panoptic" / "annotations" / "panoptic_val2017.json",
          root / "panoptic" / "panoptic_val2017", images)


def _edit_json(path, edit):
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))


def _config(**dataset):
  return ml_collections.ConfigDict({"model": {"masks": False, "num_classes": -1},
                                    "dataset": dataset_config(**dataset)})


def test_all_problems_of_a_split_in_one_error(tmp_path):
  image_dir, ann_file, _, _, images = _coco(tmp_path, 6)
  paths = [image_dir / img["file_name"] for img in images]
  os.remove(paths[0])
  data = paths[1].read_bytes()
  paths[1].write_bytes(data[:(data.index(b"\xff\xda") + len(data)) // 2])  # cut in the scan, header intact
  paths[2].write_bytes(b"")
  paths[3].write_text("this is not a JPEG\n")
  Image.fromarray(np.zeros((H - 4, W, 3), np.uint8)).save(paths[4], quality=90)
  _edit_json(ann_file, lambda d: d["annotations"].extend([
      {"id": 900, "image_id": images[5]["id"], "category_id": 1, "bbox": [1, 2, 3]},
      {"id": 901, "image_id": 424242, "category_id": 1, "bbox": [0, 0, 4, 4]}]))
  with pytest.raises(UserError) as error:
    CocoDetection(str(image_dir), str(ann_file), name="custom val")
  assert isinstance(error.value, DatasetError) and isinstance(error.value, ValueError)
  lines = str(error.value).splitlines()
  assert lines[0] == "7 problems in dataset custom val:"
  expected = [(ann_file, "annotation id 900: bbox must be [x, y, width, height], got [1, 2, 3]"),
              (ann_file, "annotation id 901: image_id 424242 is not in 'images'"),
              (paths[0], "image not found"),
              (paths[1], "cannot read image (image file is truncated"),
              (paths[2], "empty file"),
              (paths[3], "not an image (PIL cannot identify its format)"),
              (paths[4], f"image is {H - 4}x{W} (h x w) but the annotation file says {H}x{W}")]
  assert len(lines) == 1 + len(expected)
  for line, (path, what) in zip(lines[1:], expected):
    assert line.startswith(f"  {path}: {what}"), line
  assert str(paths[5]) not in str(error.value)


def test_wrong_json_entries_are_listed_together(tmp_path):
  image_dir, ann_file, _, _, images = _coco(tmp_path, 2)
  def edit(data):
    del data["images"][0]["file_name"]
    data["images"].append(dict(data["images"][1]))       # duplicate id
    data["images"].append({"id": 5, "file_name": "5.jpg", "height": 0, "width": W})
    data["categories"].append({"name": "no id"})
    data["annotations"].append({"id": 77, "image_id": images[1]["id"], "category_id": 2, "bbox": [0, 0, 1, 1]})
    data["annotations"].append({"id": 78, "image_id": [1], "category_id": 1, "bbox": [0, 0, 1, 1]})
  _edit_json(ann_file, edit)
  with pytest.raises(DatasetError) as error:
    CocoDetection(str(image_dir), str(ann_file))
  lines = str(error.value).splitlines()
  assert lines[0] == f"6 problems in dataset {ann_file}:"
  assert lines[1].startswith(f"  {ann_file}: image: missing key(s) ['file_name']")
  assert lines[2] == f"  {ann_file}: image id {images[1]['id']} appears more than once"
  assert lines[3] == f"  {ann_file}: image id 5: height and width must be positive, got 0 and {W}"
  assert lines[4].startswith(f"  {ann_file}: category: missing key(s) ['id']")
  assert lines[5] == f"  {ann_file}: annotation id 77: category_id 2 is not in 'categories'"
  assert lines[6].startswith(f"  {ann_file}: annotation: image_id must be an integer in {{\"id\": 78")


def test_the_list_is_capped(tmp_path):
  """30 missing files: 20 lines and the count of the rest, from build_dataset(...).validate()."""
  (tmp_path / "img").mkdir()
  images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(30)]
  ann_file = tmp_path / "val.json"
  ann_file.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
  config = _config(name="coco_custom", val_images=str(tmp_path / "img"), val_json=str(ann_file))
  ds = build_dataset(config, "val")  # the json is fine: building succeeds
  with pytest.raises(DatasetError) as error:
    ds.validate()
  lines = str(error.value).splitlines()
  assert lines[0] == "30 problems in dataset coco_custom val:"
  assert lines[1:21] == [f"  {tmp_path}/img/{i}.jpg: image not found" for i in range(20)]
  assert lines[21:] == ["  ... and 10 more"]


def test_train_and_val_reported_together(tmp_path):
  image_dir, ann_file, _, _, images = _coco(tmp_path, 2)
  fake_coco.write_split(str(tmp_path / "coco"), "train", 1, image_size=(H, W))
  config = _config(name="coco", coco_path=str(tmp_path / "coco"))
  config.model.num_classes = 91
  train, val = build_dataset(config, "train"), build_dataset(config, "val")
  assert validate_datasets(train, val) is None
  os.remove(image_dir / images[1]["file_name"])
  train_image = tmp_path / "coco" / "train2017" / images[0]["file_name"]  # the same ids in both splits
  train_image.write_bytes(b"")
  with pytest.raises(DatasetError) as error:
    validate_datasets(train, val)
  assert str(error.value).splitlines() == [
      "1 problem in dataset coco train:", f"  {train_image}: empty file",
      "1 problem in dataset coco val:", f"  {image_dir / images[1]['file_name']}: image not found"]


def test_intact_files_pass_and_damage_found_only_by_decoding_names_the_file(tmp_path):
  image_dir, ann_file, _, _, images = _coco(tmp_path, 3)
  paths = [image_dir / img["file_name"] for img in images]
  with open(paths[0], "ab") as f:
    f.write(b"\0" * 16)  # data after the JPEG's end marker: decodable, not a problem
  png = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
  Image.fromarray(png).save(paths[1], format="PNG")  # a PNG named .jpg is fine too
  ds = CocoDetection(str(image_dir), str(ann_file), masks=True)
  assert ds.validate() is None
  np.testing.assert_array_equal(ds[1]["image"], png)
  data = bytearray(paths[1].read_bytes())
  data[len(data) // 2:len(data) // 2 + 40] = bytes(40)  # damaged IDAT: header and IEND intact
  paths[1].write_bytes(bytes(data))
  assert image_problem(str(paths[1]), (H, W)) is None
  with pytest.raises(DatasetError, match=rf"^{paths[1]}: cannot decode image \("):
    ds[1]
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes(bytes(data[:len(data) // 2]))
  assert image_problem(str(truncated), (H, W)).startswith(f"{truncated}: cannot read image (")


def test_masks_are_checked_when_requested(tmp_path):
  image_dir, ann_file, _, _, images = _coco(tmp_path, 2)
  def edit(data):
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]
    data["annotations"][1]["segmentation"]["size"] = [H + 1, W]
  _edit_json(ann_file, edit)
  CocoDetection(str(image_dir), str(ann_file)).validate()  # no masks: segmentations are not used
  with pytest.raises(DatasetError) as error:
    CocoDetection(str(image_dir), str(ann_file), masks=True).validate()
  assert str(error.value).splitlines()[1:] == [
      f"  {ann_file}: annotation id 1: polygon with 4 numbers; a polygon needs an even number >= 6 "
      f"(x, y pairs of at least 3 points)",
      f"  {ann_file}: annotation id 2: RLE size [{H + 1}, {W}] is not the image's [{H}, {W}] (h, w)"]


def test_panoptic_missing_png_and_wrong_segment(tmp_path):
  image_dir, _, pan_file, png_dir, images = _coco(tmp_path, 3)
  png = png_dir / images[1]["file_name"].replace(".jpg", ".png")
  os.remove(png)
  ds = CocoPanoptic(str(image_dir), str(png_dir), str(pan_file), name="coco_panoptic val")
  with pytest.raises(DatasetError) as error:
    ds.validate()
  assert str(error.value).splitlines() == ["1 problem in dataset coco_panoptic val:", f"  {png}: image not found"]
  _edit_json(pan_file, lambda d: d["annotations"][2]["segments_info"][0].update(category_id=999))
  with pytest.raises(DatasetError) as error:
    CocoPanoptic(str(image_dir), str(png_dir), str(pan_file))
  segment_id = json.loads(pan_file.read_text())["annotations"][2]["segments_info"][0]["id"]
  assert str(error.value).splitlines()[1:] == [
      f"  {pan_file}: image_id {images[2]['id']}: segment id {segment_id}: category_id 999 is not in 'categories'",
      f"  {png}: image not found"]


def test_eval_needs_only_the_val_settings(tmp_path):
  image_dir, ann_file, _, _, _ = _coco(tmp_path, 2)
  config = _config(name="coco_custom", val_images=str(image_dir), val_json=str(ann_file))
  resolve_num_classes(config, "val")
  assert config.model.num_classes == max(fake_coco.CATEGORY_IDS) + 1
  ds = build_dataset(config, "val")
  assert len(ds) == 2 and ds.num_classes == config.model.num_classes and ds.validate() is None
  with pytest.raises(DatasetError, match=r"^dataset.train_images is not set$"):
    build_dataset(config, "train")
  config.dataset.train_images = str(tmp_path / "nowhere")
  with pytest.raises(DatasetNotFoundError, match=r"nowhere \(dataset.train_images\) does not exist$") as error:
    build_dataset(config, "train")
  assert isinstance(error.value, UserError) and isinstance(error.value, FileNotFoundError)


@pytest.mark.parametrize("module", ["tensorflow_datasets", "array_record"])
def test_tfds_without_the_extra_says_what_to_install(monkeypatch, module):
  monkeypatch.setitem(sys.modules, module, None)  # importing it fails as when it is not installed
  monkeypatch.delitem(sys.modules, "detr_jax.data.tfds_source", raising=False)
  config = _config(name="tfds")
  with pytest.raises(DatasetError) as error:
    build_dataset(config, "val")
  assert str(error.value) == (f"dataset.name=tfds needs tensorflow-datasets and array-record ({module} is not "
                              f"installed): pip install 'detr-jax[tfds]'")


def test_synthetic_validate():
  config = _config(name="synthetic", num_train=4, num_val=0, image_size=(32, 32), num_objects=(1, 2),
                   object_size=(0.2, 0.4), seed=0)
  assert build_dataset(config, "train").validate() is None
  with pytest.raises(DatasetError, match=r"^synthetic val: no images \(dataset.num_val = 0\)$"):
    build_dataset(config, "val").validate()
