"""Compare our outputs with reference outputs of the official PyTorch code.

  python -m detr_jax.compare model --checkpoint DIR --inputs INPUTS.npz --reference REF.npz \
      [--atol 1e-4] [--rtol 1e-4] [--intermediates] [--save OUT.npz] [--runtime jax|onnxruntime]

INPUTS.npz: images_padded (float32 NCHW), mask (bool, True = padding), optionally
orig_target_sizes (int, rows (h, w)). REF.npz: any of the arrays named in MODEL_KEYS, in the
layout of the official reference data. An array passes when
max|ours - ref| <= atol + rtol * max|ref| (integer and bool arrays: exactly equal).
transformers' names are accepted too: INPUTS.npz with pixel_values (NCHW) and pixel_mask (1 = real
pixel, the reverse of our mask), REF.npz with logits (= pred_logits), pred_boxes, pred_masks.
--runtime onnxruntime checks the forward exported to ONNX and run by onnxruntime
(detr_jax/onnx_runtime.py; outputs only, no intermediates).

  python -m detr_jax.compare criterion --reference CRITERION.npz [--atol 1e-5] [--rtol 1e-4] \
      [--backend scipy|optax]

CRITERION.npz (layout of the official criterion reference data): predictions pred_logits,
pred_boxes, aux_pred_logits, aux_pred_boxes, optional pred_masks; padded targets tgt_counts,
tgt_labels, tgt_boxes, optional tgt_masks. Our matcher and SetCriterion run with the official
defaults (mask losses iff pred_masks is present) and are compared with match_src/match_tgt,
aux_match_src/aux_match_tgt, every lossdict_*, total_weighted_loss and every grad_* array.

  python -m detr_jax.compare train --checkpoint DIR --reference TRAIN.npz [--steps K] \
      [--dtype float32|bfloat16] [--grad-accum-steps N] [--save OURS.npz]

TRAIN.npz (tools/dump_official_train.py): a batch (images_padded NCHW, mask, labels_i, boxes_i),
`settings` (JSON: lr, lr_backbone, weight_decay, clip_max_norm, eos_coef, matcher costs, loss
coefficients, dropout 0, aux_loss, steps) and the official trainer's results: loss_step{k} (the
weighted total before update k), lossdict_step{k}_* (last layer, unweighted) and delta_<official
key> (a parameter after all the updates minus before). Our train step runs K steps from the
checkpoint's weights with those settings. Losses pass within a relative tolerance that grows
with the step, deltas within an RMS error in units of K * lr (TRAIN_LOSS_TOLERANCE,
TRAIN_DELTA_TOLERANCE: measured, per model dtype).

Exit code: 0 all pass, 1 some fail, 2 usage error (bad arguments or input files: one `error:` line).
"""
import argparse
import json
import sys
import zipfile
from typing import NamedTuple

import numpy as np

from detr_jax.errors import UserError

MODEL_KEYS = ("pred_logits", "pred_boxes", "aux_pred_logits", "aux_pred_boxes", "pred_masks",
              "pp_scores", "pp_labels", "pp_boxes")
REQUIRED_KEYS = ("pred_logits", "pred_boxes")
CRITERION_REQUIRED = ("pred_logits", "pred_boxes", "tgt_counts", "tgt_labels", "tgt_boxes")
CRITERION_PREDICTIONS = ("pred_logits", "pred_boxes", "aux_pred_logits", "aux_pred_boxes", "pred_masks")


class Row(NamedTuple):
  name: str
  max_abs_err: float
  tolerance: float
  passed: bool
  note: str = ""


def compare_arrays(ours: dict, ref: dict, keys, atol: float, rtol: float) -> list[Row]:
  rows = []
  for key in keys:
    a, b = np.asarray(ours[key]), np.asarray(ref[key])
    if a.shape != b.shape:
      rows.append(Row(key, float("nan"), float("nan"), False, f"shape {a.shape} vs reference {b.shape}"))
      continue
    exact = b.dtype.kind in "biu"
    err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    tol = 0.0 if exact else atol + rtol * (float(np.abs(b).max()) if b.size else 0.0)
    rows.append(Row(key, err, tol, bool(err <= tol), "exact" if exact else ""))
  return rows


