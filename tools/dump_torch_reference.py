"""Runs the official PyTorch DETR and writes reference data for detr_jax parity checks.

Needs torch, torchvision, numpy and Pillow, plus a local checkout of the official code
(github.com/facebookresearch/detr), which is imported from --detr-repo, never downloaded.
Nothing in detr_jax imports this script.

Writes, in the layout of tests/fixtures/REFERENCE_README.md:
  INPUTS.npz  images_padded float32 [B,3,H,W], mask bool [B,H,W] (True = padding),
              image_sizes int64 [B,2] (h, w), orig_target_sizes int64 [B,2] (when images are given)
  REF.npz     pred_logits, pred_boxes, aux_pred_logits / aux_pred_boxes [L-1,B,Q,...],
              pred_masks (panoptic), pp_scores / pp_labels / pp_boxes (official PostProcess,
              when orig_target_sizes are known), and with --with-backbone
              backbone_last_chmean [B,C] and backbone_mask_last [B,h,w].

Usage:
  # a released checkpoint on photos (official val transform: resize 800, max 1333, normalize)
  python tools/dump_torch_reference.py --detr-repo ~/src/detr --model detr_resnet50 \\
      --checkpoint detr-r50-e632da11.pth --out-inputs inputs.npz --out-reference ref.npz a.jpg b.jpg
  python -m detr_jax.compare model --checkpoint DIR --inputs inputs.npz --reference ref.npz

  # a small synthetic model (fill procedure v1) on stored padded inputs
  python tools/dump_torch_reference.py --detr-repo ~/src/detr --model detr_resnet50 \\
      --fill-seed 1002 --hidden-dim 128 --enc-layers 2 --dec-layers 2 --dim-feedforward 256 \\
      --num-queries 20 --inputs tests/fixtures/inputs.npz --out-reference ref.npz

The architecture follows hubconf.py (hidden 256, 8 heads, 6+6 layers, FFN 2048, 100 queries,
sine position encoding, 91 classes or 250 for panoptic) with aux outputs on; the flags override
it. The model runs in eval mode on CPU.
"""
import argparse
import importlib.util
import json
import os
import pickle
import sys
import warnings
import zipfile

import numpy as np

MODELS = {  # name: (backbone, dilation, masks)
  "detr_resnet50": ("resnet50", False, False),
  "detr_resnet50_dc5": ("resnet50", True, False),
  "detr_resnet101": ("resnet101", False, False),
  "detr_resnet101_dc5": ("resnet101", True, False),
  "detr_resnet50_panoptic": ("resnet50", False, True),
  "detr_resnet50_dc5_panoptic": ("resnet50", True, True),
  "detr_resnet101_panoptic": ("resnet101", False, True),
}


def fail(msg):
  sys.exit(f"dump_torch_reference: error: {msg}")


def import_official(repo):
  """Imports torch and the official modules from `repo`, patching what newer torchvision lacks."""
  try:
    import torch
  except ModuleNotFoundError:
    fail("needs PyTorch, which is not installed here: pip install torch torchvision (see the module doc)")
  if not os.path.isfile(os.path.join(repo, "models", "detr.py")):
    fail(f"--detr-repo {repo!r} is not an official DETR checkout (no models/detr.py)")
  from side_torch import import_torchvision
  try:
    import_torchvision()
  except ModuleNotFoundError:
    fail("needs torchvision, which is not installed here: pip install torchvision")
  import torchvision.ops.misc
  if not hasattr(torchvision.ops.misc, "interpolate"):
    torchvision.ops.misc.interpolate = torch.nn.functional.interpolate
  sys.path.insert(0, os.path.abspath(repo))
  try:
    import models.backbone as backbone
    import models.detr as detr
    import models.position_encoding as position_encoding
    import models.segmentation as segmentation
    import models.transformer as transformer
    import util.misc as misc
  except ModuleNotFoundError as e:  # the official code needs e.g. scipy, or the checkout is incomplete
    fail(f"the official code in {repo!r} imports {e.name}, which is not installed or not in the checkout")
  backbone.is_main_process = lambda: False  # no ImageNet download when building the ResNet
  return torch, dict(backbone=backbone, detr=detr, position_encoding=position_encoding,
                     segmentation=segmentation, transformer=transformer, misc=misc)


def architecture(a):
  """The resolved architecture, with main.py argument names."""
  backbone, dilation, masks = MODELS[a.model]
  arch = dict(backbone=backbone, dilation=dilation, position_embedding="sine", enc_layers=6,
              dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.0, nheads=8,
              num_queries=100, pre_norm=False, masks=masks, aux_loss=True,
              num_classes=250 if masks else 91)
  for k in ("backbone", "dilation", "position_embedding", "enc_layers", "dec_layers",
            "dim_feedforward", "hidden_dim", "nheads", "num_queries", "pre_norm", "num_classes"):
    if getattr(a, k) is not None:
      arch[k] = getattr(a, k)
  return arch


