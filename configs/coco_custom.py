"""Fine-tune DETR on your own data in COCO format (a json per split, images in a folder).

  python convert_torch_weights.py detr-r50-e632da11.pth ckpt/detr_r50   # or a HuggingFace model folder
  python train.py --config configs/coco_custom.py --workdir W --config.init_from=ckpt/detr_r50 \
    --config.dataset.train_images=DATA/train --config.dataset.train_json=DATA/train.json \
    --config.dataset.val_images=DATA/val --config.dataset.val_json=DATA/val.json
  python -m detr_jax.predict --checkpoint W/best photo.jpg --out-dir predictions

configs/coco_custom.py:VARIANT picks another released architecture (detr_resnet50_dc5,
detr_resnet101, detr_resnet101_dc5): it must be the one of `init_from`.

num_classes is the largest category id + 1 (the official convention), read from the training json
unless --config.model.num_classes is given. `init_from` a converted official checkpoint keeps
everything but the class head, which is re-initialised for your classes. Every `eval_every` steps
the model is evaluated on the val json; the best by `best_metric` is kept in W/best (a model
checkpoint with best.json: step and value), and training stops once `early_stopping_evals`
evaluations in a row bring no improvement. Check what the model will see first:
python -m detr_jax.data.inspect --config configs/coco_custom.py --split train ...
"""
from detr_jax.config import VARIANTS, dataset_config, model_config, training_config
from detr_jax.errors import UserError


def get_config(variant: str = "detr_resnet50"):
  detection = [name for name, overrides in VARIANTS.items() if not overrides.get("masks")]
  if variant not in detection:
    raise UserError(f"configs/coco_custom.py:{variant}: unknown variant; expected one of {', '.join(detection)}")
  # Official fine-tuning practice: the recipe's learning rates, a smaller batch; short schedule.
  config = training_config(total_steps=20_000, global_batch_size=8, lr_drop_step=15_000,
                           checkpoint_every=1000, eval_every=1000, log_every=50,
                           best_metric="eval/AP", early_stopping_evals=5)
  config.model = model_config(**VARIANTS[variant], num_classes=-1)  # -1: max category id + 1 of train_json
  config.dataset = dataset_config(name="coco_custom")
  return config
