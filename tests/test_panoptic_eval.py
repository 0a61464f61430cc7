"""Panoptic quality on hand-made 10 x 10 PNGs, with the expected PQ / SQ / RQ worked out by hand.

Categories: 1 person and 2 car (things), 3 sky and 4 road (stuff). Id maps are built from horizontal stripes.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detr_jax.evaluation.panoptic import format_table, main, pq_compute, read_panoptic_png, write_panoptic_predictions

CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "car", "isthing": 1},
              {"id": 3, "name": "sky", "isthing": 0}, {"id": 4, "name": "road", "isthing": 0}]


def stripes(*runs):
  """Id map [10, 10] from (id, number of rows) runs, top to bottom."""
  ids, rows = zip(*runs)
  assert sum(rows) == 10
  return np.repeat(np.array(ids, np.int64), rows)[:, None].repeat(10, 1)


def with_pixels(id_map, value, *pixels):
  id_map = id_map.copy()
  for r, c in pixels:
    id_map[r, c] = value
  return id_map


def _save_png(path, id_map):
  rgb = np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], -1).astype(np.uint8)
  Image.fromarray(rgb).save(path)


def write_dataset(root, images, image_ids=None):
  """images: (gt map, {id: (category, iscrowd)}, pred map, {id: category}) per image; image ids default to 1, 2, ...

  Writes root/gt.json, root/gt/, root/pred.json, root/pred/ (areas and iscrowd always in the ground truth, as
  panopticapi needs them) -> (gt json, pred json, gt folder, pred folder).
  """
  paths = tuple(os.path.join(root, name) for name in ("gt.json", "pred.json", "gt", "pred"))
  os.makedirs(paths[2], exist_ok=True)
  os.makedirs(paths[3], exist_ok=True)
  gt_anns, pred_anns = [], []
  for image_id, (gt_map, gt_segments, pred_map, pred_segments) in zip(image_ids or range(1, len(images) + 1), images):
    file_name = f"{image_id:012d}.png"
    _save_png(os.path.join(paths[2], file_name), gt_map)
    _save_png(os.path.join(paths[3], file_name), pred_map)
    gt_anns.append({"image_id": image_id, "file_name": file_name, "segments_info": [
        {"id": i, "category_id": c, "iscrowd": crowd, "area": int((gt_map == i).sum())}
        for i, (c, crowd) in gt_segments.items()]})
    pred_anns.append({"image_id": image_id, "file_name": file_name,
                      "segments_info": [{"id": i, "category_id": c} for i, c in pred_segments.items()]})
  with open(paths[0], "w") as f:
    json.dump({"annotations": gt_anns, "categories": CATEGORIES}, f)
  with open(paths[1], "w") as f:
    json.dump({"annotations": pred_anns}, f)
  return paths


def _expect(all_, things, stuff, per_class):
  return {"All": all_, "Things": things, "Stuff": stuff, "per_class": per_class}


# name -> (images, expected): groups as (pq, sq, rq, n), per_class {category: (pq, sq, rq)} (others all zero).
CASES = {
    # person: 50 px in a 60 px prediction (IoU 5/6); sky: 40 px inside 50 (IoU 0.8).
    "true_positives": (
        [(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((1, 6), (2, 4)), {1: 1, 2: 3})],
        _expect(((5 / 6 + 0.8) / 2, (5 / 6 + 0.8) / 2, 1.0, 2), (5 / 6, 5 / 6, 1.0, 1), (0.8, 0.8, 1.0, 1),
                {1: (5 / 6, 5 / 6, 1.0), 3: (0.8, 0.8, 1.0)})),
    # The person region predicted as car: person only in the ground truth (FN), car only in the predictions (FP);
    # both count in n, with sq 0.
    "categories_only_in_gt_or_pred": (
        [(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((7, 5), (2, 5)), {7: 2, 2: 3})],
        _expect((1 / 3, 1 / 3, 1 / 3, 3), (0.0, 0.0, 0.0, 2), (1.0, 1.0, 1.0, 1),
                {1: (0.0, 0.0, 0.0), 2: (0.0, 0.0, 0.0), 3: (1.0, 1.0, 1.0)})),
    # Image 1: person 1 found (IoU 1), person 2 (30 px) missed (FN) and a 10 px FP on it (IoU 1/3), void rows.
    # Image 2: person IoU 40/50, sky IoU 1. Person: tp 2, iou 1.8, fp 1, fn 1.
    "tp_fp_fn_over_two_images": (
        [(stripes((1, 3), (2, 3), (0, 4)), {1: (1, 0), 2: (1, 0)}, stripes((1, 3), (2, 1), (0, 6)), {1: 1, 2: 1}),
         (stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((4, 4), (0, 1), (9, 5)), {4: 1, 9: 3})],
        _expect(((0.6 + 1) / 2, (0.9 + 1) / 2, (2 / 3 + 1) / 2, 2), (0.6, 0.9, 2 / 3, 1), (1.0, 1.0, 1.0, 1),
                {1: (0.6, 0.9, 2 / 3), 3: (1.0, 1.0, 1.0)})),
    # Person IoU 20 / 40 = 0.5 is no match (FN + FP); sky 60 / 80.
    "iou_exactly_half": (
        [(stripes((1, 4), (2, 6)), {1: (1, 0), 2: (3, 0)}, stripes((1, 2), (2, 8)), {1: 1, 2: 3})],
        _expect((0.375, 0.375, 0.5, 2), (0.0, 0.0, 0.0, 1), (0.75, 0.75, 1.0, 1),
                {1: (0.0, 0.0, 0.0), 3: (0.75, 0.75, 1.0)})),
    # One more pixel: person IoU 21 / 40 matches; sky 60 / 79.
    "iou_just_above_half": (
        [(stripes((1, 4), (2, 6)), {1: (1, 0), 2: (3, 0)},
          with_pixels(stripes((1, 2), (2, 8)), 1, (2, 0)), {1: 1, 2: 3})],
        _expect(((0.525 + 60 / 79) / 2, (0.525 + 60 / 79) / 2, 1.0, 2), (0.525, 0.525, 1.0, 1),
                (60 / 79, 60 / 79, 1.0, 1), {1: (0.525, 0.525, 1.0), 3: (60 / 79, 60 / 79, 1.0)})),
    # Void rows 7-9. Person: 40 px + 10 px on void, IoU 40 / (50 + 40 - 40 - 10) = 1. Sky: 20 / 30.
    # Road on void only: ignored (road stays out of n). Car half on void, half on sky: 0.5 is not > 0.5, so FP.
    "void": (
        [(stripes((1, 4), (2, 3), (0, 3)), {1: (1, 0), 2: (3, 0)},
          stripes((1, 4), (2, 2), (4, 1), (1, 1), (3, 1), (4, 1)), {1: 1, 2: 3, 3: 4, 4: 2})],
        _expect(((1 + 2 / 3) / 3, (1 + 2 / 3) / 3, 2 / 3, 3), (0.5, 0.5, 0.5, 2), (2 / 3, 2 / 3, 1.0, 1),
                {1: (1.0, 1.0, 1.0), 2: (0.0, 0.0, 0.0), 3: (2 / 3, 2 / 3, 1.0)})),
    # Crowd person rows 0-3, person rows 4-6, crowd car rows 7-8, sky row 9. A person prediction inside the person
    # crowd (IoU 0.75 with it) is neither TP nor FP; a car prediction on the person crowd is an FP; no crowd is FN.
    "crowd": (
        [(stripes((1, 4), (2, 3), (3, 2), (4, 1)), {1: (1, 1), 2: (1, 0), 3: (2, 1), 4: (3, 0)},
          stripes((1, 3), (3, 1), (2, 3), (0, 2), (4, 1)), {1: 1, 2: 1, 3: 2, 4: 3})],
        _expect((2 / 3, 2 / 3, 2 / 3, 3), (0.5, 0.5, 0.5, 2), (1.0, 1.0, 1.0, 1),
                {1: (1.0, 1.0, 1.0), 2: (0.0, 0.0, 0.0), 3: (1.0, 1.0, 1.0)})),
    # The true_positives maps with ids that use the G and B channels.
    "non_consecutive_ids": (
        [(stripes((66051, 5), (4000, 5)), {66051: (1, 0), 4000: (3, 0)},
          stripes((13107205, 6), (300, 4)), {13107205: 1, 300: 3})],
        _expect(((5 / 6 + 0.8) / 2, (5 / 6 + 0.8) / 2, 1.0, 2), (5 / 6, 5 / 6, 1.0, 1), (0.8, 0.8, 1.0, 1),
                {1: (5 / 6, 5 / 6, 1.0), 3: (0.8, 0.8, 1.0)})),
    # Predicted id 0 listed in segments_info is a segment (as in DETR predictions) ...
    "pred_id_0_listed": (
        [(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((0, 5), (1, 5)), {0: 1, 1: 3})],
        _expect((1.0, 1.0, 1.0, 2), (1.0, 1.0, 1.0, 1), (1.0, 1.0, 1.0, 1), {1: (1.0, 1.0, 1.0), 3: (1.0, 1.0, 1.0)})),
    # ... and unlabelled pixels when it is not: the person is missed.
    "pred_id_0_unlisted": (
        [(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((0, 5), (1, 5)), {1: 3})],
        _expect((0.5, 0.5, 0.5, 2), (0.0, 0.0, 0.0, 1), (1.0, 1.0, 1.0, 1), {1: (0.0, 0.0, 0.0), 3: (1.0, 1.0, 1.0)})),
}

# name -> (images, error message pattern); panopticapi raises for each of these too.
ERROR_CASES = {
    "unlisted_id": ([(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((1, 5), (7, 5)), {1: 1})],
                    r"000000000001\.png .*image_id 1\): segment ids \[7\] are in the PNG but not in segments_info"),
    "listed_id_not_in_png": ([(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((1, 10)), {1: 1, 5: 3})],
                             r"segment ids \[5\] are in segments_info but not in the PNG"),
    "unknown_category": ([(stripes((1, 5), (2, 5)), {1: (1, 0), 2: (3, 0)}, stripes((1, 10)), {1: 9})],
                         r"pred\.json, image_id 1: segment id 1 has unknown category_id 9"),
}


def _check(results, expected):
  assert set(results) == {"All", "Things", "Stuff", "per_class"}
  for name in ("All", "Things", "Stuff"):
    assert set(results[name]) == {"pq", "sq", "rq", "n"}
    got = results[name]
    assert (got["pq"], got["sq"], got["rq"]) == pytest.approx(expected[name][:3], rel=1e-12, abs=1e-15), name
    assert got["n"] == expected[name][3], name
  assert set(results["per_class"]) == {c["id"] for c in CATEGORIES}
  for category, got in results["per_class"].items():
    want = expected["per_class"].get(category, (0.0, 0.0, 0.0))
    assert (got["pq"], got["sq"], got["rq"]) == pytest.approx(want, rel=1e-12, abs=1e-15), category


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_computed_pq(tmp_path, name):
  images, expected = CASES[name]
  _check(pq_compute(*write_dataset(tmp_path, images)), expected)


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_invalid_predictions_raise(tmp_path, name):
  images, message = ERROR_CASES[name]
  with pytest.raises(ValueError, match=message):
    pq_compute(*write_dataset(tmp_path, images))


def test_missing_prediction_and_size_mismatch(tmp_path):
  gt_json, pred_json, gt_folder, pred_folder = write_dataset(
      tmp_path, [(stripes((1, 10)), {1: (1, 0)}, stripes((1, 10)), {1: 1})])
  _save_png(os.path.join(pred_folder, "000000000001.png"), np.ones((10, 12), np.int64))
  with pytest.raises(ValueError, match=r"the PNG is \(10, 12\) \(h, w\), the ground truth PNG \(10, 10\)"):
    pq_compute(gt_json, pred_json, gt_folder, pred_folder)
  with open(pred_json, "w") as f:
    json.dump({"annotations": []}, f)
  with pytest.raises(ValueError, match="pred.json: no prediction for image_id 1"):
    pq_compute(gt_json, pred_json, gt_folder, pred_folder)


def test_empty_group_and_ground_truth_defaults(tmp_path):
  """No stuff anywhere: Stuff is all zero with n = 0 (where panopticapi divides by zero); a ground truth without
  "area" / "iscrowd" uses pixel counts and no crowd."""
  gt_json, pred_json, gt_folder, pred_folder = write_dataset(
      tmp_path, [(stripes((1, 5), (0, 5)), {1: (1, 0)}, stripes((1, 4), (0, 6)), {1: 1})])
  with open(gt_json) as f:
    gt = json.load(f)
  gt["annotations"][0]["segments_info"] = [{"id": 1, "category_id": 1}]
  with open(gt_json, "w") as f:
    json.dump(gt, f)
  results = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
  _check(results, _expect((0.8, 0.8, 1.0, 1), (0.8, 0.8, 1.0, 1), (0.0, 0.0, 0.0, 0), {1: (0.8, 0.8, 1.0)}))


def test_write_predictions_round_trip(tmp_path):
  """png_string (bytes) and png_ids (id map) entries in the DETR layout; evaluated against the same maps: PQ 1."""
  ids = {139: stripes((0, 5), (1, 5)), 285: stripes((0, 3), (1, 7))}
  segments = {i: [{"id": 0, "isthing": True, "category_id": 1, "area": np.int64((m == 0).sum())},
                  {"id": 1, "isthing": False, "category_id": 3, "area": int((m == 1).sum())}] for i, m in ids.items()}
  _save_png(tmp_path / "139.png", ids[139])
  results = [{"image_id": 139, "png_string": (tmp_path / "139.png").read_bytes(), "segments_info": segments[139]},
             {"image_id": np.int64(285), "png_ids": ids[285].astype(np.int32), "segments_info": segments[285]}]
  out_dir = tmp_path / "panoptic_eval"
  pred_json, pred_folder = write_panoptic_predictions(results, str(out_dir))
  assert pred_json == str(out_dir / "predictions.json") and pred_folder == str(out_dir)
  assert sorted(os.listdir(out_dir)) == ["000000000139.png", "000000000285.png", "predictions.json"]
  with open(pred_json) as f:
    written = json.load(f)
  assert written == {"annotations": [
      {"image_id": i, "file_name": f"{i:012d}.png", "segments_info": json.loads(json.dumps(segments[i], default=int))}
      for i in (139, 285)]}
  for i, id_map in ids.items():
    np.testing.assert_array_equal(read_panoptic_png(out_dir / f"{i:012d}.png"), id_map)
  # The ground truth: the same maps with ids + 1 (gt id 0 is VOID).
  gt_json, _, gt_folder, _ = write_dataset(
      tmp_path / "gt", [(ids[i] + 1, {1: (1, 0), 2: (3, 0)}, ids[i] + 1, {}) for i in ids], image_ids=list(ids))
  results = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
  assert results["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "detr_jax.evaluation.panoptic", *args], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli(tmp_path):
  images, expected = CASES["crowd"]
  gt_json, pred_json, gt_folder, pred_folder = write_dataset(tmp_path, images)
  out = tmp_path / "result.json"
  proc = _cli("--gt-json", gt_json, "--gt-folder", gt_folder, "--pred-json", pred_json, "--pred-folder", pred_folder,
              "--out", str(out))
  assert proc.returncode == 0, proc.stderr
  results = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
  assert format_table(results) in proc.stdout
  assert "Things    |   50.0   50.0   50.0     2" in proc.stdout
  written = json.loads(out.read_text())
  assert written == json.loads(json.dumps(results))
  written["per_class"] = {int(k): v for k, v in written["per_class"].items()}
  _check(written, expected)

  proc = _cli("--gt-json", gt_json, "--gt-folder", gt_folder, "--pred-json", pred_json, "--pred-folder",
              str(tmp_path / "missing"))
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr == f"error: {tmp_path / 'missing'}: segmentation folder does not exist\n"


def test_cli_invalid_predictions(tmp_path):
  images, _ = ERROR_CASES["unlisted_id"]
  gt_json, pred_json, gt_folder, pred_folder = write_dataset(tmp_path, images)
  proc = _cli("--gt-json", gt_json, "--gt-folder", gt_folder, "--pred-json", pred_json, "--pred-folder", pred_folder)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
  assert "segment ids [7] are in the PNG but not in segments_info" in proc.stderr


# ---- the CLI on broken inputs: one `error: ...` line naming the file (and key), exit code 1 ----

PNG = "000000000001.png"


def _edit_json(path, change):
  with open(path) as f:
    data = json.load(f)
  change(data)
  with open(path, "w") as f:
    json.dump(data, f)


def _write(path, content):
  with open(path, "w" if isinstance(content, str) else "wb") as f:
    f.write(content)


def _truncate(path):
  """Cuts the end of the image data and the IEND chunk."""
  with open(path, "rb") as f:
    data = f.read()
  _write(path, data[:-30])


def _replace_by_folder(path):
  os.remove(path)
  os.mkdir(path)


def _pred_segment(key, value):
  return lambda p: _edit_json(p["pred_json"], lambda d: d["annotations"][0]["segments_info"][0].__setitem__(key, value))


def _gt_segment(key, value):
  return lambda p: _edit_json(p["gt_json"], lambda d: d["annotations"][0]["segments_info"][0].__setitem__(key, value))


# name -> (damage(paths), the error line after "error: " with {gt_json}, {pred_json}, {gt}, {pred} filled in).
# Before, the TypeError cases ended in a traceback and the others printed OS messages without the file.
BROKEN_INPUTS = {
    "gt_json_missing": (lambda p: os.remove(p["gt_json"]), "{gt_json}: file not found"),
    "gt_json_a_folder": (lambda p: _replace_by_folder(p["gt_json"]), "{gt_json}: cannot read it (Is a directory)"),
    "pred_json_not_json": (lambda p: _write(p["pred_json"], "{oops"), "{pred_json}: not valid json (Expecting "
                           "property name enclosed in double quotes: line 1 column 2 (char 1))"),
    "pred_json_binary": (lambda p: _write(p["pred_json"], b"\xff\xfe\x00\x01"), "{pred_json}: not valid json ("),
    "pred_json_a_list": (lambda p: _write(p["pred_json"], "[]"),
                         '{pred_json}: expected a json object with "annotations", got a list'),
    "pred_annotations_a_number": (lambda p: _write(p["pred_json"], '{"annotations": 5}'),
                                  "{pred_json}: annotations is 5, expected a list"),
    "gt_annotations_null": (lambda p: _edit_json(p["gt_json"], lambda d: d.update(annotations=None)),
                            "{gt_json}: annotations is null, expected a list"),
    "gt_category_id_a_list": (lambda p: _edit_json(p["gt_json"], lambda d: d["categories"][0].update(id=[1])),
                              "{gt_json}: categories: id is [1], expected an integer"),
    "gt_isthing_text": (lambda p: _edit_json(p["gt_json"], lambda d: d["categories"][0].update(isthing="yes")),
                        '{gt_json}: category 1: isthing is "yes", expected 0 or 1'),
    "segments_info_a_number": (
        lambda p: _edit_json(p["pred_json"], lambda d: d["annotations"][0].update(segments_info=3)),
        "{pred_json}, image_id 1: segments_info is 3, expected a list"),
    "segment_id_null": (_pred_segment("id", None), "{pred_json}, image_id 1: segments_info: id is null, expected an "
                                                   "integer"),
    "segment_id_text": (_pred_segment("id", "abc"), '{pred_json}, image_id 1: segments_info: id is "abc", expected '
                                                    'an integer'),
    "segment_id_fraction": (_pred_segment("id", 1.5), "{pred_json}, image_id 1: segments_info: id is 1.5, expected "
                                                      "an integer"),
    "segment_category_a_list": (_pred_segment("category_id", [1]), "{pred_json}, image_id 1: segment id 1: "
                                                                   "category_id is [1], expected an integer"),
    "gt_area_text": (_gt_segment("area", "big"), '{gt_json}, image_id 1: segment id 1: area is "big", expected a '
                                                 'number'),
    "gt_area_zero": (_gt_segment("area", 0), "{gt_json}, image_id 1: segment id 1 has area 0, expected a positive "
                                             "number"),
    "gt_iscrowd_text": (_gt_segment("iscrowd", "yes"), '{gt_json}, image_id 1: segment id 1 has iscrowd "yes", '
                                                       'expected 0 or 1'),
    "gt_file_name_a_number": (
        lambda p: _edit_json(p["gt_json"], lambda d: d["annotations"][0].update(file_name=5)),
        "{gt_json}, image_id 1: file_name is 5, expected a string"),
    "pred_image_id_a_list": (
        lambda p: _edit_json(p["pred_json"], lambda d: d["annotations"][0].update(image_id=[1])),
        "{pred_json}: annotations: image_id is [1], expected an integer or a string"),
    "pred_png_missing": (lambda p: os.remove(os.path.join(p["pred"], PNG)), "{pred}/" + PNG + ": PNG not found"),
    "pred_png_empty": (lambda p: _write(os.path.join(p["pred"], PNG), ""),
                       "{pred}/" + PNG + ": not an image file PIL can read"),
    "pred_png_truncated": (lambda p: _truncate(os.path.join(p["pred"], PNG)),
                           "{pred}/" + PNG + ": cannot read the PNG (image file is truncated)"),
    "pred_png_a_folder": (lambda p: _replace_by_folder(os.path.join(p["pred"], PNG)),
                          "{pred}/" + PNG + ": cannot read the PNG (Is a directory)"),
    "gt_png_grey": (lambda p: Image.fromarray(np.zeros((10, 10), np.uint8)).save(os.path.join(p["gt"], PNG)),
                    "{gt}/" + PNG + ": expected an RGB panoptic PNG, got an array of shape (10, 10)"),
    "pred_png_wrong_size": (lambda p: _save_png(os.path.join(p["pred"], PNG), np.ones((10, 12), np.int64)),
                            "{pred}/" + PNG + " ({pred_json}, image_id 1): the PNG is (10, 12) (h, w), the ground "
                            "truth PNG (10, 10)"),
    "gt_folder_a_file": (lambda p: (shutil.rmtree(p["gt"]), _write(p["gt"], "")),
                         "{gt}: segmentation folder is not a folder"),
}


def _broken_paths(tmp_path):
  images, _ = CASES["true_positives"]
  return dict(zip(("gt_json", "pred_json", "gt", "pred"), write_dataset(tmp_path, images)))


def _main(capsys, p, *extra):
  code = main(["--gt-json", p["gt_json"], "--gt-folder", p["gt"], "--pred-json", p["pred_json"], "--pred-folder",
               p["pred"], *extra])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize("name", sorted(BROKEN_INPUTS))
def test_cli_broken_inputs_are_one_line(tmp_path, capsys, name):
  paths = _broken_paths(tmp_path)
  damage, expected = BROKEN_INPUTS[name]
  damage(paths)
  code, out, err = _main(capsys, paths)
  assert (code, out) == (1, "")
  assert err.count("\n") == 1 and err.startswith("error: " + expected.format(**paths)), err


def test_cli_checks_out_before_evaluating(tmp_path, capsys, monkeypatch):
  """--out in a missing folder or a folder is refused before the evaluation (which can take minutes on COCO)."""
  paths = _broken_paths(tmp_path)
  monkeypatch.setattr(sys.modules[main.__module__], "pq_compute", lambda *a: pytest.fail("evaluated"))
  for out, message in ((tmp_path / "missing" / "r.json", f"folder {tmp_path / 'missing'} does not exist"),
                       (tmp_path, "is a folder; give a file name")):
    code, stdout, err = _main(capsys, paths, "--out", str(out))
    assert (code, stdout, err) == (1, "", f"error: --out {out}: {message}\n")