def print_table(rows: list[Row], out=None) -> None:
  out = out or sys.stdout
  width = max([len(r.name) for r in rows] + [5])
  print(f"{'array':<{width}}  {'max abs err':>12}  {'tolerance':>10}  result", file=out)
  for r in rows:
    note = f"  ({r.note})" if r.note else ""
    print(f"{r.name:<{width}}  {r.max_abs_err:>12.3e}  {r.tolerance:>10.3e}  {'pass' if r.passed else 'FAIL'}{note}",
          file=out)
  failed = sum(not r.passed for r in rows)
  print(f"{len(rows) - failed} of {len(rows)} arrays within tolerance", file=out)


def _load_npz(path: str, what: str, text_keys=()) -> dict:
  """The named arrays of an .npz file; anything else is a UserError naming the file.

  text_keys: arrays that may instead hold one string (e.g. a JSON `settings`)."""
  try:
    with open(path, "rb") as f:
      head = f.read(6)
    if head == b"\x93NUMPY":
      raise UserError(f"{what} {path}: a single .npy array, expected an .npz archive of named arrays (np.savez)")
    if not head.startswith(b"PK\x03\x04"):
      raise UserError(f"{what} {path}: not an .npz archive (np.savez output)")
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except OSError as e:
    raise UserError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
  except (ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{what} {path}: unreadable .npz archive ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]})") from None
  for key, value in arrays.items():
    if key in text_keys and isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.ndim == 0:
      continue
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
      kind = value.dtype if isinstance(value, np.ndarray) else "not an .npy array"
      raise UserError(f"{what} {path}: {key!r} is {kind}, expected a numeric or bool array")
  return arrays


def check_inputs(inputs: dict, path: str) -> None:
  """images_padded float [B, 3, H, W] (NCHW), mask bool [B, H, W], optional orig_target_sizes [B, 2]."""
  for key in ("images_padded", "mask"):
    if key not in inputs:
      raise UserError(f"inputs {path}: missing array {key!r} (have {sorted(inputs)})")
  images, mask = inputs["images_padded"], inputs["mask"]
  if images.dtype.kind != "f":
    raise UserError(f"inputs {path}: images_padded has dtype {images.dtype}, expected float32 (normalised pixels)")
  if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
    hint = ", not channels last" if images.ndim == 4 and images.shape[-1] == 3 else ""
    raise UserError(f"inputs {path}: images_padded has shape {images.shape}, expected [B, 3, H, W] (NCHW{hint})")
  batch, _, height, width = images.shape
  if mask.dtype != bool:
    raise UserError(f"inputs {path}: mask has dtype {mask.dtype}, expected bool (True = padding)")
  if mask.shape != (batch, height, width):
    raise UserError(f"inputs {path}: mask has shape {mask.shape}, expected {(batch, height, width)} "
                    "([B, H, W] of images_padded)")
  sizes = inputs.get("orig_target_sizes")
  if sizes is not None and (sizes.shape != (batch, 2) or sizes.dtype.kind == "b"):
    raise UserError(f"inputs {path}: orig_target_sizes has shape {sizes.shape} ({sizes.dtype}), expected "
                    f"{(batch, 2)} numbers: (h, w) per image")


def run_model(config, params, images_nchw, mask, intermediates: bool = False, runtime: str = "jax"):
  """Eval-mode forward in float32 at highest matmul precision; returns (outputs, intermediates).
  runtime onnxruntime: the forward's ONNX export run by onnxruntime (no intermediates)."""
  import jax

  from detr_jax.models import build_model
  images = np.asarray(images_nchw, np.float32).transpose(0, 2, 3, 1)
  if runtime == "onnxruntime":
    from detr_jax.onnx_runtime import OnnxFunction  # the optional onnx extra
    model = build_model(config.model, for_onnx=True)
    outputs = OnnxFunction(lambda x, m: model.apply({"params": params}, x, m))(images, np.asarray(mask, bool))
    return jax.tree_util.tree_map(np.asarray, outputs), {}
  model = build_model(config.model)
  mutable = ["intermediates"] if intermediates else []
  with jax.default_matmul_precision("highest"):
    outputs, state = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m, mutable=mutable))(
        params, images, np.asarray(mask, bool))
  return jax.tree_util.tree_map(np.asarray, outputs), state.get("intermediates", {})


