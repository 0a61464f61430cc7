"""Convert official DETR / torchvision ResNet .pth files and HuggingFace DETR folders to detr-jax
checkpoints, and back.

  python convert_torch_weights.py SRC.pth DST_DIR [--model NAME] [--num-classes N] [--force] [--list-keys]
  python convert_torch_weights.py HF_DIR DST_DIR [--num-classes N] [--force] [--list-keys]
  python convert_torch_weights.py --export CKPT_DIR OUT.pth [--force]
  python convert_torch_weights.py --export-hf CKPT_DIR HF_DIR [--force]

Reads .pth files (zip or legacy format) without torch and without running pickled code. Every
key is checked: missing, unexpected and mis-shaped keys are counted and the first few named
(--list-keys: all of them), and the exit code is 1. Outputs are written atomically, and --force
replaces only one of our checkpoints (or, with --export, a file), never another directory.
A torchvision ImageNet ResNet (conv1.weight, layer1.0..., fc.*) becomes a backbone-only
checkpoint for training from ImageNet weights. --export writes {"model": state_dict} in the
official layout (zip format, float32), loadable with load_state_dict(strict=True).

A HuggingFace folder (HF_DIR holding config.json and model.safetensors or pytorch_model.bin, as
save_pretrained writes it, transformers 4 or 5) of a DetrForObjectDetection / DetrForSegmentation
with a timm ResNet backbone is read without torch; its id2label become the checkpoint's class
names. --export-hf writes config.json + model.safetensors that transformers' from_pretrained
loads with no missing or unexpected keys.
"""
import argparse
import os
import sys

from detr_jax.errors import UserError
from detr_jax.torch_io.pth import PthError

CHECKPOINT = "a detr-jax checkpoint (a directory holding params/ and config/)"
HF_EXPORT = "a folder holding only config.json and model.safetensors (what --export-hf writes)"


def _check_destination(path: str, force: bool, replaceable, what: str) -> None:
  """Refuses an existing `path` unless --force and `replaceable(path)`: nothing else is ever replaced."""
  if not os.path.lexists(path):
    return
  if not force:
    raise UserError(f"{path} already exists (use --force to replace it)")
  if not replaceable(path):
    raise UserError(f"{path} exists and is not {what}; --force replaces nothing else, so it is left as it is")


def _interpret(state_dict: dict, train_args, args):
  """(config, params or None, key report) for a state dict, with the CLI's --model / --num-classes."""
  import ml_collections

  from detr_jax import config
  from detr_jax.torch_io import convert as conv

  if conv.is_torchvision_resnet(state_dict):
    arch = conv.infer_resnet_arch(state_dict)
    params, report = conv.convert_torchvision_resnet(state_dict, arch)
    cfg = ml_collections.ConfigDict({"name": f"{arch}_imagenet", "backbone_only": True,
                                     "model": config.model_config(backbone=arch)})
    print(f"{args.src}: torchvision {arch} (fc.* ignored) -> backbone-only checkpoint")
    return cfg, (None if params is None else {"backbone": params}), report
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
  if args.model and not report.ok:
    _suggest_variant(state_dict, train_args, reinit)
  print(f"{args.src}: {len(state_dict)} tensors -> {cfg.name} ({cfg.model.backbone}"
        f"{', DC5' if cfg.model.dilation else ''}{', panoptic' if cfg.model.masks else ''}, "
        f"{cfg.model.num_classes} classes)")
  if reinit and params is not None:
    print(f"class head re-initialised for {args.num_classes} classes ({args.num_classes + 1} logits); "
          "all other weights converted")
  return cfg, params, report


def _suggest_variant(state_dict: dict, train_args, reinit: bool) -> None:
  """After a wrong --model: names the architecture the file's own keys and shapes give, if they fit."""
  from detr_jax.torch_io import convert as conv

  try:
    model_cfg, _ = conv.infer_model_config(state_dict, train_args)
  except UserError:
    return
  if conv.convert_official(state_dict, model_cfg, reinit_class_head=reinit)[1].ok:
    print(f"note: the file fits {conv.variant_name(model_cfg)} ({model_cfg.backbone}"
          f"{', panoptic' if model_cfg.masks else ''}, {model_cfg.enc_layers}+{model_cfg.dec_layers} layers, "
          f"d={model_cfg.hidden_dim}, {model_cfg.num_queries} queries, {model_cfg.num_classes} classes): run "
          "without --model to convert it as that", file=sys.stderr)


def _interpret_hf(args):
  """(config, params or None, key report in HF names) for a HuggingFace folder, with --num-classes."""
  from detr_jax.torch_io import convert as conv
  from detr_jax.torch_io import hf

  if args.model:
    raise UserError(f"{args.src}: --model does not apply to a HuggingFace folder (its config.json gives the "
                    "architecture)")
  cfg, notes = hf.read_config(args.src)
  state_dict, weights = hf.load_weights(args.src)
  for note in notes:
    print(f"note: {note}")
  reinit = args.num_classes is not None
  if reinit:
    cfg.model.num_classes = args.num_classes
    del cfg["class_names"]  # the new classes' names come from the dataset
  state_dict = hf.file_key_names(state_dict)
  layout = hf.key_layout(cfg.model)
  head = "class_labels_classifier."
  if reinit:
    layout = [e for e in layout if head not in e.key]
  report = conv.check_keys(state_dict, layout, ignore=lambda k: k.endswith(".num_batches_tracked")
                           or (reinit and head in k))
  print(f"{weights}: {len(state_dict)} tensors -> {cfg.name} ({cfg.model.backbone}"
        f"{', DC5' if cfg.model.dilation else ''}{', segmentation' if cfg.model.masks else ''}, "
        f"{cfg.model.num_classes} classes)")
  if not report.ok:
    return cfg, None, report
  official = hf.to_official({e.key: state_dict[e.key] for e in layout}, cfg.model)
  params, official_report = conv.convert_official(official, cfg.model, reinit_class_head=reinit)
  assert official_report.ok, official_report  # the HF layout is the official one renamed
  if reinit:
    print(f"class head re-initialised for {args.num_classes} classes ({args.num_classes + 1} logits); "
          "all other weights converted")
  return cfg, params, report


