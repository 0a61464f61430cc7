"""Collating examples into a padded, normalised batch with static shapes (numpy)."""
import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_image(image):
  """uint8 [H, W, 3] -> float32 [H, W, 3]: /255 then ImageNet mean/std, in float32 (as torch)."""
  return (image.astype(np.float32) / np.float32(255) - MEAN) / STD


def normalize_boxes(boxes, size):
  """float [n, 4] absolute (x0, y0, x1, y1) -> float32 (cx, cy, w, h) / [w, h, w, h] of size (h, w)."""
  x0, y0, x1, y1 = np.asarray(boxes, np.float32).reshape(-1, 4).T
  h, w = size
  cxcywh = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
  return cxcywh / np.array([w, h, w, h], np.float32)


def collate(examples, pad_to=None, max_objects=None, with_masks=False):
  """Examples -> batch dict (B = len(examples)).

  pad_to (Hp, Wp), default the largest image; max_objects M, default the most objects.
  images float32 [B, Hp, Wp, 3] normalised, zero-padded bottom/right; mask bool [B, Hp, Wp]
  (True = padding); labels int32 [B, M]; boxes float32 [B, M, 4] normalised cxcywh of the unpadded
  image; valid bool [B, M] (valid slots first, padded slots hold label 0 and box 0); with_masks:
  masks bool [B, M, Hp, Wp]; size, orig_size int32 [B, 2] (h, w); image_id int32 [B].
  """
  hp, wp = pad_to or np.max([e["image"].shape[:2] for e in examples], axis=0)
  m = max_objects if max_objects is not None else max(len(e["labels"]) for e in examples)
  b = len(examples)
  batch = {"images": np.zeros((b, hp, wp, 3), np.float32), "mask": np.ones((b, hp, wp), bool),
           "labels": np.zeros((b, m), np.int32), "boxes": np.zeros((b, m, 4), np.float32),
           "valid": np.zeros((b, m), bool), "size": np.zeros((b, 2), np.int32),
           "orig_size": np.zeros((b, 2), np.int32), "image_id": np.zeros((b,), np.int32)}
  if with_masks:
    batch["masks"] = np.zeros((b, m, hp, wp), bool)
  for i, e in enumerate(examples):
    h, w = e["image"].shape[:2]
    n = len(e["labels"])
    if h > hp or w > wp:
      raise ValueError(f"image_id {e['image_id']}: image {h}x{w} is larger than pad_to {hp}x{wp}")
    if n > m:
      raise ValueError(f"image_id {e['image_id']}: {n} objects, more than max_objects={m}")
    batch["images"][i, :h, :w] = normalize_image(e["image"])
    batch["mask"][i, :h, :w] = False
    batch["labels"][i, :n] = e["labels"]
    batch["boxes"][i, :n] = normalize_boxes(e["boxes"], (h, w))
    batch["valid"][i, :n] = True
    if with_masks:
      batch["masks"][i, :n, :h, :w] = e["masks"]
    batch["size"][i] = h, w
    batch["orig_size"][i] = e["orig_size"]
    batch["image_id"][i] = e["image_id"]
  return batch
