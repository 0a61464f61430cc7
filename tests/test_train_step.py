"""The pmapped train step: gradient accumulation, the parameter EMA, one compilation per bucket and
no copy of the train state on the CPU; the criterion's normalisation of micro-batches against the
official losses.

Batches come from the real input pipeline (synthetic images of random sizes with 0-3 objects,
padded into two buckets) and go through the real step, criterion (aux layer included), matcher
and optimizer (AdamW groups, clipping). The detector is a stand-in with DETR's inputs and
outputs, per image independent like DETR: a DETR train step takes ~45 s of CPU to compile here
(~12 s for this one), and what is tested lives in the step, not in the layers.
"""
import functools
import json
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax import compare
from detr_jax.config import dataset_config, model_config, training_config
from detr_jax.criterion import BASE_LOSSES, SetCriterion
from detr_jax.data import build_dataset
from detr_jax.data.stream import build_stream
from detr_jax.data.synthetic import CLASS_NAMES
from detr_jax.training import step as steps
from detr_jax.training.optimizer import make_optimizer
from detr_jax.training.setup import make_criterion
from detr_jax.training.state import TrainState
from helpers import fixture_path, load_npz

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
EMA_DECAY = 0.9
STEPS = 10


class StandInDetector(nn.Module):
  """DETR's interface: images [B, H, W, 3], mask [B, H, W] -> pred_logits [B, Q, C+1], pred_boxes
  [B, Q, 4] and one aux layer, from a masked mean of a strided convolution's features."""
  num_classes: int
  num_queries: int

  @nn.compact
  def __call__(self, images, mask, deterministic=True):
    features = nn.Conv(8, (3, 3), strides=(4, 4), name="conv")(images)
    keep = ~mask[:, ::4, ::4, None]
    pooled = jnp.sum(features * keep, axis=(1, 2)) / jnp.maximum(jnp.sum(keep, axis=(1, 2)), 1)
    hidden = pooled[:, None] + nn.Embed(self.num_queries, 8, name="query_embed")(jnp.arange(self.num_queries))
    layers = []
    for i in range(2):
      hidden = nn.relu(nn.Dense(8, name=f"layer_{i}")(hidden))
      layers.append((nn.Dense(self.num_classes + 1, name=f"class_{i}")(hidden),
                     nn.sigmoid(nn.Dense(4, name=f"box_{i}")(hidden))))
    return {"pred_logits": layers[1][0], "pred_boxes": layers[1][1],
            "aux_pred_logits": layers[0][0][None], "aux_pred_boxes": layers[0][1][None]}


def _config():
  config = training_config(seed=0, global_batch_size=4, max_objects=3, lr=1e-2, clip_max_norm=0.1)
  config.model = model_config(num_classes=len(CLASS_NAMES), num_queries=5)  # read by the criterion
  config.dataset = dataset_config(name="synthetic", augment=False, val_resize=False, bucket_sides=(48, 64), workers=0)
  # heights up to 48, widths up to 64: a batch pads to 48x48 or 48x64
  config.dataset.update(dict(image_size=((24, 48), (24, 64)), num_train=64, num_val=4, num_objects=(0, 3),
                             object_size=(0.3, 0.6), seed=0))
  return config


def _initial_params(model, batch):
  """Random parameters without compiling the initialiser (its random number kernels take seconds)."""
  shapes = jax.eval_shape(lambda k: model.init(k, batch["images"][:1], batch["mask"][:1])["params"],
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _train(p_train, state, batches, compilations):
  """Runs `batches` -> (per step: metrics, params, ema_params, compilations it caused; final state)."""
  record = []
  for batch in batches:
    before = len(compilations)
    state, metrics = p_train(state, steps.shard(batch, jax.local_device_count()))
    metrics = jax.device_get(metrics)
    record.append(({k: float(v[0]) for k, v in metrics.items()}, steps.unreplicate(state.params),
                   steps.unreplicate(state.ema_params), len(compilations) - before))
  return record, state


@pytest.fixture(scope="module")
def runs():
  """The stream's first STEPS batches trained with grad_accum_steps 1, and the first two with 2,
  from the same state, both with an EMA; plus the initial parameters and the batches."""
  config = _config()
  loader = build_stream(config, build_dataset(config, "train"), "train")
  batches = [{k: v for k, v in batch.items() if k not in ("step", "is_real")} for _, batch in zip(range(STEPS), loader)]
  loader.close()
  model = StandInDetector(num_classes=config.model.num_classes, num_queries=config.model.num_queries)
  params = _initial_params(model, batches[0])
  tx = make_optimizer(config, params)
  criterion = make_criterion(config)
  compilations = []
  listener = lambda event, duration, **kw: compilations.append(kw.get("fun_name")) if event == COMPILE_EVENT else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = {}
    for k, count in ((1, STEPS), (2, 2)):
      p_train, _ = steps.pmapped_steps(model, criterion, tx, grad_accum_steps=k, ema_decay=EMA_DECAY)
      state = steps.replicate(TrainState.create(params, tx, jax.random.PRNGKey(1), ema=True), jax.local_device_count())
      result[k], _ = _train(p_train, state, batches[:count], compilations)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return {"params": params, "batches": batches, **result}


def test_two_micro_batches_update_like_the_whole_batch(runs):
  one, two = runs[1], runs[2]
  for batch in runs["batches"][:2]:  # the halves hold different numbers of boxes: local counts would not do
    counts = batch["valid"].sum(axis=1)
    assert counts[:2].sum() != counts[2:].sum()
  for step in range(2):
    (metrics_1, params_1, _, _), (metrics_2, params_2, _, _) = one[step], two[step]
    for name in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"):
      assert metrics_2[name] == pytest.approx(metrics_1[name], rel=1e-5), (step, name)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7), params_1, params_2)
  assert one[1][0]["loss"] != one[0][0]["loss"]  # the first update changed the model


