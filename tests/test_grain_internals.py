"""The grain internals `Batches.close()` uses (grain has no public close), checked so that a grain
release that changes them fails here, naming the version, rather than leaking workers or memory."""
import multiprocessing
import os
from multiprocessing import shared_memory

import grain
import grain.python as grain_python

from detr_jax.data.pipeline import Batches, StreamPlan
from detr_jax.data.synthetic import SyntheticShapes

UPDATE = ("update Batches.close() in detr_jax/data/pipeline.py and the grain bounds in pyproject.toml and "
          "requirements.txt")


def test_the_internals_exist():
  loader = grain_python.DataLoader(data_source=grain_python.RangeDataSource(0, 4, 1),
                                   sampler=grain_python.IndexSampler(4, shuffle=False, num_epochs=1, seed=0))
  iterator = iter(loader)
  problems = []
  if not callable(getattr(getattr(iterator, "_iterator", None), "close", None)):
    problems.append("DataLoader iterators no longer hold a closable dataset iterator in `_iterator`")
  if not hasattr(grain_python.SharedMemoryArray, "_del_thread_pool"):
    problems.append("SharedMemoryArray has no `_del_thread_pool` (the pool that unlinks worker batches)")
  assert not problems, f"grain {grain.__version__}: {'; '.join(problems)}; {UPDATE}"
  iterator._iterator.close()


def test_close_stops_the_workers_and_frees_their_batches(monkeypatch):
  opened = []  # shared memory of the batches this process received (each a file in /dev/shm on Linux)
  open_shared_memory = shared_memory.SharedMemory.__init__

  def record(self, *args, **kwargs):
    open_shared_memory(self, *args, **kwargs)
    opened.append(self.name)

  monkeypatch.setattr(shared_memory.SharedMemory, "__init__", record)
  plan = StreamPlan(SyntheticShapes(8, image_size=(32, 32), seed=0), 2, (32,), augment=None)
  loader = Batches(plan, max_objects=4, workers=1, num_steps=4)
  batch = next(iter(loader))
  assert multiprocessing.active_children() and opened, \
      f"grain {grain.__version__}: no worker process or no batch in shared memory; {UPDATE}"
  del batch
  loader.close()
  assert multiprocessing.active_children() == [], f"grain {grain.__version__}: workers still run after close; {UPDATE}"
  if os.path.isdir("/dev/shm"):
    left = [name for name in opened if os.path.exists(os.path.join("/dev/shm", name))]
    assert not left, f"grain {grain.__version__}: shared memory of worker batches left after close: {left}; {UPDATE}"
