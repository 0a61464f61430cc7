"""Hungarian matching of predictions to targets, as the official HungarianMatcher.

Costs are computed on device for all decoder layers at once; the assignment is exact:
  "scipy": one `jax.pure_callback` running `scipy.optimize.linear_sum_assignment` for every
           (layer, image) on the cost sliced to that image's valid targets (under pmap it runs per
           device on local data; under vmap the callback receives the batched arrays).
  "optax": `optax.assignment.hungarian_algorithm`, fully in-graph and vmapped over layers and images.
Both give an optimal assignment. When several assignments have the same total cost they may pick
different ones ("scipy" is the official behaviour).

Shapes: L decoder layers, B images, Q queries, C + 1 logits (no-object last), M target slots.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from detr_jax.ops.boxes import cxcywh_to_xyxy, generalized_box_iou

BACKENDS = ("scipy", "optax")
# Both backends replace a non-finite cost (NaN/inf predictions: a diverged model) by this value, so
# that they always return a full assignment; the train step reports the non-finite predictions.
NONFINITE_COST = 1e6


def matching_cost(logits, boxes, labels, tgt_boxes, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
  """Official matching cost [L, B, Q, M].

  logits [L, B, Q, C+1], boxes [L, B, Q, 4] (cxcywh), labels int [B, M], tgt_boxes [B, M, 4] (cxcywh).
  C = cost_bbox * L1 - cost_class * softmax_prob[label] - cost_giou * GIoU(xyxy).
  """
  prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  boxes = boxes.astype(jnp.float32)
  tgt_boxes = tgt_boxes.astype(jnp.float32)
  index = jnp.broadcast_to(labels[None, :, None, :], prob.shape[:3] + labels.shape[-1:])
  class_cost = -jnp.take_along_axis(prob, index, axis=-1)
  l1_cost = jnp.abs(boxes[:, :, :, None, :] - tgt_boxes[None, :, None, :, :]).sum(-1)
  giou_cost = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes)[None])
  return cost_bbox * l1_cost + cost_class * class_cost + cost_giou * giou_cost


def assign_scipy(cost, valid):
  """Host callback: cost [..., L, B, Q, M], valid [..., B, M] -> query_for_target int32 [..., L, B, M]."""
  cost, valid = np.asarray(cost), np.asarray(valid, bool)
  num_layers, batch, num_queries, slots = cost.shape[-4:]
  result = np.full(cost.shape[:-2] + (slots,), -1, np.int32)
  flat_cost = cost.reshape((-1, num_layers, batch, num_queries, slots))
  flat_valid = valid.reshape((-1, batch, slots))
  flat_result = result.reshape((-1, num_layers, batch, slots))
  for n in range(flat_cost.shape[0]):
    for b in range(batch):
      cols = np.flatnonzero(flat_valid[n, b])
      if cols.size > num_queries:
        raise ValueError(f"matcher: image {b} has {cols.size} targets but there are only {num_queries} queries")
      for layer in range(num_layers):
        sub = np.where(np.isfinite(flat_cost[n, layer, b][:, cols]), flat_cost[n, layer, b][:, cols], NONFINITE_COST)
        rows, tgt = scipy.optimize.linear_sum_assignment(sub)
        flat_result[n, layer, b, cols[tgt]] = rows
  return result


def _assign_optax(cost, valid):
  """In-graph: cost [L, B, Q, M], valid [B, M] -> query_for_target int32 [L, B, M] (needs M <= Q).

  Targets are the rows; padded target rows cost 0 for every query, so they take the queries left
  over by the valid rows and do not change which assignments of the valid rows are optimal.
  """
  num_layers, batch, num_queries, slots = cost.shape
  if slots > num_queries:
    raise ValueError(f"matcher backend 'optax' needs max_objects ({slots}) <= num_queries ({num_queries})")
  rows = jnp.swapaxes(cost, -1, -2)
  rows = jnp.where(jnp.isfinite(rows), rows, NONFINITE_COST)
  rows = jnp.where(valid[None, :, :, None], rows, 0.0).reshape((-1, slots, num_queries))
  tgt, query = jax.vmap(optax.assignment.hungarian_algorithm)(rows)
  result = jnp.zeros(rows.shape[:2], jnp.int32)
  result = jax.vmap(lambda r, t, q: r.at[t].set(q.astype(jnp.int32)))(result, tgt, query)
  result = result.reshape((num_layers, batch, slots))
  return jnp.where(valid[None], result, -1)


def assign(cost, valid, backend="scipy"):
  """Exact assignment: cost [L, B, Q, M], valid bool [B, M] -> query_for_target int32 [L, B, M] (-1: invalid)."""
  cost = jax.lax.stop_gradient(cost)
  if cost.shape[-1] == 0:
    return jnp.zeros(cost.shape[:-2] + (0,), jnp.int32)
  if backend == "scipy":
    shape = jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32)
    return jax.pure_callback(assign_scipy, shape, cost, valid, vmap_method="broadcast_all")
  if backend == "optax":
    return _assign_optax(cost, valid)
  raise ValueError(f"unknown matcher backend {backend!r}; expected one of {BACKENDS}")


def match(logits, boxes, targets, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, backend="scipy"):
  """Match every decoder layer: logits [L, B, Q, C+1], boxes [L, B, Q, 4] -> query_for_target int32 [L, B, M].

  targets: labels int [B, M], boxes [B, M, 4] (cxcywh), valid bool [B, M]. Entry [l, b, j] is the query
  matched to target j of image b in layer l, -1 for padded slots. More valid targets than queries is
  an error.
  """
  cost = target_costs(logits, boxes, targets, cost_class, cost_bbox, cost_giou)
  return assign(cost, jnp.asarray(targets["valid"], bool), backend)


def target_costs(logits, boxes, targets, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
  """`matching_cost` [L, B, Q, M] of `match`'s arguments (no gradient; padded slots cost as class 0)."""
  labels = jnp.where(jnp.asarray(targets["valid"], bool), targets["labels"], 0).astype(jnp.int32)
  return matching_cost(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(boxes), labels, targets["boxes"],
                       cost_class, cost_bbox, cost_giou)