def test_the_ema_follows_each_update(runs):
  previous_ema = runs["params"]  # the EMA starts at the initial parameters
  for metrics, params, ema, _ in runs[1][:3]:
    expected = jax.tree_util.tree_map(lambda e, p: EMA_DECAY * e + (1 - EMA_DECAY) * p, previous_ema, params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7), expected, ema)
    previous_ema = ema
  # it lags behind: not the parameters themselves
  assert not np.allclose(runs[1][2][2]["layer_1"]["kernel"], runs[1][2][1]["layer_1"]["kernel"])


def test_the_step_compiles_once_per_bucket(runs):
  batches = runs["batches"]
  shapes = [b["images"].shape[1:3] for b in batches]
  # the data varies as intended: two buckets, each seen with different object counts and image sizes
  assert sorted(set(shapes)) == [(48, 48), (48, 64)]
  for shape in set(shapes):
    inside = [b for b, s in zip(batches, shapes) if s == shape]
    assert len({tuple(b["valid"].sum(axis=1)) for b in inside}) > 1
    assert len({b["size"].tobytes() for b in inside}) > 1
  for k in (1, 2):
    compiled = [record[3] for record in runs[k]]
    first_of_bucket = [shapes.index(s) == i for i, s in enumerate(shapes[:len(compiled)])]
    assert compiled == [int(first) for first in first_of_bucket], (k, shapes, compiled)


def test_micro_batches_of_one_image_give_the_official_loss_of_the_batch():
  """The official losses of a 3-image batch (masks included, targets 4, 0 and 7) as the mean of the
  criterion on each image with the batch's counts (accumulated_valid)."""
  ref = load_npz("criterion_masks_small.npz")
  with open(fixture_path("criterion_small.json")) as f:
    expected = json.load(f)["masks"]
  slots = ref["tgt_labels"].shape[1]
  targets = {"labels": ref["tgt_labels"].astype(np.int32), "boxes": ref["tgt_boxes"], "masks": ref["tgt_masks"],
             "valid": np.arange(slots)[None] < ref["tgt_counts"][:, None]}
  outputs = {k: ref[k] for k in compare.CRITERION_PREDICTIONS if k in ref}
  criterion = jax.jit(SetCriterion(losses=BASE_LOSSES + ("masks",)))
  accumulated_valid = targets["valid"][:, None]  # [3 micro-batches, 1 image, slots]
  parts = []
  for i in range(3):
    image = lambda x, axis=0: np.take(x, [i], axis=axis)
    micro_outputs = {k: image(v, axis=1 if k.startswith("aux_") else 0) for k, v in outputs.items()}
    parts.append(criterion(micro_outputs, {k: image(v) for k, v in targets.items()},
                           accumulated_valid=accumulated_valid))
  np.testing.assert_allclose(np.mean([total for total, _ in parts]), expected["total_weighted_loss"], rtol=1e-5)
  for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_ce_0", "loss_giou_1"):
    np.testing.assert_allclose(np.mean([losses[key] for _, losses in parts]), expected["loss_dict"][key],
                               rtol=1e-5, err_msg=key)


def _copied_inputs(hlo: str) -> int:
  """Elements that a compiled module's entry computation copies straight from its inputs."""
  entry = hlo[hlo.index("\nENTRY"):]
  inputs = set(re.findall(r"(%\S+) = \S+ parameter\(", entry))
  copies = re.findall(r"= \w+\[([\d,]*)\]\S* copy\((%[^)]+)\)", entry)
  return sum(math.prod(int(d) for d in dims.split(",") if d) for dims, source in copies if source in inputs)


def test_the_cpu_step_copies_no_parameters(runs):
  """On the CPU the state is not donated: donated, XLA copied every parameter's Adam moments (and
  the parameters) ahead of their in-place update, 16% of a DETR-R50 step (step.py)."""
  config, batch = _config(), steps.shard(runs["batches"][0], jax.local_device_count())
  model = StandInDetector(num_classes=config.model.num_classes, num_queries=config.model.num_queries)
  tx, criterion = make_optimizer(config, runs["params"]), make_criterion(config)
  p_train, _ = steps.pmapped_steps(model, criterion, tx)
  state = steps.replicate(TrainState.create(runs["params"], tx, jax.random.PRNGKey(1)), jax.local_device_count())
  hlo = p_train.lower(state, batch).compile().as_text()
  param_elements = sum(x.size for x in jax.tree_util.tree_leaves(runs["params"]))
  assert _copied_inputs(hlo) < 0.05 * param_elements  # the PRNG key, at most
  # The measure sees the copies: the same step with the state donated.
  donated = jax.pmap(functools.partial(steps.train_step, model=model, criterion=criterion, tx=tx),
                     axis_name=steps.AXIS, donate_argnums=(0,))
  assert _copied_inputs(donated.lower(state, batch).compile().as_text()) >= 2 * param_elements
