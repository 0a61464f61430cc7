"""detr_resnet101_dc5 on COCO 2017 with the official recipe (docs/parity.md §12): batch 64, 500 epochs, lr drop at 400.

  python train.py --config configs/detr_resnet101_dc5.py --workdir W --config.dataset.coco_path=/data/coco

The recipe, value by value with its reason, is in detr_jax/config.py (`coco_training_config`
and the defaults it starts from). Every value of this config:
  python train.py --config configs/detr_resnet101_dc5.py --print_config
"""
from detr_jax.config import coco_training_config


def get_config():
  # The released model's schedule: 500 epochs, lr x0.1 from epoch 400. In steps of the global
  # batch (64): --config.global_batch_size changes the steps per epoch, not the epochs.
  return coco_training_config("detr_resnet101_dc5", epochs=500, lr_drop_epoch=400)