def convert(args) -> int:
  from detr_jax import model_checkpoint
  from detr_jax.torch_io import convert as conv
  from detr_jax.torch_io import hf
  from detr_jax.torch_io.pth import load_pth

  _check_destination(args.dst, args.force, model_checkpoint.is_model_checkpoint, CHECKPOINT)
  if os.path.isdir(args.src):
    if not hf.is_hf_folder(args.src):
      raise UserError(f"{args.src} is a directory without {hf.CONFIG}; expected a .pth file or a HuggingFace "
                      "model folder (config.json + model.safetensors or pytorch_model.bin)")
    cfg, params, report = _interpret_hf(args)
    model = f"the model its {hf.CONFIG} describes ({cfg.name})"
  else:
    obj = load_pth(args.src)
    try:
      cfg, params, report = _interpret(*conv.split_checkpoint(obj), args)
    except UserError as e:
      raise UserError(f"{args.src}: {e}") from None
    model = cfg.name
  if not report.ok:
    if args.list_keys:
      for line in report.lines():
        print(line, file=sys.stderr)
    hint = "" if args.list_keys else "(--list-keys lists them all)"
    raise UserError(f"{args.src} does not match {model}: {report.summary(more_hint=hint)}")
  model_checkpoint.save_model(args.dst, cfg, params, replace=args.force)
  print(f"wrote {args.dst}")
  return 0


def export(args) -> int:
  from detr_jax import model_checkpoint
  from detr_jax.torch_io.convert import params_to_state_dict, variant_name
  from detr_jax.torch_io.mapping import official_layout
  from detr_jax.torch_io.pth import save_pth

  _check_destination(args.dst, args.force, os.path.isfile, "a file")
  cfg, params = model_checkpoint.load_model(args.src)
  if cfg.get("backbone_only", False):
    raise UserError(f"{args.src} is a backbone-only checkpoint; only DETR models can be exported")
  try:
    state_dict = params_to_state_dict(params, official_layout(cfg.model))
  except UserError as e:
    raise UserError(f"{args.src}: {e}") from None
  save_pth({"model": state_dict}, args.dst)  # atomic: a temporary file beside it, then renamed
  layout = cfg.get("name") or variant_name(cfg.model)  # training configs have no name
  print(f"wrote {args.dst}: {len(state_dict)} tensors in the official {layout} layout")
  return 0


def _is_hf_export(path: str) -> bool:
  return os.path.isdir(path) and set(os.listdir(path)) <= {"config.json", "model.safetensors"}


def export_hf(args) -> int:
  from detr_jax import model_checkpoint
  from detr_jax.predict import class_names
  from detr_jax.torch_io import hf
  from detr_jax.torch_io.convert import params_to_state_dict
  from detr_jax.torch_io.mapping import official_layout

  _check_destination(args.dst, args.force, _is_hf_export, HF_EXPORT)
  cfg, params = model_checkpoint.load_model(args.src)
  if cfg.get("backbone_only", False):
    raise UserError(f"{args.src} is a backbone-only checkpoint; only DETR models can be exported")
  try:
    config = hf.export_config(cfg, class_names(cfg, args.src))
    state_dict = hf.from_official(params_to_state_dict(params, official_layout(cfg.model)), cfg.model)
  except UserError as e:
    raise UserError(f"{args.src}: {e}") from None
  hf.write_folder(args.dst, config, state_dict)
  if cfg.model.position_embedding == "learned":
    print("note: the learned position embedding is written as model.position_embedding.* (transformers 5); "
          "transformers 4 names it model.backbone.position_embedding.*")
  print(f"wrote {args.dst}: {config['architectures'][0]} ({len(state_dict)} tensors in model.safetensors, "
        f"{len(config['id2label'])} classes in config.json)")
  return 0


def main(argv=None) -> int:
  from detr_jax.config import VARIANTS

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("src", help="SRC.pth or HuggingFace folder to convert (with --export/--export-hf: our "
                      "checkpoint directory)")
  parser.add_argument("dst", help="DST_DIR checkpoint directory (with --export: OUT.pth; with --export-hf: a "
                      "HuggingFace folder)")
  parser.add_argument("--model", choices=list(VARIANTS),
                      help="variant to convert to (default: inferred from the checkpoint)")
  parser.add_argument("--num-classes", type=int,
                      help="fine-tuning: re-initialise the class head for N classes (N + 1 logits)")
  parser.add_argument("--export", action="store_true", help="our checkpoint -> official .pth")
  parser.add_argument("--export-hf", action="store_true",
                      help="our checkpoint -> HuggingFace folder (config.json + model.safetensors)")
  parser.add_argument("--force", action="store_true",
                      help="replace the destination if it is a detr-jax checkpoint (with --export: a file; "
                      "with --export-hf: a folder --export-hf wrote)")
  parser.add_argument("--list-keys", action="store_true",
                      help="when the keys do not match, list every missing, unexpected and mis-shaped key")
  args = parser.parse_args(argv)
  if args.num_classes is not None and args.num_classes < 1:
    parser.error("--num-classes must be at least 1")
  if args.export and args.export_hf:
    parser.error("--export and --export-hf exclude each other")
  try:
    return export(args) if args.export else export_hf(args) if args.export_hf else convert(args)
  except (UserError, PthError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
