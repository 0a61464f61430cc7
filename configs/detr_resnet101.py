"""detr_resnet101 on COCO 2017 with the official recipe (SPEC 6.1): batch 64, 500 epochs, lr drop at 400.

  python train.py --config configs/detr_resnet101.py --workdir W --config.dataset.coco_path=/data/coco
"""
from detr_jax.config import coco_training_config


def get_config():
  return coco_training_config("detr_resnet101")