def from_hf_names(inputs: dict, ref: dict, inputs_path: str) -> tuple[dict, dict]:
  """transformers' arrays renamed to ours: pixel_values -> images_padded, pixel_mask (1 = real
  pixel) -> mask (True = padding), logits -> pred_logits. Arrays already in our names stay."""
  inputs, ref = dict(inputs), dict(ref)
  if "pixel_values" in inputs and "images_padded" not in inputs:
    inputs["images_padded"] = inputs.pop("pixel_values")
    if "pixel_mask" in inputs:
      pixel_mask = inputs.pop("pixel_mask")
      if not np.isin(pixel_mask, (0, 1)).all():
        raise UserError(f"inputs {inputs_path}: pixel_mask must hold 0 (padding) and 1 (real pixel) only")
      inputs["mask"] = pixel_mask == 0
  if "logits" in ref and "pred_logits" not in ref:
    ref["pred_logits"] = ref.pop("logits")
  return inputs, ref


def compare_model(args) -> int:
  from detr_jax.model_checkpoint import load_model
  from detr_jax.postprocess import postprocess_boxes
  from detr_jax.reference_layout import reference_arrays

  inputs, ref = from_hf_names(_load_npz(args.inputs, "inputs"), _load_npz(args.reference, "reference"), args.inputs)
  check_inputs(inputs, args.inputs)
  for key in REQUIRED_KEYS:
    if key not in ref:
      raise UserError(f"reference {args.reference}: missing array {key!r}; at least {', '.join(REQUIRED_KEYS)} "
                      "are needed")
  if args.runtime == "onnxruntime" and args.intermediates:
    raise UserError("--intermediates needs --runtime jax: the ONNX graph gives the outputs only")
  config, params = load_model(args.checkpoint)
  print(f"model {config.get('name', '?')}: {config.model.backbone}, {config.model.enc_layers}+"
        f"{config.model.dec_layers} layers, d={config.model.hidden_dim}; inputs {inputs['images_padded'].shape}")
  outputs, inter = run_model(config, params, inputs["images_padded"], inputs["mask"],
                             intermediates=args.intermediates or bool(args.save), runtime=args.runtime)
  ours = reference_arrays(outputs, inter, config.model.num_queries, config.model.masks) if inter else dict(outputs)
  if "orig_target_sizes" in inputs:
    scores, labels, boxes = postprocess_boxes(outputs["pred_logits"], outputs["pred_boxes"],
                                              np.asarray(inputs["orig_target_sizes"]))
    ours.update(pp_scores=np.asarray(scores), pp_labels=np.asarray(labels), pp_boxes=np.asarray(boxes))
  if args.save:
    try:
      np.savez(args.save, **ours)
    except OSError as e:
      raise UserError(f"--save {args.save}: cannot write it ({e.strerror or e})") from None
    print(f"saved our arrays to {args.save}")
  keys = [k for k in ref if k in MODEL_KEYS or (args.intermediates and k in ours)]
  missing = [k for k in keys if k not in ours]
  if missing:
    raise UserError(f"reference {args.reference}: arrays {missing} cannot be computed for this model/inputs")
  rows = compare_arrays(ours, ref, keys, args.atol, args.rtol)
  print_table(rows)
  return 0 if all(r.passed for r in rows) else 1


def official_matches(query_for_target) -> tuple[np.ndarray, np.ndarray]:
  """query_for_target [..., M] (-1: no target) -> (src, tgt) [..., M]: pairs by increasing query, -1 padded."""
  qft = np.asarray(query_for_target)
  src, tgt = np.full(qft.shape, -1, np.int64), np.full(qft.shape, -1, np.int64)
  for index in np.ndindex(qft.shape[:-1]):
    targets = np.flatnonzero(qft[index] >= 0)
    order = np.argsort(qft[index][targets], kind="stable")
    src[index][:targets.size] = qft[index][targets][order]
    tgt[index][:targets.size] = targets[order]
  return src, tgt


