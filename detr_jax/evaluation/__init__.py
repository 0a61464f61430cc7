"""Evaluation: COCO box and mask AP (`coco`), panoptic quality (`panoptic`)."""
from detr_jax.evaluation.coco import STAT_NAMES, CocoEvaluator, coco_from_examples, coco_from_json

__all__ = ["STAT_NAMES", "CocoEvaluator", "coco_from_examples", "coco_from_json"]
