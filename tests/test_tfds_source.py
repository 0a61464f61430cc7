"""TfdsCoco on tiny coco/2017 and coco/2017_panoptic datasets prepared by tfds' own coco builder.

The builder's real `_generate_examples` writes ArrayRecord files from a tiny raw COCO (json + JPEGs +
PNGs), offline and without TensorFlow; the same raw files, read by the json sources, are the reference.
"""
import json
import pickle
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from tensorflow_datasets.core.download.download_manager import DownloadManager  # noqa: E402
from tensorflow_datasets.object_detection import coco as tfds_coco  # noqa: E402

from detr_jax.data import build_dataset  # noqa: E402
from detr_jax.data.coco import CocoDetection, CocoPanoptic  # noqa: E402
from detr_jax.data.tfds_source import STUFF, THINGS, TfdsCoco  # noqa: E402

THING_CATEGORIES = [{"id": i, "name": n, "supercategory": "x", "isthing": 1} for i, n in THINGS]
STUFF_CATEGORIES = [{"id": i, "name": n, "supercategory": "x", "isthing": 0} for i, n in STUFF]
BOX_ATOL = 1.3e-4  # 2 float32 ulps below 1024 px (see TfdsCoco.__getitem__)


class _OfflineCoco(tfds_coco.Coco, skip_registration=True):
  """tfds' coco builder without the real zips' checksums (the tiny raw data cannot match them; looking
  them up also needs the importlib_resources package in tfds 4.9.10)."""
  name = "coco"
  url_infos = None


def _save_jpeg(path, h, w, seed, gray=False):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, quality=90)


def _write_json(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))


def _prepare(raw, data_dir, config):
  """Runs tfds' coco builder on the raw COCO under `raw` (images/, annotations/, panoptic/)."""
  def download_and_extract(self, urls):
    return {k: str(raw / ("images" if k.endswith("_images") else "annotations")) for k in urls}

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tfds_coco, "tf", types.SimpleNamespace(int64=np.int64))  # the builder's only TF use
    mp.setattr(DownloadManager, "download_and_extract", download_and_extract)
    mp.setattr(DownloadManager, "extract", lambda self, path: str(raw / "panoptic"))
    builder = _OfflineCoco(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _ann(ann_id, image_id, category_id, bbox, area, iscrowd=0):
  return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": area,
          "iscrowd": iscrowd}


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
  """(data_dir, raw): val2017 with image 42 (30x40, 5 objects) and 5 (grayscale 20x25, none)."""
  raw, data_dir = tmp_path_factory.mktemp("raw_det"), tmp_path_factory.mktemp("tfds_det")
  images = {"val2017": [(42, 30, 40), (5, 20, 25)], "train2017": [(1, 16, 16)], "test2017": [(2, 8, 9)]}
  for split, infos in images.items():
    for image_id, h, w in infos:
      _save_jpeg(raw / "images" / split / f"{image_id:012d}.jpg", h, w, image_id, gray=image_id == 5)

  def info(split):
    return [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i, h, w in images[split]]

  val = [_ann(3, 42, 90, [1.5, 2.25, 10.13, 7.33], 70.7),      # toothbrush, contiguous label 79
         _ann(4, 42, 1, [0.0, 0.0, 5.0, 5.0], 25, iscrowd=1),   # crowd: dropped
         _ann(7, 42, 67, [39.0, 10.0, 1.0, 20.0], 20),         # dining table, touching the right edge
         _ann(8, 42, 1, [20.0, 5.0, 0.0, 4.0], 0),             # zero width: dropped
         _ann(9, 42, 1, [0.37, 0.73, 17.29, 28.91], 500)]      # person, contiguous label 0
  _write_json(raw / "annotations/annotations/instances_val2017.json",
              {"images": info("val2017"), "annotations": val, "categories": THING_CATEGORIES})
  _write_json(raw / "annotations/annotations/instances_train2017.json",
              {"images": info("train2017"), "annotations": [_ann(1, 1, 2, [1.0, 1.0, 4.0, 4.0], 16)],
               "categories": THING_CATEGORIES})
  _write_json(raw / "annotations/annotations/image_info_test2017.json",
              {"images": info("test2017"), "categories": THING_CATEGORIES})
  _prepare(raw, data_dir, "2017")
  return data_dir, raw


def _segments_png(ids):
  """The panoptic PNG (R + 256 G + 65536 B) of an id map [H, W]."""
  ids = np.asarray(ids, np.uint32)
  return Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8))