def run_criterion(ref: dict, backend: str = "scipy") -> dict:
  """Our matcher indices, loss dict, total and gradients in the reference layout."""
  import jax
  import jax.numpy as jnp

  from detr_jax.criterion import BASE_LOSSES, SetCriterion

  counts = np.asarray(ref["tgt_counts"])
  slots = ref["tgt_labels"].shape[1]
  targets = {"labels": jnp.asarray(ref["tgt_labels"], jnp.int32), "boxes": jnp.asarray(ref["tgt_boxes"], jnp.float32),
             "valid": jnp.asarray(np.arange(slots)[None] < counts[:, None])}
  masks = "pred_masks" in ref
  if masks:
    targets["masks"] = jnp.asarray(ref["tgt_masks"])
  predictions = {k: jnp.asarray(ref[k], jnp.float32) for k in CRITERION_PREDICTIONS if k in ref}
  criterion = SetCriterion(num_classes=ref["pred_logits"].shape[-1] - 1,
                           losses=BASE_LOSSES + (("masks",) if masks else ()), matcher_backend=backend)
  with jax.default_matmul_precision("highest"):
    (total, losses), grads = jax.jit(jax.value_and_grad(lambda p: criterion(p, targets), has_aux=True))(predictions)
    query_for_target = jax.jit(criterion.match)(predictions, targets)
  src, tgt = official_matches(query_for_target)
  ours = {"match_src": src[-1], "match_tgt": tgt[-1], "aux_match_src": src[:-1], "aux_match_tgt": tgt[:-1],
          "total_weighted_loss": np.asarray(total)}
  ours.update({f"lossdict_{k}": np.asarray(v) for k, v in losses.items()})
  ours.update({f"grad_{k}": np.asarray(v) for k, v in grads.items()})
  return ours


def compare_criterion(args) -> int:
  ref = _load_npz(args.reference, "reference")
  missing = [k for k in CRITERION_REQUIRED if k not in ref]
  if "pred_masks" in ref and "tgt_masks" not in ref:
    missing.append("tgt_masks")
  if missing:
    raise UserError(f"{args.reference}: missing arrays {missing}")
  ours = run_criterion(ref, args.backend)
  keys = [k for k in ref if k.startswith(("match_", "aux_match_", "lossdict_", "grad_")) or k == "total_weighted_loss"]
  absent = [k for k in keys if k not in ours]
  if absent:
    raise UserError(f"{args.reference}: arrays {absent} have no counterpart in our criterion")
  print(f"criterion: B={ref['pred_logits'].shape[0]}, Q={ref['pred_logits'].shape[1]}, "
        f"{ref['pred_logits'].shape[-1]} logits, targets {np.asarray(ref['tgt_counts']).tolist()}, "
        f"masks {'pred_masks' in ref}, matcher backend {args.backend}")
  rows = compare_arrays(ours, ref, keys, args.atol, args.rtol)
  print_table(rows)
  return 0 if all(r.passed for r in rows) else 1


TRAIN_SETTINGS = {"lr": float, "lr_backbone": float, "weight_decay": float, "clip_max_norm": float,
                  "eos_coef": float, "set_cost_class": float, "set_cost_bbox": float, "set_cost_giou": float,
                  "bbox_loss_coef": float, "giou_loss_coef": float, "dropout": float, "aux_loss": bool, "steps": int}
TRAIN_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
# Tolerances of `compare train` per model.dtype, measured against the official trainer on
# tests/fixtures/train (float32 on CPU, official torch 2.13 CPU; README "Training parity"):
# - losses before update k: |ours - ref| / |ref| <= rtol * growth ** (k - 1). Measured, steps 1..5:
#   float32 total 0 / 2e-7 / 6e-7 / 0 / 3e-7, last-layer terms at most 5e-7 / 8e-7 / 4e-6 / 4e-6 /
#   3e-6; bfloat16 total 5e-4 / 3e-4 / 1.4e-2 / 8e-3 / 4e-3, terms at most 5e-3 / 2e-3 / 6e-2 /
#   4e-2 / 4e-2.
# - parameter deltas after K updates: the RMS of ours - ref over the tensor, in units of K * lr of
#   the tensor's group (the most K Adam steps can move a weight), <= the tolerance; a frozen tensor
#   must not move at all. Measured worst tensor, K = 1, 2, 3, 5: float32 5.3e-3, 3.4e-3, 3.1e-3,
#   2.7e-3; bfloat16 0.48, 0.34, 0.30, 0.30. Not elementwise: Adam divides each gradient by its own
#   magnitude, so a weight whose gradient is float noise (e.g. the first decoder self-attention's
#   q/k projections on a zero target) moves by an arbitrary fraction of lr on either side, and in
#   bfloat16 a few percent of the weights, those with the smallest gradients, step the other way.
TRAIN_LOSS_TOLERANCE = {"float32": (1e-5, 3.0), "bfloat16": (2e-2, 3.0)}  # dtype: (rtol at step 1, growth per step)
TRAIN_DELTA_TOLERANCE = {"float32": 2e-2, "bfloat16": 0.75}

