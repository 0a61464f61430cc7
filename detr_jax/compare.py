"""Compare our outputs with reference outputs of the official PyTorch code.

  python -m detr_jax.compare model --checkpoint DIR --inputs INPUTS.npz --reference REF.npz \
      [--atol 1e-4] [--rtol 1e-4] [--intermediates] [--save OUT.npz]

INPUTS.npz: images_padded (float32 NCHW), mask (bool, True = padding), optionally
orig_target_sizes (int, rows (h, w)). REF.npz: any of the arrays named in MODEL_KEYS, in the
layout of the official reference data. An array passes when
max|ours - ref| <= atol + rtol * max|ref| (integer and bool arrays: exactly equal).
transformers' names are accepted too: INPUTS.npz with pixel_values (NCHW) and pixel_mask (1 = real
pixel, the reverse of our mask), REF.npz with logits (= pred_logits), pred_boxes, pred_masks.

  python -m detr_jax.compare criterion --reference CRITERION.npz [--atol 1e-5] [--rtol 1e-4] \
      [--backend scipy|optax]

CRITERION.npz (layout of the official criterion reference data): predictions pred_logits,
pred_boxes, aux_pred_logits, aux_pred_boxes, optional pred_masks; padded targets tgt_counts,
tgt_labels, tgt_boxes, optional tgt_masks. Our matcher and SetCriterion run with the official
defaults (mask losses iff pred_masks is present) and are compared with match_src/match_tgt,
aux_match_src/aux_match_tgt, every lossdict_*, total_weighted_loss and every grad_* array.

Exit code: 0 all pass, 1 some fail, 2 usage error (bad arguments or input files: one `error:` line).
"""
import argparse
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


def _load_npz(path: str, what: str) -> dict:
  """The named arrays of an .npz file; anything else is a UserError naming the file."""
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


def run_model(config, params, images_nchw, mask, intermediates: bool = False):
  """Eval-mode forward in float32 at highest matmul precision; returns (outputs, intermediates)."""
  import jax

  from detr_jax.models import build_model
  model = build_model(config.model)
  images = np.asarray(images_nchw, np.float32).transpose(0, 2, 3, 1)
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
  config, params = load_model(args.checkpoint)
  print(f"model {config.get('name', '?')}: {config.model.backbone}, {config.model.enc_layers}+"
        f"{config.model.dec_layers} layers, d={config.model.hidden_dim}; inputs {inputs['images_padded'].shape}")
  outputs, inter = run_model(config, params, inputs["images_padded"], inputs["mask"],
                             intermediates=args.intermediates or bool(args.save))
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
  criterion = sub.add_parser("criterion", help="run our matcher and criterion on stored predictions and targets")
  criterion.add_argument("--reference", required=True, help="CRITERION.npz with inputs and reference results")
  criterion.add_argument("--atol", type=float, default=1e-5)
  criterion.add_argument("--rtol", type=float, default=1e-4)
  criterion.add_argument("--backend", choices=("scipy", "optax"), default="scipy", help="matcher backend")
  args = parser.parse_args(argv)
  try:
    return compare_model(args) if args.command == "model" else compare_criterion(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
