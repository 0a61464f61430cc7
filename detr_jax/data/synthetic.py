"""A seeded toy detection dataset: coloured shapes on a noisy, textured background.

Each class is one (shape, colour) pair with its own colour, so a small DETR learns it quickly.
Example i is a pure function of (seed, split, i). Objects are painted in order (later ones on
top) and placed so that every object keeps at least `min_visible` of its pixels; masks are the
visible pixels, boxes are tight around them: (x0, y0) = first pixel, (x1, y1) = last pixel + 1,
i.e. the box covers whole pixels as a COCO bbox does.
"""
import zlib

import numpy as np

from detr_jax.data.validation import DatasetError
from detr_jax.evaluation.coco import coco_from_examples

CLASS_NAMES = ("red circle", "green square", "blue triangle", "yellow square", "magenta triangle",
               "cyan circle")
_SHAPES = ("circle", "square", "triangle", "square", "triangle", "circle")
_COLOURS = np.array([(220, 40, 40), (40, 180, 60), (40, 80, 230), (240, 210, 30), (210, 50, 210),
                     (30, 210, 220)], np.float32)


def _shape_mask(shape, cx, cy, radius, angle, h, w):
  """bool [h, w]: pixel centres inside the shape (circumradius `radius`, rotation `angle`)."""
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  if shape == "circle":
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
  sides = 4 if shape == "square" else 3
  corners = angle + 2 * np.pi * np.arange(sides) / sides
  vx, vy = cx + radius * np.cos(corners), cy + radius * np.sin(corners)
  inside = np.ones((h, w), bool)
  for k in range(sides):  # convex, corners in angle order: inside = right of every edge
    ex, ey = vx[(k + 1) % sides] - vx[k], vy[(k + 1) % sides] - vy[k]
    inside &= ex * (ys - vy[k]) - ey * (xs - vx[k]) >= 0
  return inside


def _background(rng, h, w):
  """float32 [h, w, 3]: a muted base colour with a smooth wave texture."""
  base = rng.uniform(90, 160) + rng.uniform(-15, 15, 3)
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  freq, phase = rng.uniform(0.03, 0.15, 2), rng.uniform(0, 2 * np.pi, 2)
  wave = np.sin(freq[0] * xs + phase[0]) * np.cos(freq[1] * ys + phase[1])
  return (base + rng.uniform(8, 20) * wave[..., None]).astype(np.float32)


class SyntheticShapes:
  """Indexable dataset of examples (image, boxes, labels, masks, image_id, orig_size).

  image_size: (h, w) where each of h, w is an int or an inclusive (lo, hi) range sampled per image.
  object_size: range of the shape's circumscribed diameter as a fraction of min(h, w).
  """

  def __init__(self, num_images, image_size=(128, 128), min_objects=1, max_objects=4, seed=0,
               split="train", object_size=(0.1, 0.5), min_visible=0.7, noise=8.0):
    if not 0 <= min_objects <= max_objects:
      raise DatasetError(f"dataset.num_objects: need (min, max) with 0 <= min <= max, "
                         f"got ({min_objects}, {max_objects})")
    self.num_images, self.image_size = num_images, image_size
    self.min_objects, self.max_objects = min_objects, max_objects
    self.seed, self.split, self.object_size = seed, split, object_size
    self.min_visible, self.noise = min_visible, noise

  class_names = CLASS_NAMES
  num_classes = len(CLASS_NAMES)

  def __len__(self):
    return self.num_images

  def validate(self) -> None:
    """Raises a DatasetError when the split is empty (there are no files to check)."""
    if self.num_images <= 0:
      raise DatasetError(f"synthetic {self.split}: no images (dataset.num_{self.split} = {self.num_images})")

  def _side(self, rng, spec):
    return int(spec) if np.isscalar(spec) else int(rng.integers(spec[0], spec[1] + 1))

  def _place(self, rng, h, w, visible, full):
    """Returns (class, mask) of a new top object that keeps the others visible enough."""
    lo, hi = self.object_size
    for attempt in range(100):
      diameter = min(h, w) * rng.uniform(lo, hi - (hi - lo) * attempt / 100)
      radius = max(diameter / 2, 2.0)
      cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
      label = int(rng.integers(len(CLASS_NAMES)))
      mask = _shape_mask(_SHAPES[label], cx, cy, radius, rng.uniform(0, 2 * np.pi), h, w)
      if mask.any() and all((v & ~mask).sum() >= self.min_visible * f.sum() for v, f in zip(visible, full)):
        return label, mask
    raise RuntimeError(f"could not place an object in a {h}x{w} image; lower max_objects")

  def _rng(self, i):
    if not 0 <= i < self.num_images:
      raise IndexError(i)
    return np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), i])

  def image_hw(self, i) -> tuple[int, int]:
    rng = self._rng(i)
    return self._side(rng, self.image_size[0]), self._side(rng, self.image_size[1])

  def coco_gt(self):
    return coco_from_examples([self[i] for i in range(len(self))], CLASS_NAMES)

  def __getitem__(self, i):
    rng = self._rng(i)
    h, w = self._side(rng, self.image_size[0]), self._side(rng, self.image_size[1])
    image = _background(rng, h, w)
    labels, visible, full = [], [], []
    for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
      label, mask = self._place(rng, h, w, visible, full)
      visible = [v & ~mask for v in visible] + [mask]
      full.append(mask)
      labels.append(label)
      image[mask] = _COLOURS[label] + rng.uniform(-20, 20, 3)
    image += rng.normal(0, self.noise, image.shape)
    masks = np.array(visible, bool).reshape(-1, h, w)
    boxes = np.array([_tight_box(m) for m in masks], np.float32).reshape(-1, 4)
    return {"image": np.clip(np.round(image), 0, 255).astype(np.uint8), "boxes": boxes,
            "labels": np.array(labels, np.int32), "masks": masks, "image_id": i,
            "area": masks.sum(axis=(1, 2)).astype(np.float32), "iscrowd": np.zeros(len(labels), np.int32),
            "orig_size": np.array([h, w], np.int32)}


def _tight_box(mask):
  ys, xs = np.nonzero(mask)
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
