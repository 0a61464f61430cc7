"""Runs K steps of the official DETR trainer on a fixed small batch and writes TRAIN.npz.

Needs torch, torchvision, numpy, scipy and pycocotools, plus a local checkout of the official code
(github.com/facebookresearch/detr), imported from --detr-repo, never downloaded. Nothing in detr_jax
imports this script.

  python tools/dump_official_train.py --detr-repo ~/src/detr --out train.npz [--steps 3]
  python -m detr_jax.compare train --checkpoint CKPT --reference train.npz

The model is built by the official models.build_model(args) from main.py's argument parser
(ResNet-18, hidden 32, 4 heads, 1 encoder + 2 decoder layers, FFN 64, 8 queries, 91 classes by
default; every dropout 0, nn.MultiheadAttention's included) and filled with fill procedure v1
(--fill-seed), so `detr_jax.torch_io.convert.filled_params` rebuilds the same weights. Each step is
main.py's train_one_epoch: the official SetCriterion and HungarianMatcher, the weighted sum of the
loss dict, clip_grad_norm_ at clip_max_norm, and AdamW with main.py's two parameter groups
(lr, and lr_backbone for the backbone).

TRAIN.npz:
  images_padded float32 [B,3,H,W]; mask bool [B,H,W] (True = padding)
  labels_{i} int64 [n_i]; boxes_{i} float32 [n_i,4] (cxcywh, normalised by the unpadded size)
  settings      JSON string: lr, lr_backbone, weight_decay, clip_max_norm, eos_coef, the matcher
                costs and loss coefficients, dropout, aux_loss, steps, plus model (our model
                config fields), fill_seed and the versions used
  loss_step{k}  float32 []: the weighted total loss (aux layers included) before update k, k=1..K
  lossdict_step{k}_{loss_ce,loss_bbox,loss_giou,cardinality_error}: last decoder layer, unweighted
  delta_{key}   float32: parameter `key` (official state_dict name) after K updates minus before,
                for every parameter outside the backbone and the --backbone-deltas ones
"""
import argparse
import json
import os
import sys

import numpy as np

LOSS_KEYS = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
BACKBONE_DELTAS = ("backbone.0.body.conv1.weight",  # frozen: its delta is 0
                   "backbone.0.body.layer2.0.downsample.0.weight")  # lr_backbone


def fail(msg):
  sys.exit(f"dump_official_train: error: {msg}")


def official_args(main_module, a):
  """main.py's args for the small model and the official recipe's optimizer and loss settings."""
  flags = ["--backbone", a.backbone, "--hidden_dim", str(a.hidden_dim), "--nheads", str(a.nheads),
           "--enc_layers", str(a.enc_layers), "--dec_layers", str(a.dec_layers),
           "--dim_feedforward", str(a.dim_feedforward), "--num_queries", str(a.num_queries),
           "--dropout", "0", "--device", "cpu", "--dataset_file", "coco"]
  return main_module.get_args_parser().parse_args(flags)


def check_no_dropout(torch, model):
  """Every dropout of the model is 0: nn.Dropout modules and nn.MultiheadAttention's own float."""
  for name, module in model.named_modules():
    rate = (module.p if isinstance(module, torch.nn.Dropout)
            else module.dropout if isinstance(module, torch.nn.MultiheadAttention) else 0.0)
    if rate != 0:
      fail(f"{name} has dropout {rate}, expected 0")


