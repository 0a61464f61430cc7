"""The thing/stuff rule (`coco_categories.is_thing_map`): the official COCO rule and json categories."""
from detr_jax.coco_categories import PANOPTIC_CATEGORIES, is_thing_map


def test_official_rule_agrees_with_the_panoptic_categories():
  official = is_thing_map(201)
  assert len(official) == 201 and official[0] and official[90] and not official[91] and not official[200]
  assert all(official[i] == isthing for i, _, isthing in PANOPTIC_CATEGORIES)


def test_json_categories():
  categories = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}, {"id": 3}]  # no "isthing": a thing
  assert is_thing_map(5, categories) == {0: False, 1: True, 2: False, 3: True, 4: False}  # no category: stuff
