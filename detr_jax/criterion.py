"""SetCriterion: the official DETR losses, vectorised over images with gathers.

outputs: pred_logits [B, Q, C+1] (no-object last), pred_boxes [B, Q, 4] (cxcywh), optional
aux_pred_logits [L-1, B, Q, C+1], aux_pred_boxes [L-1, B, Q, 4], pred_masks [B, Q, h, w] (logits).
targets: labels int [B, M], boxes [B, M, 4] (cxcywh), valid bool [B, M], optional masks [B, M, H, W]
(binary, zero-padded bottom/right to the padded image size).
Loss keys: loss_ce, class_error, loss_bbox, loss_giou, cardinality_error, [loss_mask, loss_dice] for the
final layer, and loss_ce_i, loss_bbox_i, loss_giou_i, cardinality_error_i for aux layer i.
"""
import dataclasses

import jax
import jax.numpy as jnp

from detr_jax.matcher import match, target_costs
from detr_jax.ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from detr_jax.ops.resize import resize_bilinear

BASE_LOSSES = ("labels", "boxes", "cardinality")


def weight_dict(num_aux_layers, masks=False, bbox_loss_coef=5.0, giou_loss_coef=2.0, mask_loss_coef=1.0,
                dice_loss_coef=1.0):
  """The official build() weight dict, with `_i` copies for each aux layer."""
  weights = {"loss_ce": 1.0, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
  if masks:
    weights.update(loss_mask=mask_loss_coef, loss_dice=dice_loss_coef)
  weights.update({f"{k}_{i}": v for i in range(num_aux_layers) for k, v in list(weights.items())})
  return weights


def num_boxes_normalizer(valid, axis_name=None):
  """max(mean over `axis_name` devices of the local valid-target count, 1), without gradient."""
  count = jnp.sum(valid).astype(jnp.float32)
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name) / jax.lax.psum(1, axis_name)
  return jax.lax.stop_gradient(jnp.maximum(count, 1.0))


def class_weight_sum(valid, num_queries, eos_coef, axis_name=None):
  """Sum of the class-loss weights of images whose valid targets [..., B, M] are all matched (the
  matchers match every one): per image 1 for each target's query, eos_coef for the other queries.
  With `axis_name`: the mean over the devices, as in `loss_labels`. No gradient."""
  matched = jnp.sum(valid, axis=-1).astype(jnp.float32)
  total = jnp.sum(matched + eos_coef * (num_queries - matched))
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name) / jax.lax.psum(1, axis_name)
  return jax.lax.stop_gradient(total)


def _gather_queries(x, query_for_target):
  """x [B, Q, ...], query_for_target [B, M] (-1 allowed) -> x of the matched queries [B, M, ...]."""
  index = jnp.maximum(query_for_target, 0)
  return jax.vmap(lambda xb, ib: xb[ib])(x, index)


def loss_labels(logits, query_for_target, labels, valid, eos_coef, axis_name=None, weight_sum=None):
  """Weighted cross-entropy mean over all B*Q slots (no-object weight eos_coef) -> scalar.

  With `axis_name` the weight sum is that of the global batch, averaged over the devices (as
  num_boxes is): the mean over devices of the local losses is then the global weighted mean, so
  the loss does not depend on how the batch is split. weight_sum: given instead (see
  `SetCriterion.__call__`'s accumulated_valid).
  """
  num_queries, num_logits = logits.shape[1:]
  target = jnp.full(logits.shape[:2], num_logits - 1, jnp.int32)
  slot = jnp.where(valid, query_for_target, num_queries)
  target = jax.vmap(lambda t, q, l: t.at[q].set(l, mode="drop"))(target, slot, labels)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), target[..., None], axis=-1)[..., 0]
  weight = jnp.where(target == num_logits - 1, eos_coef, 1.0)
  if weight_sum is None:
    weight_sum = jnp.sum(weight)
    if axis_name is not None:
      weight_sum = jax.lax.psum(weight_sum, axis_name) / jax.lax.psum(1, axis_name)
  return jnp.sum(weight * nll) / jax.lax.stop_gradient(weight_sum)


