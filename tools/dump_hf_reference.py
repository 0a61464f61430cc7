"""Makes the HuggingFace test fixtures with transformers itself, and checks our --export-hf folders.

Needs torch, timm, safetensors and transformers (4 or 5); run it in an environment that has them,
never in the project's. Nothing in detr_jax imports this script.

  # the fixtures this transformers version writes (5: det_r18_learned_v5; 4: seg_r50_dc5_v4)
  python tools/dump_hf_reference.py fixtures tests/fixtures/hf

  # an --export-hf folder: from_pretrained must report no missing/unexpected/mismatched keys, and
  # its outputs on INPUTS.npz must equal OURS.npz (python -m detr_jax.compare model ... --save OURS.npz)
  python tools/dump_hf_reference.py check-export HF_DIR --inputs INPUTS.npz --ours OURS.npz [--atol 1e-4]

Each fixture folder holds what transformers wrote: config.json, and each weights file as
`<file>.sparse.npz` (a weights file of a ResNet backbone is 45-95 MB; every tensor of at least
16 values is filled from its own seed, so the file is stored as its non-tensor bytes plus, per
tensor, its offset, seed and distribution; the test rebuilds the exact bytes and checks their
sha256), plus inputs.npz (pixel_values NCHW, pixel_mask 1 = real pixel) and reference.npz
(logits, pred_boxes, pred_masks of the model in eval mode), and source.json (versions).

The fill: tensor k of the state dict (in order) is numpy's default_rng(seed + k) drawing
normal(a, b) or uniform(a, b) float32 values; BatchNorm statistics and LayerNorm/GroupNorm scales
stay positive.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import sys

import numpy as np

NORMAL, UNIFORM = 0, 1
MIN_GENERATED = 16  # tensors with fewer values stay literal bytes
GAINS = {"out_proj": 0.5, "o_proj": 0.5, "fc2": 0.5, "encoder_attn.q_proj": 2.5, "encoder_attn.k_proj": 2.5,
         "bbox_attention": 2.0, "adapter": 0.1}


def fail(msg):
  sys.exit(f"dump_hf_reference: error: {msg}")


def import_transformers():
  """torch and transformers, declaring torchvision's two compiled operators when its extension
  was built for another torch (the side venv's CPU torch)."""
  try:
    import torch
  except ModuleNotFoundError:
    fail("needs torch, timm and transformers: pip install torch timm safetensors transformers")
  from side_torch import import_torchvision
  try:
    import_torchvision()
    import transformers
  except ModuleNotFoundError as e:
    fail(f"needs torch, torchvision, timm and transformers (missing: {e.name}): pip install torchvision timm "
         "safetensors transformers")
  return torch, transformers


def distribution(name: str, shape) -> tuple[int, float, float]:
  """(kind, a, b) of the fill of one state dict tensor."""
  if name.endswith("running_var") or (len(shape) == 1 and name.endswith("weight")):
    return UNIFORM, 0.5, 1.5
  if name.endswith("running_mean"):
    return NORMAL, 0.0, 0.1
  if name.endswith("bias"):
    return NORMAL, 0.0, 0.05
  if "query_position_embeddings" in name:
    return NORMAL, 0.0, 3.0
  if "position_embedding" in name:
    return NORMAL, 0.0, 1.0
  gain = next((g for part, g in GAINS.items() if part in name), 1.0)
  return NORMAL, 0.0, gain / math.sqrt(math.prod(shape[1:]))


def draw(seed: int, kind: int, a: float, b: float, count: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (rng.normal if kind == NORMAL else rng.uniform)(a, b, count).astype("<f4")


def fill(torch, model, seed: int) -> dict:
  """Fills every float tensor of the state dict; returns {bytes: (seed, kind, a, b, count)}."""
  recipes = {}
  with torch.no_grad():
    for k, (name, tensor) in enumerate(model.state_dict().items()):
      kind, a, b = distribution(name, tuple(tensor.shape))
      values = draw(seed + k, kind, a, b, tensor.numel())
      tensor.copy_(torch.from_numpy(values.reshape(tuple(tensor.shape))))
      if values.size >= MIN_GENERATED:
        recipes[values.tobytes()] = (seed + k, kind, a, b, values.size)
  return recipes


def write_sparse(path: str, recipes: dict, out: str) -> None:
  """Stores the file at `path` as its bytes outside the filled tensors plus one recipe per tensor."""
  data = open(path, "rb").read()
  found = sorted((data.find(raw), raw) for raw in recipes)
  if any(offset < 0 for offset, _ in found):
    fail(f"{path}: a filled tensor is not stored as plain float32 bytes")
  literal, segments, dists, pos = [], [], [], 0
  for offset, raw in found:
    literal.append(data[pos:offset])
    seed, kind, a, b, count = recipes[raw]
    segments.append((offset, count, seed))
    dists.append((kind, a, b))
    pos = offset + len(raw)
  literal.append(data[pos:])
  blob = b"".join(literal)
  np.savez_compressed(out, size=np.int64(len(data)), sha256=np.array(hashlib.sha256(data).hexdigest()),
                      literal=np.frombuffer(blob, np.uint8), segments=np.array(segments, np.int64),
                      dists=np.array(dists, np.float64))
  if rebuild(out) != data:
    fail(f"{out} does not rebuild {path}")
  print(f"{out}: {len(data)} bytes as {len(blob)} literal bytes + {len(segments)} tensors")


def rebuild(sparse: str) -> bytes:
  """The exact file bytes back from write_sparse's output (the test does the same)."""
  z = np.load(sparse)
  literal, out, pos = z["literal"].tobytes(), bytearray(), 0
  for (offset, count, seed), (kind, a, b) in zip(z["segments"], z["dists"]):
    gap = int(offset) - len(out)
    out += literal[pos:pos + gap]
    pos += gap
    out += draw(int(seed), int(kind), float(a), float(b), int(count)).tobytes()
  out += literal[pos:]
  return bytes(out)


def inputs() -> dict:
  """Two random 8-bit images normalised with the ImageNet mean/std, NCHW 64x96; the second is
  50x70 with zero padding (pixel_mask 0)."""
  rng = np.random.default_rng(7)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  pixels = rng.integers(0, 256, (2, 64, 96, 3)) / 255.0
  pixel_values = ((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
  pixel_mask = np.ones((2, 64, 96), np.int64)
  pixel_mask[1, 50:], pixel_mask[1, :, 70:] = 0, 0
  pixel_values *= pixel_mask[:, None]
  return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}


# name: (transformers major, class, config kwargs, labels, saves)
FIXTURES = {
    "det_r18_learned_v5": (5, "DetrForObjectDetection", dict(
        backbone="resnet18", dilation=False, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, position_embedding_type="learned"),
        ["N/A", "circle", "square"], ("save_pretrained", "state_dict")),
    "seg_r50_dc5_v4": (4, "DetrForSegmentation", dict(
        backbone="resnet50", dilation=True, d_model=128, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=4, position_embedding_type="sine"),
        ["N/A", "thing"], ("save_pretrained_bin",)),
}


def make_fixture(torch, transformers, name: str, out_dir: str, seed: int) -> None:
  _, cls, kwargs, labels, saves = FIXTURES[name]
  config = transformers.DetrConfig(use_timm_backbone=True, use_pretrained_backbone=False, encoder_layers=1,
                                   decoder_layers=1, dropout=0.0, id2label=dict(enumerate(labels)),
                                   label2id={n: i for i, n in enumerate(labels)}, **kwargs)
  torch.manual_seed(0)
  model = getattr(transformers, cls)(config).eval()
  recipes = fill(torch, model, seed)
  folder = os.path.join(out_dir, name)
  staging = folder + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  saved = os.path.join(staging, "saved")
  for how in saves:
    if how == "state_dict":  # transformers 5's module names, as a training script saving state_dict() has them
      from safetensors.torch import save_file
      save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                os.path.join(saved, "state_dict.safetensors"), metadata={"format": "pt"})
    else:
      model.save_pretrained(saved, **({"safe_serialization": False} if how == "save_pretrained_bin" else {}))
  for file in sorted(os.listdir(saved)):
    if file == "config.json":
      shutil.copy(os.path.join(saved, file), os.path.join(staging, file))
    else:
      write_sparse(os.path.join(saved, file), recipes, os.path.join(staging, file + ".sparse.npz"))
  shutil.rmtree(saved)
  x = inputs()
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(x["pixel_values"]), pixel_mask=torch.from_numpy(x["pixel_mask"]))
  reference = {"logits": out.logits.numpy(), "pred_boxes": out.pred_boxes.numpy()}
  if cls == "DetrForSegmentation":
    reference["pred_masks"] = out.pred_masks.numpy()
  np.savez_compressed(os.path.join(staging, "inputs.npz"), **x)
  np.savez(os.path.join(staging, "reference.npz"), **reference)
  import timm
  with open(os.path.join(staging, "source.json"), "w") as f:
    json.dump({"made_by": "tools/dump_hf_reference.py fixtures", "transformers": transformers.__version__,
               "torch": torch.__version__, "timm": timm.__version__, "class": cls, "fill_seed": seed,
               "saved_with": list(saves)}, f, indent=2)
  shutil.rmtree(folder, ignore_errors=True)
  os.rename(staging, folder)
  print(f"wrote {folder}: {cls}, outputs {', '.join(f'{k} {v.shape}' for k, v in reference.items())}")


def check_export(torch, transformers, a) -> int:
  """Loads an --export-hf folder with from_pretrained and compares its outputs with ours."""
  config = transformers.AutoConfig.from_pretrained(a.folder)
  cls = getattr(transformers, config.architectures[0])
  model, info = cls.from_pretrained(a.folder, output_loading_info=True)
  model.eval()
  problems = {k: v for k, v in info.items() if v}
  print(f"transformers {transformers.__version__}: {cls.__name__} loaded; loading info: "
        f"{problems or 'no missing, unexpected or mismatched keys'}")
  with np.load(a.inputs) as z:
    x = dict(z)
  if "pixel_values" not in x:  # our layout: images_padded, mask (True = padding)
    x = {"pixel_values": x["images_padded"], "pixel_mask": (~x["mask"]).astype(np.int64)}
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(x["pixel_values"]), pixel_mask=torch.from_numpy(x["pixel_mask"]))
  with np.load(a.ours) as z:
    ours = dict(z)
  ok = not problems
  for theirs_key, ours_key in (("logits", "pred_logits"), ("pred_boxes", "pred_boxes"), ("pred_masks", "pred_masks")):
    theirs = getattr(out, theirs_key, None)
    if theirs is None or ours_key not in ours:
      continue
    err = float(np.abs(theirs.numpy() - ours[ours_key]).max())
    ok &= err <= a.atol
    print(f"{theirs_key}: max |transformers - ours| = {err:.3e}")
  print("export check passed" if ok else "export check FAILED")
  return 0 if ok else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  fixtures = sub.add_parser("fixtures", help="write the fixtures of this transformers version")
  fixtures.add_argument("out_dir")
  fixtures.add_argument("--seed", type=int, default=1300)
  check = sub.add_parser("check-export", help="load an --export-hf folder and compare its outputs with ours")
  check.add_argument("folder")
  check.add_argument("--inputs", required=True, help="INPUTS.npz (pixel_values/pixel_mask, or images_padded/mask)")
  check.add_argument("--ours", required=True, help="our outputs (compare model --save)")
  check.add_argument("--atol", type=float, default=1e-4)
  a = parser.parse_args(argv)
  torch, transformers = import_transformers()
  if a.command == "check-export":
    return check_export(torch, transformers, a)
  major = int(transformers.__version__.split(".")[0])
  names = [name for name, spec in FIXTURES.items() if spec[0] == major]
  if not names:
    fail(f"no fixtures are made with transformers {transformers.__version__}; use 4.x or 5.x")
  for name in names:
    make_fixture(torch, transformers, name, a.out_dir, a.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
