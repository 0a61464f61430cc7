"""Box conversions and pairwise overlaps. Boxes are (cx, cy, w, h) or (x0, y0, x1, y1) in the last axis.

The pairwise functions broadcast over leading axes: boxes1 [..., N, 4], boxes2 [..., M, 4] -> [..., N, M].
As in the official code there is no epsilon: degenerate boxes can give inf / nan.
"""
import jax.numpy as jnp


def cxcywh_to_xyxy(boxes):
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_area(boxes):
  """Area of xyxy boxes [..., 4] -> [...]."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
  """Pairwise IoU of xyxy boxes [..., N, 4] x [..., M, 4] -> (iou, union), each [..., N, M]."""
  area1, area2 = box_area(boxes1), box_area(boxes2)
  lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[..., :, None] + area2[..., None, :] - inter
  return inter / union, union


def generalized_box_iou(boxes1, boxes2):
  """Pairwise generalized IoU of xyxy boxes [..., N, 4] x [..., M, 4] -> [..., N, M]."""
  iou, union = box_iou(boxes1, boxes2)
  lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / area


def masks_to_boxes(masks):
  """xyxy pixel boxes [..., 4] of binary masks [..., H, W]; the max is the last pixel index (inclusive).

  An empty mask gives (0, 0, 0, 0) (the official code gives (1e8, 1e8, 0, 0) for it).
  """
  masks = jnp.asarray(masks).astype(bool)
  h, w = masks.shape[-2:]
  cols = jnp.any(masks, axis=-2)
  rows = jnp.any(masks, axis=-1)
  x = jnp.arange(w, dtype=jnp.float32)
  y = jnp.arange(h, dtype=jnp.float32)
  x_min = jnp.min(jnp.where(cols, x, jnp.inf), axis=-1)
  y_min = jnp.min(jnp.where(rows, y, jnp.inf), axis=-1)
  x_max = jnp.max(jnp.where(cols, x, -1.0), axis=-1)
  y_max = jnp.max(jnp.where(rows, y, -1.0), axis=-1)
  boxes = jnp.stack([x_min, y_min, x_max, y_max], axis=-1)
  return jnp.where(jnp.any(cols, axis=-1)[..., None], boxes, 0.0)
