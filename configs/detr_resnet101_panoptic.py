"""detr_resnet101_panoptic on COCO panoptic with the official two-stage recipe (docs/parity.md §12.3).

  Stage 1, a box model with the 250 panoptic classes:
    python train.py --config configs/detr_resnet101_panoptic.py:boxes --workdir W1 \
      --config.dataset.coco_path=/data/coco --config.dataset.coco_panoptic_path=/data/coco_panoptic
  Stage 2 (default), the mask head on the frozen detector:
    python train.py --config configs/detr_resnet101_panoptic.py --workdir W2 --config.init_from=W1/checkpoints/<step> \
      --config.dataset.coco_path=/data/coco --config.dataset.coco_panoptic_path=/data/coco_panoptic

The two stages (epochs, what trains) are `panoptic_training_config` in detr_jax/config.py, on top of
the COCO recipe there, each value with its reason. Every value of a stage:
    python train.py --config configs/detr_resnet101_panoptic.py:boxes --print_config
"""
from detr_jax.config import panoptic_training_config


def get_config(stage="masks"):
  return panoptic_training_config("detr_resnet101_panoptic", stage)