def class_error(logits, query_for_target, labels, valid):
  """100 - top-1 accuracy (%) over matched queries; 100 without targets."""
  predicted = jnp.argmax(_gather_queries(logits, query_for_target), axis=-1)
  correct = jnp.sum((predicted == labels) & valid)
  return jax.lax.stop_gradient(100.0 - 100.0 * correct / jnp.maximum(jnp.sum(valid), 1))


def cardinality_error(logits, valid):
  """Mean over images of |#queries not predicting no-object - #targets| (no gradient)."""
  predicted = jnp.sum(jnp.argmax(logits, axis=-1) != logits.shape[-1] - 1, axis=-1)
  return jax.lax.stop_gradient(jnp.mean(jnp.abs(predicted - jnp.sum(valid, axis=-1)).astype(jnp.float32)))


def loss_boxes(boxes, query_for_target, tgt_boxes, valid, num_boxes):
  """(L1 sum, sum of 1 - GIoU) over matched pairs, each / num_boxes."""
  # Padded slots compare a fixed box with itself, so they add 0 and no nan can leak into the gradient.
  safe = jnp.array([0.5, 0.5, 1.0, 1.0], jnp.float32)
  src = jnp.where(valid[..., None], _gather_queries(boxes, query_for_target), safe)
  tgt_boxes = jnp.where(valid[..., None], tgt_boxes, safe)
  l1 = jnp.abs(src - tgt_boxes)
  giou = generalized_box_iou(cxcywh_to_xyxy(src)[..., None, :], cxcywh_to_xyxy(tgt_boxes)[..., None, :])[..., 0, 0]
  return jnp.sum(l1) / num_boxes, jnp.sum(1.0 - giou) / num_boxes


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """Per-mask focal loss averaged over pixels: logits, targets [..., P] -> [...]."""
  prob = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = prob * targets + (1 - prob) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))
  return jnp.mean(loss, axis=-1)


def dice_loss(logits, targets):
  """Per-mask dice loss with +1 smoothing: logits, targets [..., P] -> [...]."""
  prob = jax.nn.sigmoid(logits)
  numerator = 2 * jnp.sum(prob * targets, axis=-1)
  return 1 - (numerator + 1) / (jnp.sum(prob, axis=-1) + jnp.sum(targets, axis=-1) + 1)


def loss_masks(pred_masks, query_for_target, tgt_masks, valid, num_boxes):
  """(focal, dice) over matched masks, each / num_boxes; predictions upsampled to the target mask size."""
  batch, slots = query_for_target.shape
  height, width = tgt_masks.shape[-2:]
  src = _gather_queries(pred_masks, query_for_target)
  src = resize_bilinear(src.reshape((batch * slots,) + src.shape[2:]), (height, width))
  src = src.reshape(batch, slots, height * width)
  tgt = tgt_masks.astype(jnp.float32).reshape(batch, slots, height * width)
  focal = jnp.sum(jnp.where(valid, sigmoid_focal_loss(src, tgt), 0.0)) / num_boxes
  dice = jnp.sum(jnp.where(valid, dice_loss(src, tgt), 0.0)) / num_boxes
  return focal, dice


def every_layer(outputs):
  """(logits [L, B, Q, C+1], boxes [L, B, Q, 4]) of the aux layers (first) and the final one."""
  logits, boxes = outputs["pred_logits"][None], outputs["pred_boxes"][None]
  if "aux_pred_logits" in outputs:
    logits = jnp.concatenate([outputs["aux_pred_logits"], logits])
    boxes = jnp.concatenate([outputs["aux_pred_boxes"], boxes])
  return logits, boxes


