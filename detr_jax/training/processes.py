"""Keeping several processes in step without collective timeouts.

CPU collectives (gloo) give up when a peer is more than 30 s late. The first run of a step that
each process has just compiled, or the first collective after host work of different length on
each process (evaluation, pictures drawn by process 0), can be later than that on a loaded host.
`sync_processes` waits at a barrier of jax's coordination service instead (a timeout of minutes),
and `SyncAfterCompile` compiles a pmapped step before its first run and then waits there, so that
the step's collectives start only once every process holds its executable.
"""
import itertools

import jax
from orbax.checkpoint import multihost

BARRIER_TIMEOUT_S = 30 * 60  # the slowest process may still be compiling the full model
_barriers = itertools.count()  # every process passes the same barriers in the same order


def sync_processes(name: str) -> None:
  """Returns once every process has reached this barrier (at once with a single process)."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=f"{name} #{next(_barriers)}", timeout_ms=BARRIER_TIMEOUT_S * 1000)


class SyncAfterCompile:
  """A pmapped function whose first call per input shapes compiles it (jax keeps the executable
  for the calls), waits in `sync_processes`, then runs it; called like the function."""

  def __init__(self, pmapped, name: str):
    self.pmapped, self.name, self.shapes = pmapped, name, set()

  def __call__(self, *args):
    leaves, treedef = jax.tree_util.tree_flatten(args)
    shapes = (treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
    if shapes not in self.shapes:
      self.pmapped.lower(*args).compile()
      sync_processes(f"{self.name} compiled")
      self.shapes.add(shapes)
    return self.pmapped(*args)
