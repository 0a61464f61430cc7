"""train.py over several devices and several processes: 2 processes x 2 fake CPU devices on
loopback give the losses of 1 process on 1 device (the data split over hosts and devices, the
gradient and loss normalisation), and a SIGTERM to one process stops both at the same step."""
import os
import signal
import time

import pytest

from helpers import CACHEABLE, free_port, logged_losses, outputs_of, train_cli

ARGS = ["--config.total_steps=6", "--config.checkpoint_every=2", "--config.num_pictures=2", *CACHEABLE]


def test_two_processes_of_two_devices_equal_one_device(tmp_path):
  """The pair gets a SIGTERM to one process mid-run: both stop after the same step, save, exit 0,
  and the restarted pair continues exactly."""
  train_cli(tmp_path / "one", 1, *ARGS)
  one = logged_losses(tmp_path / "one")
  assert sorted(one) == [1, 2, 3, 4, 5, 6] and one[6] != one[1]  # the model trains: losses move

  def launch():
    multihost = [f"--coordinator_address=localhost:{free_port()}", "--num_processes=2"]
    return [train_cli(tmp_path / "two", 2, *ARGS, *multihost, f"--process_id={i}", wait=False) for i in range(2)]

  procs, metrics = launch(), tmp_path / "two" / "metrics.jsonl"
  deadline = time.time() + 300
  while procs[1].poll() is None and time.time() < deadline:
    if metrics.exists() and '{"step": 2,' in metrics.read_text():
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outputs = outputs_of(procs)
  stopped = [line for line in outputs[0].splitlines() if line.startswith("stopped by SIGTERM after step")]
  assert len(stopped) == 1, outputs
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 2 <= step < 6 and str(step) in os.listdir(tmp_path / "two" / "checkpoints")
  outputs = outputs_of(launch())
  assert f"resumed from {tmp_path / 'two'}/checkpoints/{step}" in outputs[0]
  two = logged_losses(tmp_path / "two")
  assert sorted(two) == list(range(1, 7))
  for s in one:
    assert two[s] == pytest.approx(one[s], rel=1e-4), s
  assert "6" in os.listdir(tmp_path / "two" / "checkpoints")
  assert (tmp_path / "two" / "predictions.png").exists()
  assert sum(out.count("eval: AP") for out in outputs) == 1  # reported once
