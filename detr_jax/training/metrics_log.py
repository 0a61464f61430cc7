"""WORKDIR/metrics.jsonl: one JSON object per logged step (train rows and eval rows), mirrored as
TensorBoard events in WORKDIR/tensorboard.

TensorBoard tags: a row's key with a "/" as it is (eval/AP, eval/segm/AP, eval/PQ), any other under
train/ (train/loss, train/lr, train/images_per_s); pictures under their own tag (eval/predictions).
"""
import json
import os

import numpy as np
from tensorboardX import SummaryWriter


def display_value(name: str, value: float) -> str:
  """A metric as printed: every AP/AR (pycocotools, 0-1) and PQ/SQ/RQ (0-100) in percent, one
  decimal, as papers quote them; n/a for pycocotools' -1 (no ground truth of that size)."""
  if value == -1:
    return "n/a"
  percent = value if name.split("/")[-1][:2] in ("PQ", "SQ", "RQ") else 100 * value
  return f"{percent:.1f}"


def format_stats(stats: dict) -> str:
  """"AP 41.2, AP50 62.0, ..., PQ 45.1": `stats` ({metric: value}) as `display_value` prints them."""
  return ", ".join(f"{name} {display_value(name, value)}" for name, value in stats.items())


class MetricsLog:
  """enabled=False (processes other than the first) makes it write nothing; tensorboard=False
  writes metrics.jsonl only."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = False):
    self.path, self.enabled = os.path.join(workdir, "metrics.jsonl"), enabled
    self.tensorboard_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
    self._writer, self._purge_step = None, None

  def truncate_after(self, step: int) -> None:
    """Drops rows past `step`, written by a run that was interrupted after its last checkpoint;
    TensorBoard then hides its points past `step` as well."""
    self._purge_step = step + 1
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(rows)
    os.replace(tmp, self.path)

  def write(self, row: dict) -> None:
    """Appends `row` ({"step": int, name: number}) to metrics.jsonl and its numbers to TensorBoard."""
    if not self.enabled:
      return
    row = {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in row.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    writer = self._tensorboard()
    if writer is not None:
      for name, value in row.items():
        if name != "step":
          writer.add_scalar(name if "/" in name else f"train/{name}", value, row["step"])
      writer.flush()

  def write_image(self, tag: str, image, step: int) -> None:
    """A picture (uint8 [H, W, 3] or a PIL image) in TensorBoard only."""
    writer = self._tensorboard() if self.enabled else None
    if writer is not None:
      writer.add_image(tag, np.asarray(image, np.uint8), step, dataformats="HWC")
      writer.flush()

  def rows(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def evaluations(self, up_to: int) -> dict[int, dict]:
    """{step: {metric: value}} of the eval rows at steps <= `up_to` (metrics without "eval/", as
    `evaluate` returns them). Every process can read them: the file is on the shared workdir."""
    found = {}
    for row in self.rows():
      stats = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
      if stats and row["step"] <= up_to:
        found[row["step"]] = stats
    return found

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def _tensorboard(self) -> SummaryWriter | None:
    """The event writer, opened at the first event. A resumed run (truncate_after) writes a new
    file that tells TensorBoard to drop the earlier files' points from the resumed step on
    (purge_step), so that no step appears twice; the file name carries that step, so two runs in
    the same second do not share a file."""
    if self.tensorboard_dir is None:
      return None
    if self._writer is None:
      suffix = "" if self._purge_step is None else f".from_step_{self._purge_step}"
      self._writer = SummaryWriter(self.tensorboard_dir, purge_step=self._purge_step, filename_suffix=suffix)
    return self._writer
