"""draw_detections and save_grid: edges drawn in the class colour, thresholds, masks, files."""
import numpy as np
from PIL import Image

from detr_jax.visualize import class_colour, draw_detections, save_grid

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
