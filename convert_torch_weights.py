"""Convert official DETR / torchvision ResNet .pth files to detr-jax checkpoints, and back.

  python convert_torch_weights.py SRC.pth DST_DIR [--model NAME] [--num-classes N] [--force]
  python convert_torch_weights.py --export CKPT_DIR OUT.pth

Reads .pth files (zip or legacy format) without torch and without running pickled code. Every
key is checked: missing, unexpected and mis-shaped keys are listed and the exit code is 1.
A torchvision ImageNet ResNet (conv1.weight, layer1.0..., fc.*) becomes a backbone-only
checkpoint for training from ImageNet weights. --export writes {"model": state_dict} in the
official layout (zip format, float32), loadable with load_state_dict(strict=True).
"""
import argparse
import os
import shutil
import sys


def _fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 1


def _prepare_destination(path: str, force: bool) -> None:
  if os.path.exists(path):
    if not force:
      raise FileExistsError(f"{path} already exists (use --force to replace it)")
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def convert(args) -> int:
  import ml_collections

  from detr_jax import checkpoints, config
  from detr_jax.torch_io import convert as conv
  from detr_jax.torch_io.pth import load_pth

  state_dict, train_args = conv.split_checkpoint(load_pth(args.src))
  if conv.is_torchvision_resnet(state_dict):
    arch = conv.infer_resnet_arch(state_dict)
    params, report = conv.convert_torchvision_resnet(state_dict, arch)
    cfg = ml_collections.ConfigDict({"name": f"{arch}_imagenet", "backbone_only": True,
                                     "model": config.model_config(backbone=arch)})
    params = None if params is None else {"backbone": params}
    print(f"{args.src}: torchvision {arch} (fc.* ignored) -> backbone-only checkpoint")
  else:
    if args.model:
      cfg = config.variant_config(args.model)
    else:
      model_cfg, notes = conv.infer_model_config(state_dict, train_args)
      cfg = ml_collections.ConfigDict({"name": conv.variant_name(model_cfg), "model": model_cfg})
      for note in notes:
        print(f"note: {note}")
    reinit = args.num_classes is not None
    if reinit:
      cfg.model.num_classes = args.num_classes
    params, report = conv.convert_official(state_dict, cfg.model, reinit_class_head=reinit)
    print(f"{args.src}: {len(state_dict)} tensors -> {cfg.name} ({cfg.model.backbone}"
          f"{', DC5' if cfg.model.dilation else ''}{', panoptic' if cfg.model.masks else ''}, "
          f"{cfg.model.num_classes} classes)")
    if reinit and params is not None:
      print(f"class head re-initialised for {args.num_classes} classes ({args.num_classes + 1} logits); "
            "all other weights converted")
  if not report.ok:
    for line in report.lines():
      print(line, file=sys.stderr)
    return _fail(f"{args.src} does not match {cfg.name}: {len(report.missing)} missing, "
                 f"{len(report.unexpected)} unexpected, {len(report.mismatched)} mis-shaped keys")
  _prepare_destination(args.dst, args.force)
  checkpoints.save_model(args.dst, cfg, params)
  print(f"wrote {args.dst}")
  return 0


def export(args) -> int:
  from detr_jax import checkpoints
  from detr_jax.torch_io.convert import params_to_state_dict
  from detr_jax.torch_io.mapping import model_layout
  from detr_jax.torch_io.pth import save_pth

  cfg, params = checkpoints.load_model(args.src)
  if cfg.get("backbone_only", False):
    return _fail(f"{args.src} is a backbone-only checkpoint; only DETR models can be exported")
  state_dict = params_to_state_dict(params, model_layout(cfg.model))
  _prepare_destination(args.dst, args.force)
  save_pth({"model": state_dict}, args.dst)
  print(f"wrote {args.dst}: {len(state_dict)} tensors in the official {cfg.name} layout")
  return 0


def main(argv=None) -> int:
  from detr_jax.config import VARIANTS

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("src", help="SRC.pth to convert (or, with --export, our checkpoint directory)")
  parser.add_argument("dst", help="DST_DIR checkpoint directory (or, with --export, OUT.pth)")
  parser.add_argument("--model", choices=list(VARIANTS),
                      help="variant to convert to (default: inferred from the checkpoint)")
  parser.add_argument("--num-classes", type=int,
                      help="fine-tuning: re-initialise the class head for N classes (N + 1 logits)")
  parser.add_argument("--export", action="store_true", help="our checkpoint -> official .pth")
  parser.add_argument("--force", action="store_true", help="replace the destination if it exists")
  args = parser.parse_args(argv)
  if args.num_classes is not None and args.num_classes < 1:
    parser.error("--num-classes must be at least 1")
  try:
    return export(args) if args.export else convert(args)
  except Exception as e:  # CLI boundary: one clear line, never a traceback
    return _fail(str(e) or type(e).__name__)


if __name__ == "__main__":
  sys.exit(main())