def _segment(ids, segment_id, category_id, iscrowd=0):
  ys, xs = np.nonzero(ids == segment_id)
  bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
  return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd, "bbox": bbox, "area": int(len(xs))}


@pytest.fixture(scope="module")
def panoptic(tmp_path_factory):
  """(data_dir, raw): val2017 image 42 (24x32): a person, a crowd of people, a 1-px-wide cup, a wall."""
  raw, data_dir = tmp_path_factory.mktemp("raw_pan"), tmp_path_factory.mktemp("tfds_pan")
  h, w = 24, 32
  ids = np.full((h, w), 3 * 65536 + 7)  # wall-other-merged (199), an id using all three channels
  ids[2:12, 3:10] = 1 + 256 * 2         # person
  ids[14:20, 0:32] = 500                # crowd of persons, full width
  ids[5:9, 20] = 26000                  # cup, one pixel wide
  segments = [_segment(ids, 1 + 256 * 2, 1), _segment(ids, 500, 1, iscrowd=1), _segment(ids, 26000, 47),
              _segment(ids, 3 * 65536 + 7, 199)]
  for split in ("val2017", "train2017"):
    _save_jpeg(raw / "images" / split / "000000000042.jpg", h, w, 42)
    (raw / "panoptic" / f"panoptic_{split}").mkdir(parents=True)
    _segments_png(ids).save(raw / "panoptic" / f"panoptic_{split}" / "000000000042.png")
    _write_json(raw / f"annotations/annotations/panoptic_{split}.json", {
        "images": [{"id": 42, "file_name": "000000000042.jpg", "height": h, "width": w}],
        "annotations": [{"image_id": 42, "file_name": "000000000042.png", "segments_info": segments}],
        "categories": THING_CATEGORIES + STUFF_CATEGORIES})
  _prepare(raw, data_dir, "2017_panoptic")
  return data_dir, raw


def _by_id(ds):
  return {ex["image_id"]: ex for ex in (ds[i] for i in range(len(ds)))}


def test_detection_labels_boxes_and_crowd(detection):
  data_dir, _ = detection
  ds = TfdsCoco("coco/2017", "val", data_dir=str(data_dir))
  assert len(ds) == 2 and ds.num_classes == 91 and not ds.panoptic
  assert ds.class_names[1] == "person" and ds.class_names[90] == "toothbrush" and ds.class_names[12] == "12"
  np.testing.assert_array_equal(ds._label_ids[[0, 60, 79]], [1, 67, 90])
  ex = _by_id(ds)[42]
  np.testing.assert_array_equal(ex["labels"], [90, 67, 1])  # crowd and zero-width boxes dropped
  assert ex["labels"].dtype == np.int32 and ex["boxes"].dtype == np.float32
  official = np.float32([[1.5, 2.25, 10.13, 7.33], [39.0, 10.0, 1.0, 20.0], [0.37, 0.73, 17.29, 28.91]])
  official[:, 2:] += official[:, :2]
  np.testing.assert_allclose(ex["boxes"], official, rtol=0, atol=BOX_ATOL)
  assert ex["boxes"][1, 2] == 40.0  # right edge exactly
  np.testing.assert_array_equal(ex["area"], [70, 20, 500])  # tfds stores int64: 70.7 -> 70
  np.testing.assert_array_equal(ex["iscrowd"], [0, 0, 0])
  assert ex["image"].shape == (30, 40, 3) and ex["image"].dtype == np.uint8
  np.testing.assert_array_equal(ex["orig_size"], [30, 40])
  assert ex["orig_size"].dtype == np.int32 and "masks" not in ex


def test_detection_matches_json_source(detection):
  data_dir, raw = detection
  ds = TfdsCoco("coco/2017", "val", data_dir=str(data_dir))
  ref = CocoDetection(str(raw / "images/val2017"), str(raw / "annotations/annotations/instances_val2017.json"))
  ours = _by_id(ds)
  assert sorted(ours) == [5, 42]
  for i in range(len(ref)):
    want = ref[i]
    got = ours[want["image_id"]]
    np.testing.assert_array_equal(got["image"], want["image"])  # same bytes, same PIL decode (gray -> RGB)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=0, atol=BOX_ATOL)
    np.testing.assert_array_equal(got["area"], np.trunc(want["area"]))
    np.testing.assert_array_equal(got["orig_size"], want["orig_size"])
    assert got["boxes"].shape == want["boxes"].shape and got["iscrowd"].shape == want["iscrowd"].shape
  assert ours[5]["boxes"].shape == (0, 4) and ours[5]["labels"].shape == (0,)
  assert {ds.image_hw(i) for i in range(len(ds))} == {(30, 40), (20, 25)}