class TrainRow(NamedTuple):
  name: str
  ours: float          # the value (scalars) or max |ours| (arrays)
  reference: float     # likewise for the reference
  max_abs_err: float
  error: float         # the measure the tolerance bounds (see the table's heading)
  tolerance: float
  passed: bool


def _settings(ref: dict, path: str) -> dict:
  """The `settings` JSON of a TRAIN.npz, each field of TRAIN_SETTINGS checked."""
  if "settings" not in ref:
    raise UserError(f"reference {path}: missing 'settings' (a JSON string with {', '.join(TRAIN_SETTINGS)})")
  try:
    settings = json.loads(str(ref["settings"]))
  except json.JSONDecodeError as e:
    raise UserError(f"reference {path}: settings is not JSON ({e})") from None
  if not isinstance(settings, dict):
    raise UserError(f"reference {path}: settings is a JSON {type(settings).__name__}, expected an object")
  for key, kind in TRAIN_SETTINGS.items():
    value = settings.get(key)
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
    if not ok:
      raise UserError(f"reference {path}: settings[{key!r}] is {value!r}, expected a {kind.__name__}")
  if settings["dropout"] != 0:
    raise UserError(f"reference {path}: settings['dropout'] is {settings['dropout']}; the comparison needs 0 "
                    "(the two sides cannot draw the same dropout masks)")
  if settings["steps"] < 1:
    raise UserError(f"reference {path}: settings['steps'] is {settings['steps']}, expected >= 1")
  return settings


def read_train_reference(path: str) -> tuple[dict, dict, list]:
  """(arrays, settings, [(labels [n_i], boxes [n_i, 4])]) of a TRAIN.npz, checked."""
  ref = _load_npz(path, "reference", text_keys=("settings",))
  settings = _settings(ref, path)
  check_inputs(ref, path)
  targets = []
  for i in range(ref["images_padded"].shape[0]):
    labels, boxes = ref.get(f"labels_{i}"), ref.get(f"boxes_{i}")
    if labels is None or boxes is None:
      raise UserError(f"reference {path}: missing labels_{i} / boxes_{i} (the targets of image {i})")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
      raise UserError(f"reference {path}: labels_{i} is {labels.dtype} {labels.shape}, expected integers [n]")
    if boxes.shape != (labels.shape[0], 4) or boxes.dtype.kind != "f":
      raise UserError(f"reference {path}: boxes_{i} is {boxes.dtype} {boxes.shape}, expected float "
                      f"{(labels.shape[0], 4)} (cx, cy, w, h)")
    targets.append((labels, boxes))
  missing = [f"loss_step{k}" for k in range(1, settings["steps"] + 1) if f"loss_step{k}" not in ref]
  if missing:
    raise UserError(f"reference {path}: settings['steps'] is {settings['steps']} but {missing} are missing")
  return ref, settings, targets


def train_config(model_cfg, settings: dict, batch_size: int, max_objects: int, dtype: str = "float32"):
  """Our training config for the reference's settings (official recipe otherwise), dropout 0."""
  import ml_collections

  from detr_jax.config import training_config
  config = training_config(global_batch_size=batch_size, max_objects=max(max_objects, 1),
                           **{k: settings[k] for k in ("lr", "lr_backbone", "weight_decay", "clip_max_norm")})
  config.loss.update({k: settings[k] for k in ("eos_coef", "set_cost_class", "set_cost_bbox", "set_cost_giou",
                                                "bbox_loss_coef", "giou_loss_coef")})
  config.model = ml_collections.ConfigDict(model_cfg.to_dict())
  config.model.dropout = 0.0
  config.model.aux_loss = settings["aux_loss"]
  if dtype != "float32":
    if "dtype" not in config.model:
      raise UserError(f"--dtype {dtype}: this checkpoint's model config has no dtype field")
    config.model.dtype = dtype
  return config