def make_batch(seed):
  """Two images (64x64 and 32x96) padded to 64x96, so padding reaches the stride-32 map of both;
  3 and 1 targets."""
  rng = np.random.default_rng(seed)
  sizes, height, width = ((64, 64), (32, 96)), 64, 96
  images = np.zeros((2, 3, height, width), np.float32)
  mask = np.ones((2, height, width), bool)
  for i, (h, w) in enumerate(sizes):
    coarse = rng.normal(size=(3, h // 8, w // 8))
    images[i, :, :h, :w] = 1.5 * np.kron(coarse, np.ones((8, 8))) + 0.5 * rng.normal(size=(3, h, w))
    mask[i, :h, :w] = False
  targets = []
  for count in (3, 1):
    centres = rng.uniform(0.25, 0.75, (count, 2))
    extents = rng.uniform(0.1, 0.4, (count, 2))
    targets.append((rng.integers(1, 91, count).astype(np.int64),
                    np.concatenate([centres, extents], 1).astype(np.float32)))
  return images, mask, targets


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--detr-repo", required=True, help="official DETR checkout")
  parser.add_argument("--out", required=True, help="TRAIN.npz to write")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--fill-seed", type=int, default=1201)
  parser.add_argument("--batch-seed", type=int, default=1202)
  parser.add_argument("--backbone", default="resnet18")
  parser.add_argument("--hidden-dim", type=int, default=32)
  parser.add_argument("--nheads", type=int, default=4)
  parser.add_argument("--enc-layers", type=int, default=1)
  parser.add_argument("--dec-layers", type=int, default=2)
  parser.add_argument("--dim-feedforward", type=int, default=64)
  parser.add_argument("--num-queries", type=int, default=8)
  parser.add_argument("--backbone-deltas", nargs="*", default=list(BACKBONE_DELTAS),
                      help="backbone parameters whose delta is stored (all others outside the backbone are)")
  parser.add_argument("--threads", type=int, default=2)
  a = parser.parse_args(argv)
  if a.steps < 1:
    parser.error(f"--steps must be >= 1, got {a.steps}")

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from dump_torch_reference import import_official

  from detr_jax.fill import fill_v1
  torch, _ = import_official(a.detr_repo)
  import main as official_main  # the checkout's main.py (on sys.path from import_official)
  import models as official_models

  torch.set_num_threads(a.threads)
  args = official_args(official_main, a)
  model, criterion, _ = official_models.build_model(args)
  check_no_dropout(torch, model)
  named_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  model.load_state_dict({k: torch.from_numpy(v) for k, v in fill_v1(named_shapes, a.fill_seed).items()},
                        strict=True)
  model.train()
  criterion.train()
  param_dicts = [  # main.py's groups
      {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
      {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad],
       "lr": args.lr_backbone},
  ]
  optimizer = torch.optim.AdamW(param_dicts, lr=args.lr, weight_decay=args.weight_decay)

  parameters = dict(model.named_parameters())
  unknown = [k for k in a.backbone_deltas if k not in parameters]
  if unknown:
    fail(f"--backbone-deltas: {unknown} are not parameters of this model")
  delta_keys = [k for k in parameters if "backbone" not in k] + list(a.backbone_deltas)
  before = {k: parameters[k].detach().clone() for k in delta_keys}

  images, mask, targets = make_batch(a.batch_seed)
  from util.misc import NestedTensor
  samples = NestedTensor(torch.from_numpy(images), torch.from_numpy(mask))
  torch_targets = [{"labels": torch.from_numpy(labels), "boxes": torch.from_numpy(boxes)} for labels, boxes in targets]
  out = {"images_padded": images, "mask": mask}
  for i, (labels, boxes) in enumerate(targets):
    out[f"labels_{i}"], out[f"boxes_{i}"] = labels, boxes

  weight_dict = criterion.weight_dict
  for k in range(1, a.steps + 1):  # engine.train_one_epoch
    outputs = model(samples)
    loss_dict = criterion(outputs, torch_targets)
    losses = sum(loss_dict[key] * weight_dict[key] for key in loss_dict if key in weight_dict)
    out[f"loss_step{k}"] = np.float32(losses.item())
    for key in LOSS_KEYS:
      out[f"lossdict_step{k}_{key}"] = np.float32(loss_dict[key].item())
    optimizer.zero_grad()
    losses.backward()
    if args.clip_max_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
    optimizer.step()
    print(f"step {k}: loss {losses.item():.6f}  " + "  ".join(f"{key} {loss_dict[key].item():.6f}" for key in LOSS_KEYS))
  for key in delta_keys:
    out[f"delta_{key}"] = (parameters[key].detach() - before[key]).numpy()

  import torchvision
  settings = dict(
      lr=args.lr, lr_backbone=args.lr_backbone, weight_decay=args.weight_decay, clip_max_norm=args.clip_max_norm,
      eos_coef=args.eos_coef, set_cost_class=args.set_cost_class, set_cost_bbox=args.set_cost_bbox,
      set_cost_giou=args.set_cost_giou, bbox_loss_coef=args.bbox_loss_coef, giou_loss_coef=args.giou_loss_coef,
      dropout=args.dropout, aux_loss=args.aux_loss, steps=a.steps, fill_seed=a.fill_seed,
      model=dict(backbone=args.backbone, dilation=args.dilation, position_embedding=args.position_embedding,
                 hidden_dim=args.hidden_dim, nheads=args.nheads, enc_layers=args.enc_layers,
                 dec_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
                 pre_norm=args.pre_norm, num_queries=args.num_queries, num_classes=91, aux_loss=args.aux_loss,
                 masks=args.masks),
      versions=dict(torch=torch.__version__, torchvision=torchvision.__version__, numpy=np.__version__,
                    threads=torch.get_num_threads()))
  out["settings"] = np.array(json.dumps(settings))
  np.savez_compressed(a.out, **out)
  print(f"wrote {a.out}: {len(targets)} images {images.shape[2]}x{images.shape[3]}, {a.steps} steps, "
        f"{len(delta_keys)} deltas")


if __name__ == "__main__":
  main()
