"""The official optimizer: AdamW with a backbone group, frozen parameters, global-norm clipping.

Every parameter gets one label:
  frozen    FrozenBatchNorm statistics and affines, conv1 and layer1 of the backbone (the whole
            backbone when lr_backbone <= 0, and the whole detector when freeze_detr is set for
            panoptic stage 2): no update, no weight decay, not in the gradient norm;
  backbone  the other backbone weights and a learned position embedding: lr_backbone;
  rest      everything else: lr.
"""
import ml_collections
import optax
from flax import traverse_util

FROZEN, BACKBONE, REST = "frozen", "backbone", "rest"


def param_label(path: tuple[str, ...], lr_backbone: float, freeze_detr: bool = False,
                freeze_stem: bool = True) -> str:
  """Label of the parameter at `path` (a tuple of names in our parameter tree).

  freeze_stem=False also trains conv1 and layer1 (training from scratch, not the official recipe).
  """
  if freeze_detr and path[0] == "detr":
    return FROZEN
  if "position_embedding" in path:  # official name backbone.1.*: in the backbone lr group
    return BACKBONE if lr_backbone > 0 else FROZEN
  if "backbone" not in path:
    return REST
  inner = path[path.index("backbone") + 1:]
  frozen_bn = inner[-1] in ("scale", "bias", "mean", "var")
  stem = inner[0] == "conv1" or inner[0].startswith("layer1_")
  if lr_backbone <= 0 or frozen_bn or (freeze_stem and stem):
    return FROZEN
  return BACKBONE


def param_labels(params, lr_backbone: float, freeze_detr: bool = False, freeze_stem: bool = True):
  """A tree like `params` holding each parameter's label."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: param_label(p, lr_backbone, freeze_detr, freeze_stem) for p in flat})


def lr_schedule(base_lr: float, config: ml_collections.ConfigDict) -> optax.Schedule:
  """Constant lr, x0.1 from step `lr_drop_step` on (the official StepLR), times an optional linear
  warm-up from 0 over the first `warmup_steps` steps; both count steps from the start of training."""
  boundaries = {config.lr_drop_step: 0.1} if config.lr_drop_step > 0 else {}
  schedule = optax.piecewise_constant_schedule(base_lr, boundaries)
  if config.warmup_steps <= 0:
    return schedule
  warmup = optax.linear_schedule(0.0, 1.0, config.warmup_steps)
  return lambda step: warmup(step) * schedule(step)


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """config fields: lr, lr_backbone, weight_decay, clip_max_norm, lr_drop_step, warmup_steps,
  freeze_detr, freeze_stem."""
  labels = param_labels(params, config.lr_backbone, config.freeze_detr, config.freeze_stem)
  adamw = lambda lr: optax.adamw(lr_schedule(lr, config), b1=0.9, b2=0.999, eps=1e-8,
                                 weight_decay=config.weight_decay)
  frozen_mask = traverse_util.unflatten_dict(
      {p: label == FROZEN for p, label in traverse_util.flatten_dict(labels).items()})
  return optax.chain(
      optax.masked(optax.set_to_zero(), frozen_mask),  # frozen gradients never reach the norm
      optax.clip_by_global_norm(config.clip_max_norm) if config.clip_max_norm > 0 else optax.identity(),
      optax.multi_transform({REST: adamw(config.lr), BACKBONE: adamw(config.lr_backbone),
                             FROZEN: optax.set_to_zero()}, labels),
  )
