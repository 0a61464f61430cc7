"""The official DETR augmentations (docs/parity.md §10) on examples, with numpy and PIL.

An example is a dict: image uint8 [H, W, 3]; per object boxes float32 [n, 4] absolute (x0, y0,
x1, y1), labels int32 [n], area float32 [n], iscrowd int32 [n], optional masks bool [n, H, W];
image_id, orig_size (h, w). Transforms add size (h, w) after resizing/cropping.

A transform is split in two: a *plan* (the random choices, drawn from the example's own seeded
generator and the image size alone) and `apply_plan`. Planning is cheap, so the output size of
any example is known before its image is decoded; batches pick their padding bucket from it.
"""
from typing import NamedTuple

import numpy as np
from PIL import Image

from detr_jax.ops.sampling import torch_nearest_indices


class Augment(NamedTuple):
  """Parameters of the official train pipeline (defaults: COCO)."""
  scales: tuple = tuple(range(480, 801, 32))
  max_size: int = 1333
  crop_resize: tuple = (400, 500, 600)
  crop_size: tuple = (384, 600)


def resized_shape(hw, size: int, max_size: int | None = None) -> tuple[int, int]:
  """(h, w) after resizing the short side of an image of size `hw` to `size`, long side <= max_size.

  The official rule: the short side is lowered to round(max_size * short / long) when the long
  side would exceed max_size; the long side is then truncated, not rounded.
  """
  h, w = int(hw[0]), int(hw[1])
  if max_size is not None:
    short, long = float(min(h, w)), float(max(h, w))
    if long / short * size > max_size:
      size = int(round(max_size * short / long))
  if (w <= h and w == size) or (h <= w and h == size):
    return h, w
  if w < h:
    return int(size * h / w), size
  return size, int(size * w / h)


def plan_val(hw, size: int = 800, max_size: int = 1333) -> tuple:
  """The validation pipeline: one resize."""
  return (("resize", resized_shape(hw, size, max_size)),)


def plan_train(rng: np.random.Generator, hw, augment: Augment = Augment()) -> tuple:
  """Random flip, then (p=0.5) multi-scale resize, or resize + random crop + multi-scale resize."""
  plan = [("flip", None)] if rng.random() < 0.5 else []
  if rng.random() < 0.5:
    hw = resized_shape(hw, int(rng.choice(augment.crop_resize)))
    plan.append(("resize", hw))
    lo, hi = augment.crop_size
    w = int(rng.integers(lo, min(hw[1], hi) + 1))
    h = int(rng.integers(lo, min(hw[0], hi) + 1))
    top, left = int(rng.integers(0, hw[0] - h + 1)), int(rng.integers(0, hw[1] - w + 1))
    plan.append(("crop", (top, left, h, w)))
    hw = (h, w)
  plan.append(("resize", resized_shape(hw, int(rng.choice(augment.scales)), augment.max_size)))
  return tuple(plan)


def planned_size(plan, hw) -> tuple[int, int]:
  """(h, w) of an image of size `hw` after `plan`."""
  for op, arg in plan:
    if op == "resize":
      hw = arg
    elif op == "crop":
      hw = arg[2:]
  return tuple(int(s) for s in hw)


_OBJECT_FIELDS = ("boxes", "labels", "area", "iscrowd", "masks")


def apply_plan(example: dict, plan) -> dict:
  """The example transformed by `plan`; boxes and areas in float32 as torch computes them."""
  image = Image.fromarray(example["image"])
  out = {k: v for k, v in example.items() if k != "image"}
  out["boxes"] = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
  out["area"] = np.asarray(example["area"], np.float32)
  for op, arg in plan:
    if op == "flip":
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      x0, y0, x1, y1 = out["boxes"].T
      w = np.float32(image.width)
      out["boxes"] = np.stack([w - x1, y0, w - x0, y1], axis=-1)
      if "masks" in out:
        out["masks"] = out["masks"][:, :, ::-1]
    elif op == "resize":
      h, w = arg
      rw, rh = w / image.width, h / image.height
      if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
      out["boxes"] = out["boxes"] * np.array([rw, rh, rw, rh], np.float32)
      out["area"] = out["area"] * np.float32(rw * rh)
      if "masks" in out:
        masks = out["masks"]
        out["masks"] = masks[:, torch_nearest_indices(masks.shape[1], h)][:, :, torch_nearest_indices(masks.shape[2], w)]
    elif op == "crop":
      out, image = _crop(out, image, *arg)
    else:
      raise ValueError(f"unknown transform {op!r}")
  out["image"] = np.asarray(image)
  out["size"] = np.array([image.height, image.width], np.int32)
  return out


def _crop(target, image, top, left, h, w):
  """Crops image and targets; objects left with an empty box are removed (as the official crop)."""
  image = image.crop((left, top, left + w, top + h))
  corners = target["boxes"].reshape(-1, 2, 2) - np.array([left, top], np.float32)
  corners = np.maximum(np.minimum(corners, np.array([w, h], np.float32)), np.float32(0))
  target["boxes"] = corners.reshape(-1, 4)
  target["area"] = np.prod(corners[:, 1] - corners[:, 0], axis=-1)
  if "masks" in target:
    target["masks"] = target["masks"][:, top:top + h, left:left + w]
  keep = np.all(corners[:, 1] > corners[:, 0], axis=-1)
  for field in _OBJECT_FIELDS:
    if field in target:
      target[field] = target[field][keep]
  return target, image


def example_rng(seed: int, position: int) -> np.random.Generator:
  """The generator of the example at `position` of a stream with `seed`."""
  return np.random.default_rng([seed, position])