_TRAIN_STEPS = {}  # (config JSON, grad_accum_steps) -> (pmapped train step, optimizer)


def _train_step(config, params, grad_accum_steps: int):
  """The pmapped train step and optimizer of `config`, built once per process: a second comparison
  with the same settings (e.g. the tests' perturbed reference) reuses the compiled step."""
  key = (json.dumps(config.to_dict(), sort_keys=True), grad_accum_steps)
  if key not in _TRAIN_STEPS:
    from detr_jax.models import build_model
    from detr_jax.training import step as train_steps
    from detr_jax.training.optimizer import make_optimizer
    from detr_jax.training.setup import make_criterion

    model, tx = build_model(config.model), make_optimizer(config, params)
    accumulation = {"grad_accum_steps": grad_accum_steps} if grad_accum_steps > 1 else {}
    _TRAIN_STEPS[key] = train_steps.pmapped_steps(model, make_criterion(config), tx, **accumulation)[0], tx
  return _TRAIN_STEPS[key]


def run_train(config, params, ref: dict, targets: list, steps: int, grad_accum_steps: int = 1) -> dict:
  """Our train step run `steps` times on the reference batch from `params` (on one device, float32
  matmuls at highest precision) -> arrays in the TRAIN.npz layout: loss_step{k}, lossdict_step{k}_*,
  and delta_{key} (official layout) for every delta_* key of `ref`."""
  import jax
  from flax import traverse_util

  from detr_jax.torch_io.mapping import model_layout, to_torch
  from detr_jax.training import step as train_steps
  from detr_jax.training.state import TrainState

  layout = {e.key: e for e in model_layout(config.model)}
  delta_keys = [k[len("delta_"):] for k in ref if k.startswith("delta_")]
  unknown = [k for k in delta_keys if k not in layout]
  if unknown:
    raise UserError(f"reference: {', '.join('delta_' + k for k in unknown[:3])} name no parameter of this model")
  mismatched = [k for k in delta_keys if ref[f"delta_{k}"].shape != layout[k].shape]
  if mismatched:
    raise UserError(f"reference: delta_{mismatched[0]} has shape {ref[f'delta_{mismatched[0]}'].shape}, this "
                    f"model's parameter has {layout[mismatched[0]].shape}")
  batch_size, max_objects = len(targets), config.max_objects
  batch = {"images": np.asarray(ref["images_padded"], np.float32).transpose(0, 2, 3, 1),
           "mask": np.asarray(ref["mask"], bool), "labels": np.zeros((batch_size, max_objects), np.int32),
           "boxes": np.zeros((batch_size, max_objects, 4), np.float32),
           "valid": np.zeros((batch_size, max_objects), bool)}
  for i, (labels, boxes) in enumerate(targets):
    n = len(labels)
    batch["labels"][i, :n], batch["boxes"][i, :n], batch["valid"][i, :n] = labels, boxes, True
  p_train, tx = _train_step(config, params, grad_accum_steps)
  state = train_steps.replicate(TrainState.create(params, tx, jax.random.PRNGKey(0)), 1)
  batch = train_steps.shard(batch, 1)
  ours = {}
  with jax.default_matmul_precision("highest"):
    for k in range(1, steps + 1):
      state, metrics = p_train(state, batch)
      metrics = jax.device_get(metrics)
      ours[f"loss_step{k}"] = np.float32(metrics["loss"][0])
      for key in TRAIN_LOSSES:  # the raw value: "_unscaled" where the term has a weight
        ours[f"lossdict_step{k}_{key}"] = np.float32(metrics.get(f"{key}_unscaled", metrics[key])[0])
  before = traverse_util.flatten_dict(params)
  after = traverse_util.flatten_dict(train_steps.unreplicate(state.params))
  for key in delta_keys:
    entry = layout[key]
    ours[f"delta_{key}"] = to_torch(entry.kind, np.asarray(after[entry.path]) - np.asarray(before[entry.path]))
  return ours