def build(m, arch):
  pe = m["position_encoding"]
  body = m["backbone"].Backbone(arch["backbone"], train_backbone=True,
                                return_interm_layers=arch["masks"], dilation=arch["dilation"])
  n = arch["hidden_dim"] // 2
  pos = (pe.PositionEmbeddingSine(n, normalize=True) if arch["position_embedding"] == "sine"
         else pe.PositionEmbeddingLearned(n))
  joiner = m["backbone"].Joiner(body, pos)
  joiner.num_channels = body.num_channels
  tr = m["transformer"].Transformer(
    d_model=arch["hidden_dim"], nhead=arch["nheads"], num_encoder_layers=arch["enc_layers"],
    num_decoder_layers=arch["dec_layers"], dim_feedforward=arch["dim_feedforward"],
    dropout=arch["dropout"], normalize_before=arch["pre_norm"], return_intermediate_dec=True)
  model = m["detr"].DETR(joiner, tr, num_classes=arch["num_classes"],
                         num_queries=arch["num_queries"], aux_loss=arch["aux_loss"])
  if arch["masks"]:
    model = m["segmentation"].DETRsegm(model)
  return model.eval()


def load_weights(torch, model, a):
  named_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  if a.fill_seed is not None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from detr_jax.fill import fill_v1
    state = {k: torch.from_numpy(v) for k, v in fill_v1(named_shapes, a.fill_seed).items()}
  else:
    try:
      ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=not a.trust_checkpoint)
    except FileNotFoundError:
      fail(f"checkpoint {a.checkpoint!r} not found")
    except pickle.UnpicklingError:
      fail(f"torch.load(weights_only=True) cannot read {a.checkpoint!r}: not a checkpoint, or it "
           "holds non-tensor objects (add --trust-checkpoint if you trust the file)")
    except Exception as e:  # noqa: BLE001 - report any other load problem on one line
      fail(f"cannot load {a.checkpoint!r}: {type(e).__name__}: {str(e).splitlines()[0]}")
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(state, dict):
      fail(f"{a.checkpoint!r} is neither {{'model': state_dict}} nor a state dict")
  expected = dict(named_shapes)
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  wrong = [f"{k} {tuple(state[k].shape)}!={expected[k]}" for k in expected
           if k in state and tuple(state[k].shape) != expected[k]]

  def show(keys):
    return ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")
  if missing or unexpected or wrong:
    fail(f"checkpoint does not fit {a.model} {architecture(a)}: "
         + "; ".join(f"{what} [{len(keys)}]: {show(keys)}" for what, keys in
                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys))
  model.load_state_dict(state, strict=True)
  return named_shapes


def load_images(torch, m, repo, paths):
  """Official val transform from datasets/transforms.py, then nested_tensor_from_tensor_list."""
  from PIL import Image
  spec = importlib.util.spec_from_file_location(
    "detr_official_transforms", os.path.join(repo, "datasets", "transforms.py"))
  T = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(T)
  tf = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                  T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
  images, orig = [], []
  for p in paths:
    try:
      img = Image.open(p).convert("RGB")
    except OSError as e:
      fail(f"cannot read image {p!r}: {e}")
    orig.append((img.height, img.width))
    images.append(tf(img, None)[0])
  nested = m["misc"].nested_tensor_from_tensor_list(images)
  return dict(images_padded=nested.tensors.numpy().astype(np.float32),
              mask=nested.mask.numpy().astype(bool),
              image_sizes=np.array([im.shape[-2:] for im in images], np.int64),
              orig_target_sizes=np.array(orig, np.int64))


def load_inputs(path):
  """The arrays of a stored INPUTS.npz (images_padded and mask at least)."""
  try:
    archive = np.load(path)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      fail(f"--inputs {path!r} is a single .npy array, not an .npz archive (np.savez)")
    with archive:
      inputs = {k: archive[k] for k in archive.files}
  except OSError as e:  # missing, a directory, ...
    fail(f"cannot read --inputs {path!r}: {e.strerror or e}")
  except (ValueError, EOFError, zipfile.BadZipFile) as e:  # not an .npz archive, or a damaged one
    fail(f"--inputs {path!r} is not a readable .npz archive ({' '.join(str(e).split())[:200]})")
  if "images_padded" not in inputs or "mask" not in inputs:
    fail(f"{path!r} lacks images_padded or mask")
  return inputs


