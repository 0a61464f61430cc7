"""WORKDIR/metrics.jsonl: one JSON object per logged step (train rows and eval rows)."""
import json
import os


class MetricsLog:
  """enabled=False (processes other than the first) makes it write nothing."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path, self.enabled = os.path.join(workdir, "metrics.jsonl"), enabled

  def truncate_after(self, step: int) -> None:
    """Drops rows past `step`, written by a run that was interrupted after its last checkpoint."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(rows)
    os.replace(tmp, self.path)

  def write(self, row: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({k: (v if isinstance(v, (int, str)) else float(v)) for k, v in row.items()}) + "\n")

  def rows(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]