def loss_rows(ours: dict, ref: dict, keys, rtol: float) -> list[TrainRow]:
  """One row per scalar: passes when |ours - ref| <= rtol * |ref|."""
  rows = []
  for key in keys:
    a, b = float(ours[key]), float(ref[key])
    err = abs(a - b)
    rel = err / abs(b) if b else (0.0 if err == 0 else float("inf"))
    rows.append(TrainRow(key, a, b, err, rel, rtol, bool(rel <= rtol)))
  return rows


def delta_scales(config, keys, steps: int) -> dict:
  """{official key: steps * lr of the parameter's optimizer group}, 0 for frozen parameters."""
  from detr_jax.torch_io.mapping import model_layout
  from detr_jax.training.optimizer import BACKBONE, FROZEN, param_label

  paths = {e.key: e.path for e in model_layout(config.model)}
  lrs = {FROZEN: 0.0, BACKBONE: config.lr_backbone}
  return {k: steps * lrs.get(param_label(paths[k], config.lr_backbone, config.freeze_detr, config.freeze_stem),
                             config.lr) for k in keys}


def delta_rows(ours: dict, ref: dict, scales: dict, tolerance: float) -> list[TrainRow]:
  """One row per delta_{key}: passes when RMS(ours - ref) <= tolerance * scales[key]; a frozen
  parameter (scale 0) when both deltas are exactly 0."""
  rows = []
  for key, scale in scales.items():
    a, b = np.asarray(ours[f"delta_{key}"], np.float64), np.asarray(ref[f"delta_{key}"], np.float64)
    diff = a - b
    if scale:
      error = float(np.sqrt(np.mean(diff ** 2))) / scale
      passed = error <= tolerance
    else:
      error = float(np.abs(a).max() + np.abs(b).max())
      passed = error == 0
    rows.append(TrainRow(f"delta_{key}", float(np.abs(a).max()), float(np.abs(b).max()),
                         float(np.abs(diff).max()), error, tolerance if scale else 0.0, passed))
  return rows


def print_train_table(title: str, error_name: str, rows: list[TrainRow], out=None) -> None:
  out = out or sys.stdout
  width = max([len(r.name) for r in rows] + [len(title)])
  print(f"{title:<{width}}  {'ours':>12}  {'reference':>12}  {'max abs err':>11}  {error_name:>15}  "
        f"{'tolerance':>9}  result", file=out)
  for r in rows:
    print(f"{r.name:<{width}}  {r.ours:>12.6g}  {r.reference:>12.6g}  {r.max_abs_err:>11.3e}  {r.error:>15.3e}  "
          f"{r.tolerance:>9.1e}  {'pass' if r.passed else 'FAIL'}", file=out)


