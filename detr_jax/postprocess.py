"""Post-processing of model outputs into detections in original image coordinates."""
import jax
import jax.numpy as jnp

from detr_jax.ops.boxes import cxcywh_to_xyxy


def postprocess_boxes(pred_logits, pred_boxes, orig_target_sizes):
  """The official PostProcess: no threshold, no-object excluded from the max.

  pred_logits [B, Q, C+1], pred_boxes [B, Q, 4] (cxcywh, normalised), orig_target_sizes [B, 2]
  (h, w) -> scores [B, Q], labels [B, Q], boxes [B, Q, 4] (x0, y0, x1, y1 in pixels).
  """
  probs = jax.nn.softmax(pred_logits, axis=-1)[..., :-1]
  h, w = orig_target_sizes[:, 0], orig_target_sizes[:, 1]
  scale = jnp.stack([w, h, w, h], axis=-1).astype(pred_boxes.dtype)[:, None, :]
  return probs.max(-1), probs.argmax(-1), cxcywh_to_xyxy(pred_boxes) * scale
