"""Evaluation: COCO box AP."""
from detr_jax.evaluation.coco import (STAT_NAMES, CocoEvaluator, coco_box_ap, coco_from_examples,
                                      coco_from_json)

__all__ = ["STAT_NAMES", "CocoEvaluator", "coco_box_ap", "coco_from_examples", "coco_from_json"]
