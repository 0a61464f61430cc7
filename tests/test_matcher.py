"""Box ops, matching costs and every assignment backend against scipy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from detr_jax.matcher import BACKENDS, assign, match, matching_cost
from detr_jax.ops.boxes import box_iou, generalized_box_iou, masks_to_boxes


def test_box_iou_and_giou_values():
  a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
  b = jnp.array([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
  iou, union = box_iou(a, b)
  np.testing.assert_allclose(iou, [[1 / 7, 0.0, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(union, [[7.0, 6.0, 4.0]], rtol=1e-6)
  # enclosing boxes: 3x3 = 9, 5x2 = 10, 2x2 = 4
  np.testing.assert_allclose(generalized_box_iou(a, b), [[1 / 7 - 2 / 9, -0.4, 1.0]], rtol=1e-6)


def test_giou_broadcasts_over_leading_axes():
  rng = np.random.default_rng(0)
  x0 = rng.uniform(0, 1, (2, 3, 5, 2))
  boxes1 = np.concatenate([x0, x0 + rng.uniform(0.1, 1, x0.shape)], -1).astype(np.float32)
  boxes2 = boxes1[:, :, :4]
  batched = generalized_box_iou(boxes1, boxes2)
  assert batched.shape == (2, 3, 5, 4)
  np.testing.assert_allclose(batched[1, 2], generalized_box_iou(boxes1[1, 2], boxes2[1, 2]), rtol=1e-6)


def test_masks_to_boxes_inclusive_and_empty():
  masks = np.zeros((3, 6, 7), bool)
  masks[0, 1:4, 2:6] = True
  masks[1, 5, 0] = True
  boxes = np.asarray(masks_to_boxes(masks))
  np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [0, 5, 0, 5], [0, 0, 0, 0]])


def _numpy_cost(logits, boxes, labels, tgt_boxes):
  """float64 reference of the official matching cost for one layer and image."""
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  l1 = np.abs(boxes[:, None] - tgt_boxes[None]).sum(-1)
  xyxy = lambda b: np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)
  p, t = xyxy(boxes)[:, None], xyxy(tgt_boxes)[None]
  inter = np.prod(np.clip(np.minimum(p[..., 2:], t[..., 2:]) - np.maximum(p[..., :2], t[..., :2]), 0, None), -1)
  union = np.prod(p[..., 2:] - p[..., :2], -1) + np.prod(t[..., 2:] - t[..., :2], -1) - inter
  hull = np.prod(np.maximum(p[..., 2:], t[..., 2:]) - np.minimum(p[..., :2], t[..., :2]), -1)
  giou = inter / union - (hull - union) / hull
  return 5 * l1 - prob[:, labels] - 2 * giou


def _random_problem(rng, layers=2, batch=4, queries=12, slots=6, counts=(0, 3, 6, 1), classes=8):
  logits = rng.normal(size=(layers, batch, queries, classes + 1)).astype(np.float32)
  boxes = rng.uniform(0.2, 0.8, (layers, batch, queries, 4)).astype(np.float32)
  boxes[..., 2:] *= 0.5
  valid = np.arange(slots)[None] < np.asarray(counts)[:, None]
  labels = np.where(valid, rng.integers(0, classes, (batch, slots)), -1).astype(np.int32)
  tgt_boxes = np.where(valid[..., None], rng.uniform(0.2, 0.8, (batch, slots, 4)), 0).astype(np.float32)
  return logits, boxes, {"labels": labels, "boxes": tgt_boxes, "valid": valid}


def test_matching_cost_matches_numpy():
  logits, boxes, targets = _random_problem(np.random.default_rng(1))
  labels = np.maximum(targets["labels"], 0)
  cost = np.asarray(matching_cost(logits, boxes, labels, targets["boxes"]))
  for layer in range(2):
    for b in range(4):
      ref = _numpy_cost(logits[layer, b].astype(np.float64), boxes[layer, b].astype(np.float64), labels[b],
                        targets["boxes"][b].astype(np.float64))
      np.testing.assert_allclose(cost[layer, b][:, targets["valid"][b]], ref[:, targets["valid"][b]], atol=1e-5)


def _scipy_reference(cost, valid):
  result = np.full(cost.shape[:-2] + cost.shape[-1:], -1)
  for index in np.ndindex(cost.shape[:-2]):
    cols = np.flatnonzero(valid[index[-1]])
    rows, tgt = scipy.optimize.linear_sum_assignment(cost[index][:, cols])
    result[index][cols[tgt]] = rows
  return result


def _assignment_cost(cost, qft):
  """Total cost per (layer, image) of query_for_target; checks that queries are distinct."""
  totals = np.zeros(cost.shape[:-2])
  for index in np.ndindex(cost.shape[:-2]):
    targets = np.flatnonzero(qft[index] >= 0)
    assert len(set(qft[index][targets].tolist())) == targets.size
    totals[index] = cost[index][qft[index][targets], targets].sum()
  return totals


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("queries,slots,counts", [(12, 6, (0, 3, 6, 1)), (6, 6, (6, 6, 2, 0)), (9, 3, (0, 0, 0, 0)),
                                                  (5, 1, (1, 0, 1, 1))])
def test_backend_equals_scipy_on_random_costs(backend, queries, slots, counts):
  rng = np.random.default_rng(queries * 100 + slots)
  cost = rng.normal(size=(3, 4, queries, slots)).astype(np.float32)
  valid = np.arange(slots)[None] < np.asarray(counts)[:, None]
  ours = np.asarray(jax.jit(lambda c, v: assign(c, v, backend))(cost, valid))
  assert ours.dtype == np.int32 and ours.shape == (3, 4, slots)
  np.testing.assert_array_equal(ours, _scipy_reference(cost, valid))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_on_tied_costs_reaches_the_optimal_cost(backend):
  rng = np.random.default_rng(7)
  cost = rng.integers(0, 3, (4, 5, 10, 6)).astype(np.float32)
  valid = np.arange(6)[None] < np.array([6, 4, 0, 1, 5])[:, None]
  ours = np.asarray(assign(cost, valid, backend))
  reference = _scipy_reference(cost, valid)
  np.testing.assert_array_equal(ours < 0, reference < 0)
  np.testing.assert_array_equal(_assignment_cost(cost, ours), _assignment_cost(cost, reference))


@pytest.mark.parametrize("backend", BACKENDS)
def test_match_zero_targets_and_random(backend):
  logits, boxes, targets = _random_problem(np.random.default_rng(2))
  ours = np.asarray(jax.jit(lambda l, b, t: match(l, b, t, backend=backend))(logits, boxes, targets))
  cost = np.asarray(matching_cost(logits, boxes, np.maximum(targets["labels"], 0), targets["boxes"]))
  np.testing.assert_array_equal(ours, _scipy_reference(cost, targets["valid"]))
  assert (ours[:, 0] == -1).all()


def test_scipy_backend_allows_more_slots_than_queries():
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(1, 2, 4, 7)).astype(np.float32)
  valid = np.arange(7)[None] < np.array([4, 2])[:, None]
  np.testing.assert_array_equal(assign(cost, valid, "scipy"), _scipy_reference(cost, valid))


def test_more_targets_than_queries_raises():
  cost = np.zeros((1, 2, 3, 5), np.float32)
  valid = np.arange(5)[None] < np.array([2, 4])[:, None]
  with pytest.raises(Exception, match="image 1 has 4 targets but there are only 3 queries"):
    jax.block_until_ready(jax.jit(lambda c, v: assign(c, v, "scipy"))(cost, valid))
  with pytest.raises(ValueError, match="max_objects"):
    assign(cost, valid, "optax")


def test_unknown_backend_raises():
  with pytest.raises(ValueError, match="unknown matcher backend"):
    assign(np.zeros((1, 1, 2, 2), np.float32), np.ones((1, 2), bool), "hungarian")


def test_nan_boxes_still_give_a_full_assignment_with_both_backends():
  """A diverged model's NaN boxes never crash or hang the matcher (the train step reports them)."""
  logits, boxes, targets = _random_problem(np.random.default_rng(4))
  boxes[1, 2, 5] = np.nan
  for backend in BACKENDS:
    ours = np.asarray(jax.jit(lambda l, b, t: match(l, b, t, backend=backend))(logits, boxes, targets))
    np.testing.assert_array_equal(ours >= 0, np.broadcast_to(targets["valid"], ours.shape), err_msg=backend)
    for layer in ours:  # each image: distinct queries
      for row, valid in zip(layer, targets["valid"]):
        assert len(set(row[valid].tolist())) == int(valid.sum()), backend


def test_nan_in_padded_target_slots_is_ignored():
  logits, boxes, targets = _random_problem(np.random.default_rng(5))
  clean = np.asarray(match(logits, boxes, targets))
  targets["boxes"] = np.where(targets["valid"][..., None], targets["boxes"], np.nan).astype(np.float32)
  for backend in BACKENDS:
    np.testing.assert_array_equal(match(logits, boxes, targets, backend=backend), clean)


def test_scipy_backend_under_vmap():
  rng = np.random.default_rng(6)
  cost = rng.normal(size=(3, 2, 4, 8, 5)).astype(np.float32)
  valid = rng.uniform(size=(3, 4, 5)) < 0.6
  ours = np.asarray(jax.jit(jax.vmap(lambda c, v: assign(c, v, "scipy")))(cost, valid))
  for n in range(3):
    np.testing.assert_array_equal(ours[n], _scipy_reference(cost[n], valid[n]))
