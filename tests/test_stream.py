"""The data stream's switches: dataset.augment (train) and dataset.val_resize (val) are separate."""
import ml_collections

from detr_jax.config import dataset_config
from detr_jax.data.stream import val_resize


def test_augment_false_keeps_the_val_resize():
  assert val_resize(dataset_config(augment=False)) is True
  assert val_resize(dataset_config(augment=True, val_resize=False)) is False
  # a config saved before the field existed: the old rule (resize exactly when augmenting)
  assert val_resize(ml_collections.ConfigDict({"augment": False})) is False
  assert val_resize(ml_collections.ConfigDict({"augment": True})) is True
