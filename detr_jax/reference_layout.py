"""Our outputs and intermediates in the layout of the official reference data (NCHW, names).

The reference files (see tests/fixtures/REFERENCE_README.md) store torch tensors: feature maps
NCHW, some arrays as subsets. This module produces the same arrays from our NHWC intermediates,
so they can be compared name by name.
"""
import numpy as np
from flax import traverse_util

OUTPUT_KEYS = ("pred_logits", "pred_boxes", "aux_pred_logits", "aux_pred_boxes", "pred_masks")


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def reference_arrays(outputs: dict, intermediates: dict, num_queries: int, masks: bool) -> dict:
  """All reference-named arrays computable from a forward run with intermediates sown."""
  sown = {k.split("/")[-1]: v for k, v in traverse_util.flatten_dict(intermediates, sep="/").items()}
  flat = {k: np.asarray(v[0]) for k, v in sown.items()}
  ref = {k: np.asarray(v) for k, v in outputs.items()}
  # Detection models return only layer4, which the reference stores as level 0.
  for level in range(4) if masks else (3,):
    name = level if masks else 0
    feat = _nchw(flat[f"backbone_feat{level}"])
    ref[f"backbone_feat{name}"] = feat
    ref[f"backbone_feat{name}_first32ch"] = feat[:, :32]
    ref[f"backbone_feat{name}_chmean"] = feat.mean(axis=(2, 3))
    ref[f"backbone_mask{name}"] = flat[f"backbone_mask{level}"]
  ref["pos"], ref["input_proj"], ref["memory"] = (_nchw(flat[k]) for k in ("pos", "src_proj", "memory"))
  ref["hs"] = flat["hs"]
  ref["encoder_layer_out"] = np.stack(sown["encoder_layer_out"])
  ref["decoder_layer_out_prenorm"] = np.stack(sown["decoder_layer_out_prenorm"])
  if masks:
    ref["bbox_attention"] = flat["bbox_mask"]
    for k in (1, 2, 3):
      ref[f"mask_head_adapter{k}"] = _nchw(flat[f"mask_head_adapter{k}"])
    for k in range(1, 6):
      gn = flat[f"mask_head_gn{k}"]
      gn = gn.reshape(-1, num_queries, *gn.shape[1:])[:, :2]
      ref[f"mask_head_gn{k}_q0to1"] = gn.transpose(0, 1, 4, 2, 3)
  return ref