def run(torch, m, model, inputs, with_backbone):
  captured = {}
  detr = model.detr if hasattr(model, "detr") else model
  hook = detr.backbone.register_forward_hook(lambda mod, inp, out: captured.update(feats=out[0]))
  samples = m["misc"].NestedTensor(torch.from_numpy(inputs["images_padded"]),
                                   torch.from_numpy(inputs["mask"]))
  with torch.no_grad():
    out = model(samples)
  hook.remove()
  ref = {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}
  if out.get("aux_outputs"):
    ref["aux_pred_logits"] = torch.stack([o["pred_logits"] for o in out["aux_outputs"]])
    ref["aux_pred_boxes"] = torch.stack([o["pred_boxes"] for o in out["aux_outputs"]])
  if "pred_masks" in out:
    ref["pred_masks"] = out["pred_masks"]
  if with_backbone:
    last = captured["feats"][-1]
    ref["backbone_last_chmean"] = last.tensors.mean(dim=(2, 3))
    ref["backbone_mask_last"] = last.mask
  if "orig_target_sizes" in inputs:
    res = m["detr"].PostProcess()(out, torch.from_numpy(inputs["orig_target_sizes"]))
    for key in ("scores", "labels", "boxes"):
      ref["pp_" + key] = torch.stack([r[key] for r in res])
  return {k: v.numpy() for k, v in ref.items()}


def describe(path, arrays):
  print(f"wrote {path}")
  for k, v in arrays.items():
    print(f"  {k:24s} {str(v.dtype):8s} {list(v.shape)}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--detr-repo", required=True, help="official DETR checkout (imported from here)")
  p.add_argument("--model", required=True, choices=sorted(MODELS))
  w = p.add_mutually_exclusive_group(required=True)
  w.add_argument("--checkpoint", help="official .pth ({'model': state_dict} or a bare state dict)")
  w.add_argument("--fill-seed", type=int, help="synthetic weights: fill procedure v1 with this seed")
  p.add_argument("--trust-checkpoint", action="store_true",
                 help="torch.load with weights_only=False (only for checkpoints you trust)")
  g = p.add_argument_group("architecture overrides (for small test models)")
  for flag in ("--hidden-dim", "--nheads", "--enc-layers", "--dec-layers", "--dim-feedforward",
               "--num-queries", "--num-classes"):
    g.add_argument(flag, type=int)
  g.add_argument("--pre-norm", action=argparse.BooleanOptionalAction)
  g.add_argument("--dilation", action=argparse.BooleanOptionalAction)
  g.add_argument("--position-embedding", choices=("sine", "learned"))
  g.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50", "resnet101"))
  p.add_argument("images", nargs="*", metavar="IMAGE")
  p.add_argument("--inputs", help="reuse stored padded inputs (INPUTS.npz) instead of images")
  p.add_argument("--out-inputs", help="where to write INPUTS.npz (images only)")
  p.add_argument("--out-reference", required=True, help="where to write REF.npz")
  p.add_argument("--with-backbone", action="store_true",
                 help="also store backbone_last_chmean and backbone_mask_last")
  p.add_argument("--out-params", help="also write a JSON with seed, args and the state_dict order")
  p.add_argument("--threads", type=int, help="torch.set_num_threads")
  a = p.parse_args(argv)
  if bool(a.images) == bool(a.inputs):
    fail("give either IMAGE files or --inputs INPUTS.npz")
  if a.inputs and a.out_inputs:
    fail("--out-inputs is only for IMAGE files")

  inputs = load_inputs(a.inputs) if a.inputs else None  # checked before the slow imports
  torch, m = import_official(a.detr_repo)
  if a.threads:
    torch.set_num_threads(a.threads)
  warnings.filterwarnings("ignore", category=UserWarning)
  arch = architecture(a)
  if arch["dilation"] and arch["backbone"] in ("resnet18", "resnet34"):
    fail(f"{arch['backbone']} cannot be dilated (torchvision's BasicBlock supports no dilation)")
  model = build(m, arch)
  named_shapes = load_weights(torch, model, a)

  if inputs is None:
    inputs = load_images(torch, m, a.detr_repo, a.images)
    if a.out_inputs:
      np.savez(a.out_inputs, **inputs)
      describe(a.out_inputs, inputs)

  ref = run(torch, m, model, inputs, a.with_backbone)
  np.savez(a.out_reference, **ref)
  describe(a.out_reference, ref)
  if a.out_params:
    info = dict(seed=a.fill_seed, base_model=a.model, args=arch,
                params=[dict(name=k, shape=list(s)) for k, s in named_shapes])
    if a.checkpoint:
      info["checkpoint"] = os.path.basename(a.checkpoint)
    with open(a.out_params, "w") as f:
      json.dump(info, f, indent=1)
    print(f"wrote {a.out_params} ({len(named_shapes)} state_dict entries)")


if __name__ == "__main__":
  main()