@dataclasses.dataclass(frozen=True)
class SetCriterion:
  """The official SetCriterion (weights and matcher costs as in the official build() defaults).

  losses: any of "labels", "boxes", "cardinality", "masks" (masks: final layer only).
  __call__(outputs, targets, axis_name=None, accumulated_valid=None) -> (total weighted loss, dict of
  every loss and metric).

  accumulated_valid: `valid` [k, B, M] of this device's whole batch when `targets` is one of its k
  micro-batches (gradient accumulation). The losses are then normalised by the whole batch's box
  count and class-weight sum (over the `axis_name` devices too) divided by k, so that the mean of
  the k micro-batches' losses (and gradients) is the whole batch's. class_error and
  cardinality_error stay the micro-batch's.
  """
  num_classes: int = 91
  eos_coef: float = 0.1
  losses: tuple = BASE_LOSSES
  bbox_loss_coef: float = 5.0
  giou_loss_coef: float = 2.0
  mask_loss_coef: float = 1.0
  dice_loss_coef: float = 1.0
  cost_class: float = 1.0
  cost_bbox: float = 5.0
  cost_giou: float = 2.0
  matcher_backend: str = "scipy"

  def weight_dict(self, num_aux_layers):
    return weight_dict(num_aux_layers, "masks" in self.losses, self.bbox_loss_coef, self.giou_loss_coef,
                       self.mask_loss_coef, self.dice_loss_coef)

  def match(self, outputs, targets):
    """Matching of every layer (aux layers first, final last) -> query_for_target int32 [L, B, M]."""
    return match(*every_layer(outputs), targets, self.cost_class, self.cost_bbox, self.cost_giou, self.matcher_backend)

  def match_costs(self, outputs, targets):
    """The matching costs [L, B, Q, M] that `match` assigns on."""
    return target_costs(*every_layer(outputs), targets, self.cost_class, self.cost_bbox, self.cost_giou)

  def layer_losses(self, logits, boxes, query_for_target, targets, num_boxes, suffix="", axis_name=None,
                   weight_sum=None):
    """labels / boxes / cardinality losses of one layer, keys with `suffix`."""
    valid = jnp.asarray(targets["valid"], bool)
    labels = jnp.where(valid, targets["labels"], 0).astype(jnp.int32)
    result = {}
    if "labels" in self.losses:
      result["loss_ce"] = loss_labels(logits, query_for_target, labels, valid, self.eos_coef, axis_name, weight_sum)
      if not suffix:
        result["class_error"] = class_error(logits, query_for_target, labels, valid)
    if "boxes" in self.losses:
      result["loss_bbox"], result["loss_giou"] = loss_boxes(
          boxes, query_for_target, targets["boxes"].astype(jnp.float32), valid, num_boxes)
    if "cardinality" in self.losses:
      result["cardinality_error"] = cardinality_error(logits, valid)
    return {k + suffix: v for k, v in result.items()}

  def __call__(self, outputs, targets, axis_name=None, accumulated_valid=None):
    if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
      raise ValueError(f"pred_logits has {outputs['pred_logits'].shape[-1]} logits, expected num_classes + 1 = "
                       f"{self.num_classes + 1}")
    outputs = {k: v.astype(jnp.float32) for k, v in outputs.items()}
    valid = jnp.asarray(targets["valid"], bool)
    query_for_target = jax.lax.stop_gradient(self.match(outputs, targets))
    if accumulated_valid is None:
      num_boxes, weight_sum = num_boxes_normalizer(valid, axis_name), None
    else:
      parts, num_queries = accumulated_valid.shape[0], outputs["pred_logits"].shape[1]
      num_boxes = num_boxes_normalizer(accumulated_valid, axis_name) / parts
      weight_sum = class_weight_sum(accumulated_valid, num_queries, self.eos_coef, axis_name) / parts
    result = self.layer_losses(outputs["pred_logits"], outputs["pred_boxes"], query_for_target[-1], targets,
                               num_boxes, axis_name=axis_name, weight_sum=weight_sum)
    if "masks" in self.losses:
      result["loss_mask"], result["loss_dice"] = loss_masks(
          outputs["pred_masks"], query_for_target[-1], targets["masks"], valid, num_boxes)
    num_aux = query_for_target.shape[0] - 1
    for i in range(num_aux):
      result.update(self.layer_losses(outputs["aux_pred_logits"][i], outputs["aux_pred_boxes"][i],
                                      query_for_target[i], targets, num_boxes, f"_{i}", axis_name, weight_sum))
    weights = self.weight_dict(num_aux)
    total = sum(result[k] * weights[k] for k in result if k in weights)
    return total, result
