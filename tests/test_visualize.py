"""draw_detections and save_grid: edges drawn in the class colour, thresholds, masks, any box, files."""
import json

import ml_collections
import numpy as np
from PIL import Image

from detr_jax.config import dataset_config, model_config
from detr_jax.data.inspect import inspect
from detr_jax.panoptic_png import id2rgb
from detr_jax.visualize import class_colour, draw_detections, outline_corners, save_grid

GREY = (100, 100, 100)


def _grey(h=80, w=100):
  return np.full((h, w, 3), GREY, np.uint8)


def test_box_edges_drawn_and_low_scores_skipped():
  boxes = np.array([[10, 30, 40, 60], [60, 40, 90, 70]], np.float32)
  picture = np.asarray(draw_detections(_grey(), boxes, [1, 2], [0.9, 0.2], ("a", "b", "c"), threshold=0.5))
  colour = class_colour(1)
  for y, x in ((45, 10), (45, 39), (30, 25), (59, 25)):  # left, right, top, bottom edges
    assert tuple(picture[y, x]) == colour
  assert tuple(picture[45, 25]) == GREY  # inside the box
  assert (picture[18:30, 10:40] != GREY).any(axis=-1).sum() > 20  # label above the box
  assert tuple(picture[55, 60]) == GREY and tuple(picture[40, 75]) == GREY  # score 0.2 < 0.5
  assert class_colour(1) != class_colour(2)


def test_ground_truth_masks_and_scale():
  masks = np.zeros((1, 80, 100), bool)
  masks[0, 50:60, 20:30] = True
  picture = draw_detections(_grey(), [[20, 50, 30, 60]], [0], masks=masks, scale=2)
  assert picture.size == (200, 160)
  pixels = np.asarray(picture)
  assert tuple(pixels[110, 50]) not in (GREY, class_colour(0))  # blended inside the mask
  assert tuple(pixels[100, 40]) == class_colour(0)  # the top-left box corner, scaled
  assert tuple(pixels[150, 150]) == GREY


def test_save_grid(tmp_path):
  path = tmp_path / "grid.png"
  grid = save_grid([_grey(20, 30), Image.fromarray(_grey(10, 10)), _grey(20, 30)], path, cols=2, gap=4)
  with Image.open(path) as saved:
    assert saved.size == grid.size == (2 * 30 + 3 * 4, 2 * 20 + 3 * 4)
    assert saved.getpixel((4, 4)) == GREY and saved.getpixel((0, 0)) == (255, 255, 255)


def test_outline_corners_of_any_box():
  size = (100, 80)  # (width, height)
  assert outline_corners([10, 30, 40, 60], size) == (10, 30, 39, 59)  # last pixel inclusive
  assert outline_corners([10.4, 30.6, 39.2, 59.9], size) == (10, 30, 39, 59)  # every pixel it touches
  assert outline_corners([20, 30, 20, 60], size) == (20, 30, 20, 59)  # zero width: one pixel wide
  assert outline_corners([20, 30, 19.5, 30], size) == (19, 30, 19, 30)  # reversed and flat
  assert outline_corners([40, 60, 10, 30], size) == (10, 30, 39, 59)  # corners swapped
  assert outline_corners([-50, -1e30, 1e30, 60], size, line_width=2) == (-2, -2, 101, 59)  # clipped outside
  for box in ([np.nan, 0, 5, 5], [0, 0, np.inf, 5], [-np.inf, 0, 5, 5], [-30, 10, -0.5, 20], [100, 10, 200, 20],
              [10, 80, 20, 1e9]):
    assert outline_corners(box, size) is None, box


def test_degenerate_boxes_drawn_or_skipped_without_error():
  boxes = np.array([[20, 10, 20, 30],  # zero width (a 1-pixel-wide segment's box)
                    [50, 40, 80, 40],  # zero height
                    [90, 75, 60, 60],  # x1 < x0, y1 < y0
                    [np.nan, 1, 2, 3], [0, 0, np.inf, 5], [-1e30, 0, 1e30, 1e30],
                    [500, 500, 600, 600], [-50, -50, -10, -10]], np.float32)
  labels = np.arange(len(boxes))
  picture = np.asarray(draw_detections(_grey(), boxes, labels, np.full(len(boxes), 0.9), [str(i) for i in labels]))
  assert picture.shape == (80, 100, 3)
  assert all(tuple(picture[y, 20]) == class_colour(0) for y in range(23, 30))  # the vertical line, below its label
  assert all(tuple(picture[40, x]) == class_colour(1) for x in range(50, 80))  # the horizontal line
  assert tuple(picture[67, 60]) == class_colour(2) and tuple(picture[74, 70]) == class_colour(2)  # swapped box
  assert tuple(picture[67, 70]) == GREY  # inside it
  # the huge box: top edge on row 0, the others clipped outside the picture, its label in the top-left corner
  assert tuple(picture[0, 1]) == class_colour(5) and tuple(picture[50, 0]) == GREY and tuple(picture[79, 50]) == GREY
  drawn = np.isin(picture.reshape(-1, 3), np.array([class_colour(i) for i in (3, 4, 6, 7)])).all(-1)
  assert not drawn.any()  # NaN, inf, fully outside: not drawn
  nan_score = draw_detections(_grey(), [[10, 10, 30, 30]], [0], [np.nan], ["a"])
  assert (np.asarray(nan_score) == GREY).all()


def test_inspect_draws_a_one_pixel_wide_panoptic_segment(tmp_path):
  """Its box from the mask is zero wide (x_min == x_max, as the official masks_to_boxes gives)."""
  (tmp_path / "val2017").mkdir()
  (tmp_path / "panoptic_val2017").mkdir()
  (tmp_path / "annotations").mkdir()
  Image.fromarray(_grey(40, 32)).save(tmp_path / "val2017" / "a.jpg", quality=100)
  ids = np.full((40, 32), 7, np.int64)  # stuff everywhere but column 5, rows 20..35
  ids[20:36, 5] = 3
  Image.fromarray(id2rgb(ids)).save(tmp_path / "panoptic_val2017" / "a.png")
  categories = [{"id": 1, "name": "line", "isthing": 1}, {"id": 2, "name": "rest", "isthing": 0}]
  segments = [{"id": 3, "category_id": 1, "area": 16, "bbox": [5, 20, 1, 16]},
              {"id": 7, "category_id": 2, "area": 40 * 32 - 16, "bbox": [0, 0, 32, 40]}]
  with open(tmp_path / "annotations" / "panoptic_val2017.json", "w") as f:
    json.dump({"images": [{"id": 1, "height": 40, "width": 32}], "categories": categories,
               "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}]}, f)
  config = ml_collections.ConfigDict({"seed": 0, "model": model_config(), "dataset": dataset_config(
      name="coco_panoptic", coco_path=str(tmp_path), coco_panoptic_path=str(tmp_path), augment=False,
      val_resize=False)})
  inspect(config, "val", str(tmp_path / "out"), limit=1)
  assert np.load(tmp_path / "out" / "examples.npz")["boxes_0"][0, 2] == 0  # normalised width: zero
  with Image.open(tmp_path / "out" / "00000_1.png") as saved:
    picture = np.asarray(saved)
  assert all(tuple(picture[y, 5]) == class_colour(1) for y in range(20, 35))  # the segment's column
  assert all(tuple(picture[y, 4]) != class_colour(1) for y in range(20, 35))