def compare_train(args) -> int:
  from detr_jax.model_checkpoint import load_model

  ref, settings, targets = read_train_reference(args.reference)
  steps = settings["steps"] if args.steps is None else args.steps
  if not 1 <= steps <= settings["steps"]:
    raise UserError(f"--steps {steps}: the reference {args.reference} holds steps 1..{settings['steps']}")
  if args.grad_accum_steps < 1 or len(targets) % args.grad_accum_steps:
    raise UserError(f"--grad-accum-steps {args.grad_accum_steps}: must be >= 1 and divide the batch of "
                    f"{len(targets)} images")
  ckpt_config, params = load_model(args.checkpoint)
  mismatched = [f"{k} {v!r} (checkpoint: {ckpt_config.model.get(k)!r})"
                for k, v in settings.get("model", {}).items() if k != "dropout" and ckpt_config.model.get(k) != v]
  if mismatched:
    raise UserError(f"reference {args.reference}: made with another model than {args.checkpoint}'s: "
                    f"{', '.join(mismatched[:3])}")
  config = train_config(ckpt_config.model, settings, len(targets), max(len(t[0]) for t in targets), args.dtype)
  print(f"train: {config.model.backbone}, {config.model.enc_layers}+{config.model.dec_layers} layers, "
        f"d={config.model.hidden_dim}, {config.model.num_queries} queries; batch {ref['images_padded'].shape} with "
        f"{[len(t[0]) for t in targets]} targets; {steps} steps in {args.dtype}"
        + (f", {args.grad_accum_steps} micro-batches" if args.grad_accum_steps > 1 else ""))
  ours = run_train(config, params, ref, targets, steps, args.grad_accum_steps)
  if args.save:
    saved = {k: v for k, v in ref.items() if k in ("images_padded", "mask") or k.startswith(("labels_", "boxes_"))}
    saved["settings"] = np.array(json.dumps({**settings, "steps": steps, "dtype": args.dtype,
                                             "grad_accum_steps": args.grad_accum_steps}))
    try:
      np.savez(args.save, **saved, **ours)
    except OSError as e:
      raise UserError(f"--save {args.save}: cannot write it ({e.strerror or e})") from None
    print(f"saved our arrays to {args.save}")
  rtol, growth = TRAIN_LOSS_TOLERANCE[args.dtype]
  step_rtol = lambda k: rtol * growth ** (k - 1)
  tables = [("total loss", "rel err", [r for k in range(1, steps + 1)
                                       for r in loss_rows(ours, ref, [f"loss_step{k}"], step_rtol(k))]),
            ("last-layer losses", "rel err", [r for k in range(1, steps + 1) for r in loss_rows(
                ours, ref, [f"lossdict_step{k}_{key}" for key in TRAIN_LOSSES if f"lossdict_step{k}_{key}" in ref],
                step_rtol(k))])]
  delta_keys = [k[len("delta_"):] for k in ref if k.startswith("delta_")]
  if delta_keys and steps == settings["steps"]:
    tables.append((f"deltas after {steps} updates", "rms err/(K lr)",
                   delta_rows(ours, ref, delta_scales(config, delta_keys, steps), TRAIN_DELTA_TOLERANCE[args.dtype])))
  elif delta_keys:
    print(f"note: the reference's deltas are after {settings['steps']} updates, so they are not compared after {steps}")
  rows = []
  for title, error_name, table in tables:
    print_train_table(title, error_name, table)
    rows += table
  failed = sum(not r.passed for r in rows)
  print(f"{len(rows) - failed} of {len(rows)} quantities within tolerance")
  return 0 if not failed else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m detr_jax.compare", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  model = sub.add_parser("model", help="run a checkpoint on stored inputs and compare with reference outputs")
  model.add_argument("--checkpoint", required=True, help="model checkpoint directory (convert_torch_weights.py output)")
  model.add_argument("--inputs", required=True,
                     help="INPUTS.npz with images_padded (NCHW) and mask, or pixel_values and pixel_mask")
  model.add_argument("--reference", required=True, help="REF.npz with the reference outputs")
  model.add_argument("--atol", type=float, default=1e-4)
  model.add_argument("--rtol", type=float, default=1e-4)
  model.add_argument("--intermediates", action="store_true",
                     help="also compare intermediate arrays present in REF (backbone levels, hs, ...)")
  model.add_argument("--save", help="write our arrays (outputs and intermediates) to this .npz")
  model.add_argument("--runtime", choices=("jax", "onnxruntime"), default="jax",
                     help="run our forward jit-compiled (jax) or exported to ONNX (onnxruntime; needs the onnx extra)")
  criterion = sub.add_parser("criterion", help="run our matcher and criterion on stored predictions and targets")
  criterion.add_argument("--reference", required=True, help="CRITERION.npz with inputs and reference results")
  criterion.add_argument("--atol", type=float, default=1e-5)
  criterion.add_argument("--rtol", type=float, default=1e-4)
  criterion.add_argument("--backend", choices=("scipy", "optax"), default="scipy", help="matcher backend")
  train = sub.add_parser("train", help="run K train steps from a checkpoint on a stored batch and compare with the "
                                       "official trainer's")
  train.add_argument("--checkpoint", required=True, help="model checkpoint directory (the reference's weights)")
  train.add_argument("--reference", required=True, help="TRAIN.npz (tools/dump_official_train.py)")
  train.add_argument("--steps", type=int, help="steps to run (default: all of the reference's)")
  train.add_argument("--dtype", choices=tuple(TRAIN_LOSS_TOLERANCE), default="float32", help="model.dtype of our side")
  train.add_argument("--grad-accum-steps", type=int, default=1, help="micro-batches per update on our side")
  train.add_argument("--save", help="write our arrays to this .npz, in the TRAIN.npz layout")
  args = parser.parse_args(argv)
  commands = {"model": compare_model, "criterion": compare_criterion, "train": compare_train}
  try:
    return commands[args.command](args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
