"""A config's data stream: `build_stream(config, dataset, split)` -> this process's batches.

The one way from `config.dataset` to transforms, buckets and loader, used by training ("train"),
evaluation ("val"), the input-pipeline benchmark and, example by example, `detr_jax.data.inspect`.
train: the official random augmentation when dataset.augment; val: the official resize to
(val_size, max_size) when dataset.val_resize. See `detr_jax.data.pipeline` for the stream itself.
"""
import jax

from detr_jax.data import SPLITS
from detr_jax.data.pipeline import Batches, StreamPlan
from detr_jax.data.transforms import Augment


def val_resize(ds) -> bool:
  """dataset.val_resize; a config without the field (saved in an older checkpoint) resizes exactly
  when it augments, the rule before the field existed."""
  return bool(ds.get("val_resize", ds.augment))


def stream_plan(config, dataset, split: str, global_batch: int) -> StreamPlan:
  """The plan of `split`'s stream of `dataset`: transforms, buckets and seed of `config`."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  ds = config.dataset
  augment = Augment(tuple(ds.scales), ds.max_size, tuple(ds.crop_resize), tuple(ds.crop_size)) if ds.augment else None
  return StreamPlan(dataset, global_batch, ds.bucket_sides, seed=config.seed, train=split == "train",
                    augment=augment, val_resize=val_resize(ds), val_size=ds.val_size, max_size=ds.max_size)


def build_stream(config, dataset, split: str, **loader) -> Batches:
  """This process's batches of `dataset`'s `split` stream, with config.dataset.workers workers.

  train: endless, global_batch_size per step, with target masks for mask models; val: one pass,
  eval_batch_size (0: global_batch_size), no target masks (evaluation reads the ground truth from
  the dataset). loader: `Batches` options (num_steps, threads, prefetch).
  """
  train = split == "train"
  batch = config.global_batch_size if train else (config.eval_batch_size or config.global_batch_size)
  if batch % jax.device_count():
    raise ValueError(f"{'global' if train else 'eval'} batch size {batch} must be divisible by the number "
                     f"of devices ({jax.device_count()})")
  return Batches(stream_plan(config, dataset, split, batch), config.max_objects,
                 with_masks=train and config.model.masks, process_index=jax.process_index(),
                 process_count=jax.process_count(), workers=config.dataset.workers, **loader)
