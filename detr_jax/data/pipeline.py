"""Input pipelines: examples -> transformed, bucket-padded batches, with grain.

Global batch `step` of a stream is a pure function of (seed, step): which examples (a fresh
permutation per epoch) and how each is augmented (a generator seeded by its position). Every
process computes the same global plan and loads only its own slice, so the batches of N processes
x D devices equal those of one process with N*D devices, and a resumed run (grain's iterator state
is saved with each checkpoint) sees exactly the batches it would have seen.

Padding: all images of a global batch share one padded shape, each side the smallest of
`bucket_sides` that fits the batch's largest planned image; the few resulting shapes each compile
once.
"""
import gc
import json
import os

import grain.python as grain
from absl import flags
import numpy as np

from detr_jax.data import transforms
from detr_jax.data.batching import collate


def bucket_shape(hw, sides) -> tuple[int, int]:
  """(H, W): each of h, w rounded up to the smallest side in `sides` that holds it."""
  sides = sorted(sides)
  out = []
  for s in hw:
    fits = [b for b in sides if b >= s]
    if not fits:
      raise ValueError(f"an image side of {s} px exceeds the largest bucket side {sides[-1]}; "
                       f"add a larger value to dataset.bucket_sides")
    out.append(fits[0])
  return tuple(out)


