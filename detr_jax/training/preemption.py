"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM (what preemptible TPU/GPU jobs receive).

Inside `StopSignals`, the first signal only asks the training loop to save a checkpoint at the
end of the current step and return; a second one acts as it would have (abort). With several
processes the stop is coordinated by jax's preemption service (`jax.distributed` listens for
SIGTERM; Ctrl-C is forwarded to it as SIGTERM): every process stops at the same step.
"""
import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
  """Context manager; `stop_requested(step)` after each step says whether to save and stop there."""

  def __init__(self):
    self.received = None  # name of the first signal received
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # handlers can only be installed from the main thread; signals act as usual
    # Several processes: jax's preemption notifier owns SIGTERM; Ctrl-C is forwarded to it.
    ours = (signal.SIGINT,) if jax.process_count() > 1 else SIGNALS
    self._previous = {s: signal.signal(s, self._handle) for s in ours}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received is not None:  # the second signal: its usual effect, at once
      signal.signal(signum, self._previous.pop(signum))
      signal.raise_signal(signum)
      return
    self.received = name
    print(f"\n{name} received: saving a checkpoint after this step, then stopping "
          f"(send it again to abort without saving)", file=sys.stderr, flush=True)
    if jax.process_count() > 1 and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)

  def stop_requested(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process; call it at every step)."""
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or "SIGTERM"
        return True
      return False
    return self.received is not None
