"""Deterministic, resumable batching of a map-style dataset (examples by index).

Batch k of the training stream is a pure function of (seed, k): a resumed run sees exactly the
batches it would have seen. The iterator state saved with checkpoints is just the next step.
"""
import concurrent.futures

import numpy as np

from detr_jax.data.batching import collate


class BatchLoader:
  """Global batches from `dataset`, reshuffled every epoch with a seed of its own."""

  def __init__(self, dataset, batch_size: int, pad_to, max_objects: int, seed: int = 0,
               shuffle: bool = True, with_masks: bool = False):
    self.dataset, self.batch_size, self.pad_to = dataset, batch_size, tuple(pad_to)
    self.max_objects, self.seed, self.shuffle, self.with_masks = max_objects, seed, shuffle, with_masks

  def indices(self, step: int) -> np.ndarray:
    n = len(self.dataset)
    flat = step * self.batch_size + np.arange(self.batch_size)
    epochs, positions = np.divmod(flat, n)
    if not self.shuffle:
      return positions
    orders = {e: np.random.default_rng([self.seed, int(e)]).permutation(n) for e in np.unique(epochs)}
    return np.array([orders[e][p] for e, p in zip(epochs, positions)])

  def batch(self, step: int) -> dict:
    examples = [self.dataset[int(i)] for i in self.indices(step)]
    return collate(examples, pad_to=self.pad_to, max_objects=self.max_objects, with_masks=self.with_masks)

  def iterate(self, start_step: int, stop_step: int):
    """Yields (step, batch) for start_step <= step < stop_step, preparing the next in a thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      future = pool.submit(self.batch, start_step) if start_step < stop_step else None
      for step in range(start_step, stop_step):
        batch = future.result()
        if step + 1 < stop_step:
          future = pool.submit(self.batch, step + 1)
        yield step, batch


def eval_batches(dataset, batch_size: int, pad_to, max_objects: int):
  """Every example once, in order; the last batch is filled up with repeats, flagged `is_real`."""
  n = len(dataset)
  for start in range(0, n, batch_size):
    idx = [min(i, n - 1) for i in range(start, start + batch_size)]
    batch = collate([dataset[i] for i in idx], pad_to=pad_to, max_objects=max_objects)
    batch["is_real"] = np.arange(start, start + batch_size) < n
    yield batch