class StreamPlan:
  """Which example fills each slot of each global batch, how it is transformed, and the padding.

  train: a new permutation of the dataset every epoch and the official random augmentation
  (`augment=None`: none); eval (train=False): the examples in order, the last batch filled up with
  repeats flagged not real, and the official val resize to (val_size, max_size) (`val_resize=False`:
  none).
  """

  def __init__(self, dataset, global_batch: int, bucket_sides, seed: int = 0, train: bool = True,
               augment: transforms.Augment | None = transforms.Augment(), val_resize: bool = True,
               val_size: int = 800, max_size: int = 1333):
    self.dataset, self.global_batch, self.bucket_sides = dataset, global_batch, tuple(bucket_sides)
    self.seed, self.train, self.augment = seed, train, augment
    self.val_resize, self.val_size, self.max_size = val_resize, val_size, max_size
    self._orders = {}  # epoch -> permutation, the current epoch's only

  def num_steps(self) -> int | None:
    """Batches in one pass (eval); None for the endless train stream."""
    return None if self.train else -(-len(self.dataset) // self.global_batch)

  def index(self, step: int, slot: int) -> tuple[int, bool]:
    """(dataset index, is_real) of `slot` in global batch `step`."""
    n, position = len(self.dataset), step * self.global_batch + slot
    if not self.train:
      return min(position, n - 1), position < n
    epoch, offset = divmod(position, n)
    if epoch not in self._orders:
      self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
    return int(self._orders[epoch][offset]), True

  def plan(self, position: int, index: int):
    """The transforms of example `index` at stream `position` (step * global_batch + slot); a train
    augmentation is drawn from a generator seeded by (seed, position)."""
    if self.train and self.augment is not None:
      rng = transforms.example_rng(self.seed, position)
      return transforms.plan_train(rng, self.dataset.image_hw(index), self.augment)
    if not self.train and self.val_resize:
      return transforms.plan_val(self.dataset.image_hw(index), self.val_size, self.max_size)
    return ()

  def bucket(self, step: int) -> tuple[int, int]:
    sizes = []
    for slot in range(self.global_batch):
      index, _ = self.index(step, slot)
      plan = self.plan(step * self.global_batch + slot, index)
      sizes.append(transforms.planned_size(plan, self.dataset.image_hw(index)))
    return bucket_shape(np.max(sizes, axis=0), self.bucket_sides)


class _LocalBatches(grain.RandomAccessDataSource):
  """Record k: this process's slice of global batch k, transformed and padded (see `collate`).

  A record is a whole batch, so grain's workers (which deal records out round-robin) never mix
  examples of different steps.
  """

  def __init__(self, plan: StreamPlan, max_objects: int, with_masks: bool, process_index: int,
               process_count: int, num_steps: int):
    if plan.global_batch % process_count:
      raise ValueError(f"global batch {plan.global_batch} is not divisible by {process_count} processes")
    self.plan, self.max_objects, self.with_masks, self.steps = plan, max_objects, with_masks, num_steps
    self.local_batch = plan.global_batch // process_count
    self.slots = range(process_index * self.local_batch, (process_index + 1) * self.local_batch)

  def __len__(self):
    return self.steps

  def __repr__(self):
    # grain compares it when restoring an iterator state. It names the global stream only (not
    # this process's slots), so one saved state resumes every process, whatever their number.
    p = self.plan
    return (f"_LocalBatches({type(p.dataset).__name__}(len={len(p.dataset)}), global_batch={p.global_batch}, "
            f"seed={p.seed}, train={p.train}, augment={p.augment})")

  def __getitem__(self, step: int) -> dict:
    step = int(step)
    examples, real = [], []
    for slot in self.slots:
      index, is_real = self.plan.index(step, slot)
      plan = self.plan.plan(step * self.plan.global_batch + slot, index)
      examples.append(transforms.apply_plan(self.plan.dataset[index], plan))
      real.append(is_real)
    batch = collate(examples, pad_to=self.plan.bucket(step), max_objects=self.max_objects,
                    with_masks=self.with_masks)
    batch["is_real"] = np.array(real)
    batch["step"] = np.int64(step)
    return batch


ENDLESS = 2 ** 40  # steps of a train stream: runs may be extended when resumed


def default_workers() -> int:
  return min(8, os.cpu_count() or 1)


class Batches:
  """Iterable of this process's batches of a stream (see module doc), resumable by `state()`.

  num_steps: batches to produce (default: one pass for eval, endless for train).
  workers: grain worker processes (0: none; -1: `default_workers()`), each preparing whole
  batches; threads: batches prepared in parallel by threads of each process (PIL decoding and
  resizing release the GIL).
  """

  def __init__(self, plan: StreamPlan, max_objects: int, with_masks: bool = False, num_steps: int | None = None,
               process_index: int = 0, process_count: int = 1, workers: int = 0, threads: int = 2,
               prefetch: int = 2):
    self.plan = plan
    source = _LocalBatches(plan, max_objects, with_masks, process_index, process_count,
                           num_steps or plan.num_steps() or ENDLESS)
    workers = default_workers() if workers < 0 else workers
    if workers and not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags (defaults are fine) outside absl apps
    self.loader = grain.DataLoader(
        data_source=source, sampler=grain.IndexSampler(len(source), shuffle=False, num_epochs=1, seed=0),
        worker_count=workers, worker_buffer_size=prefetch,
        read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    self._iterator = None

  def __iter__(self):
    if self._iterator is None:
      self._iterator = iter(self.loader)
    return self._iterator

  def state(self) -> dict:
    """JSON-able position of the iterator (batches handed out so far)."""
    return json.loads(iter(self).get_state().decode())

  def restore(self, state: dict) -> None:
    iter(self).set_state(json.dumps(state).encode())

  def close(self) -> None:
    """Stops the workers and frees the shared memory of batches they prepared ahead.

    grain (0.2.16 to 0.2.18 at least) has no public way to do this, so two internals are used,
    and tests/test_grain_internals.py fails naming the grain version when they change: the loader
    iterator's `_iterator`, a dataset iterator that can be closed, and the one-thread pool
    (`SharedMemoryArray._del_thread_pool`) that unlinks worker batches, which must drain first.
    """
    if self._iterator is None:
      return
    self._iterator._iterator.close()
    self._iterator = None
    gc.collect()  # drops the prefetched batches, queueing their unlinks
    if grain.SharedMemoryArray._del_thread_pool is not None:
      grain.SharedMemoryArray._del_thread_pool.apply(lambda: None)  # FIFO: returns once they ran
