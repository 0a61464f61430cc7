"""Released variant detr_resnet50_dc5_panoptic (official architecture; training settings come with the data configs)."""
from detr_jax.config import variant_config


def get_config():
  return variant_config("detr_resnet50_dc5_panoptic")