def test_detection_coco_gt(detection):
  data_dir, raw = detection
  gt = TfdsCoco("coco/2017", "val", data_dir=str(data_dir)).coco_gt()
  ref = CocoDetection(str(raw / "images/val2017"),
                      str(raw / "annotations/annotations/instances_val2017.json")).coco_gt()
  assert sorted(gt.getImgIds()) == sorted(ref.getImgIds())
  assert gt.imgs[42]["height"] == 30 and gt.imgs[42]["width"] == 40
  assert sorted(gt.getCatIds()) == sorted(ref.getCatIds())
  key = lambda a: (a["category_id"], a["iscrowd"], a["bbox"][0])
  got, want = sorted(gt.loadAnns(gt.getAnnIds(imgIds=[42])), key=key), sorted(ref.imgToAnns[42], key=key)
  assert [key(a)[:2] for a in got] == [key(a)[:2] for a in want]  # crowd objects kept, with their flag
  np.testing.assert_allclose([a["bbox"] for a in got], [a["bbox"] for a in want], rtol=0, atol=1e-4)


def test_panoptic_masks_boxes_and_labels(panoptic):
  data_dir, raw = panoptic
  ds = TfdsCoco("coco/2017_panoptic", "val", data_dir=str(data_dir), masks=True)
  assert ds.panoptic and ds.num_classes == 250 and ds.class_names[199] == "wall-other-merged"
  np.testing.assert_array_equal(ds._label_ids[[0, 79, 80, 132]], [1, 90, 92, 200])
  ex = ds[0]
  assert ex["image_id"] == 42 and ex["image"].shape == (24, 32, 3)
  np.testing.assert_array_equal(ex["labels"], [1, 1, 47, 199])
  np.testing.assert_array_equal(ex["iscrowd"], [0, 1, 0, 0])  # crowd kept
  np.testing.assert_array_equal(ex["boxes"], [[3, 2, 9, 11], [0, 14, 31, 19], [20, 5, 20, 8], [0, 0, 31, 23]])
  assert ex["masks"].shape == (4, 24, 32) and ex["masks"].dtype == bool
  assert ex["masks"][2].sum() == 4 and ex["masks"][3].sum() == ex["area"][3]
  ref = CocoPanoptic(str(raw / "images/val2017"), str(raw / "panoptic/panoptic_val2017"),
                     str(raw / "annotations/annotations/panoptic_val2017.json"), masks=True)[0]
  for key in ("image", "boxes", "labels", "area", "iscrowd", "masks", "orig_size"):
    np.testing.assert_array_equal(ex[key], ref[key], err_msg=key)
    assert ex[key].dtype == ref[key].dtype, key
  assert "masks" not in TfdsCoco("coco/2017_panoptic", "val", data_dir=str(data_dir))[0]
  gt = ds.coco_gt()
  assert [a["category_id"] for a in gt.loadAnns(gt.getAnnIds())] == [1, 1, 47, 199]
  np.testing.assert_allclose(gt.anns[1]["bbox"], [3, 2, 7, 10], atol=1e-4)


def test_build_dataset_and_pickle(detection):
  """The `dataset.name=tfds` config builds it; it pickles (grain's worker processes) and still reads."""
  config = ml_collections.ConfigDict({"model": {"masks": False}, "dataset": {
      "name": "tfds", "tfds_name": "coco/2017", "tfds_data_dir": str(detection[0]), "masks": False}})
  ds = pickle.loads(pickle.dumps(build_dataset(config, "val")))
  assert isinstance(ds, TfdsCoco) and ds.split == "val"
  np.testing.assert_array_equal(_by_id(ds)[42]["labels"], [90, 67, 1])


def test_errors(detection, tmp_path):
  data_dir, _ = detection
  with pytest.raises(ValueError, match="no instance masks"):
    TfdsCoco("coco/2017", "val", data_dir=str(data_dir), masks=True)
  with pytest.raises(ValueError, match="unknown split"):
    TfdsCoco("coco/2017", "validation", data_dir=str(data_dir))
  with pytest.raises(ValueError, match="unknown coco config"):
    TfdsCoco("coco/2099", "val", data_dir=str(data_dir))
  with pytest.raises(ValueError, match="expected coco/<config>"):
    TfdsCoco("voc/2007", "val", data_dir=str(data_dir))
  with pytest.raises(FileNotFoundError, match="prepared there as ArrayRecord"):
    TfdsCoco("coco/2017", "val", data_dir=str(tmp_path))
