"""Post-processing of model outputs into detections in original image coordinates.

`postprocess_boxes` runs on the device; `postprocess_segm` upsamples on the device and finishes on the host;
`postprocess_panoptic` resizes the kept masks on the device and is otherwise host-side numpy/PIL,
as in the official code.
"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from detr_jax.coco_categories import is_thing_map as coco_is_thing_map
from detr_jax.ops.boxes import cxcywh_to_xyxy
from detr_jax.ops.resize import resize_bilinear
from detr_jax.ops.sampling import torch_nearest_indices
from detr_jax.panoptic_png import id2rgb, rgb2id


def postprocess_boxes(pred_logits, pred_boxes, orig_target_sizes):
  """The official PostProcess: no threshold, no-object excluded from the max.

  pred_logits [B, Q, C+1], pred_boxes [B, Q, 4] (cxcywh, normalised), orig_target_sizes [B, 2]
  (h, w) -> scores [B, Q], labels [B, Q], boxes [B, Q, 4] (x0, y0, x1, y1 in pixels).
  """
  probs = jax.nn.softmax(pred_logits, axis=-1)[..., :-1]
  h, w = orig_target_sizes[:, 0], orig_target_sizes[:, 1]
  scale = jnp.stack([w, h, w, h], axis=-1).astype(pred_boxes.dtype)[:, None, :]
  return probs.max(-1), probs.argmax(-1), cxcywh_to_xyxy(pred_boxes) * scale


def postprocess_segm(pred_masks, processed_sizes, orig_target_sizes, threshold=0.5, padded_size=None):
  """The official PostProcessSegm.

  pred_masks [B, Q, h4, w4] logits, processed_sizes [B, 2] and orig_target_sizes [B, 2] (h, w) -> list of B
  uint8 masks [Q, 1, H_i, W_i]: bilinear upsampling to the padded batch size, sigmoid > threshold, crop to the
  processed size, torch nearest resize to the original size. padded_size (H, W): the batch's padded image
  size; default the largest processed size (the official batches are padded to exactly that).
  """
  processed_sizes, orig_target_sizes = np.asarray(processed_sizes), np.asarray(orig_target_sizes)
  max_h, max_w = processed_sizes.max(0).tolist() if padded_size is None else padded_size
  masks = resize_bilinear(jnp.moveaxis(jnp.asarray(pred_masks), 1, -1), (max_h, max_w))
  masks = np.asarray(jax.nn.sigmoid(masks) > threshold).transpose(0, 3, 1, 2)
  results = []
  for mask, (h, w), (out_h, out_w) in zip(masks, processed_sizes.tolist(), orig_target_sizes.tolist()):
    rows, cols = torch_nearest_indices(h, out_h), torch_nearest_indices(w, out_w)
    results.append(mask[:, :h, :w][:, rows][:, :, cols][:, None].astype(np.uint8))
  return results


def softmax(x, axis=-1):
  """float32 softmax as torch CPU computes it: exp(x - max) * (1 / sum)."""
  e = np.exp(x - x.max(axis, keepdims=True))
  return e * (np.float32(1) / e.sum(axis, keepdims=True))


def _ids_and_areas(masks, size, target_size, merge):
  """Segment id map [H_t, W_t] (int32) and per-segment areas of the official get_ids_area.

  masks [K, h, w] mask logits at the processed size; merge: lists of same-class stuff segments whose pixels go
  to the first of each list.
  """
  if len(masks):
    ids = softmax(masks.reshape(len(masks), -1).T).argmax(-1).reshape(size)
  else:
    ids = np.zeros(size, np.int64)
  for equiv in merge:
    ids[np.isin(ids, equiv)] = equiv[0]
  image = Image.fromarray(id2rgb(ids)).resize((target_size[1], target_size[0]), resample=Image.NEAREST)
  ids = rgb2id(np.asarray(image))
  return ids, [int((ids == k).sum()) for k in range(len(masks))]


PANOPTIC_THRESHOLD = 0.85  # the official PostProcessPanoptic keeps queries whose top score is above this


def postprocess_panoptic(pred_logits, pred_masks, pred_boxes, processed_sizes, target_sizes=None,
                         is_thing_map=None, threshold=PANOPTIC_THRESHOLD, mask_query_index=None):
  """The official PostProcessPanoptic, on the host.

  pred_logits [B, Q, C+1], pred_masks [B, Q, h4, w4] logits, pred_boxes [B, Q, 4] (unused by the result, as in the
  official code), processed_sizes / target_sizes [B, 2] (h, w; targets default to the processed sizes),
  is_thing_map {class: bool} (default: COCO, id <= 90) -> list of B dicts: "png_ids" int32 [H_t, W_t] (0-based
  index into segments_info, id 0 is a real segment; all 0 when nothing is kept) and "segments_info"
  [{"id", "isthing", "category_id", "area"}].
  mask_query_index [B, K]: pred_masks [B, K, h4, w4] belong to these queries (a model built with
  mask_queries=K); a kept query without a mask is an error (rerun with more mask queries).
  """
  del pred_boxes
  is_thing_map = coco_is_thing_map(201) if is_thing_map is None else is_thing_map
  target_sizes = processed_sizes if target_sizes is None else target_sizes
  logits, all_masks = np.asarray(pred_logits, np.float32), np.asarray(pred_masks, np.float32)
  results = []
  index = np.arange(logits.shape[1])[None].repeat(len(logits), 0) if mask_query_index is None else \
      np.asarray(mask_query_index)
  for cur_logits, cur_masks, cur_index, size, target_size in zip(
      logits, all_masks, index, np.asarray(processed_sizes).tolist(), np.asarray(target_sizes).tolist()):
    probs = softmax(cur_logits)
    scores, labels = probs.max(-1), probs.argmax(-1)
    keep = (labels != logits.shape[-1] - 1) & (scores > threshold)
    classes = labels[keep]
    missing = np.setdiff1d(np.flatnonzero(keep), cur_index)
    if missing.size:
      raise ValueError(f"{keep.sum()} queries are kept but masks were computed for {len(cur_index)} "
                       f"(mask_queries); rerun with more")
    position = np.argsort(cur_index)[np.searchsorted(cur_index, np.flatnonzero(keep), sorter=np.argsort(cur_index))]
    masks = np.asarray(resize_bilinear(cur_masks[position], size))
    stuff = {}
    for k, c in enumerate(classes.tolist()):
      if not is_thing_map[c]:
        stuff.setdefault(c, []).append(k)
    ids, area = _ids_and_areas(masks, size, target_size, [e for e in stuff.values() if len(e) > 1])
    small = np.asarray(area, np.int64) <= 4
    while small.any():
      masks, classes = masks[~small], classes[~small]
      ids, area = _ids_and_areas(masks, size, target_size, [])
      small = np.asarray(area, np.int64) <= 4
    segments_info = [{"id": i, "isthing": bool(is_thing_map[c]), "category_id": c, "area": a}
                     for i, (c, a) in enumerate(zip(classes.tolist(), area))]
    results.append({"png_ids": ids.astype(np.int32), "segments_info": segments_info})
  return results
