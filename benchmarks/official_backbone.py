"""Time the official DETR backbone's forward and forward+backward on CPU; the last line printed is JSON.

  /path/to/torch-env/bin/python benchmarks/official_backbone.py /path/to/official/detr --threads 2 \
      --size 512 683 --batch 2

Runs in the official environment (torch, torchvision; ../shared/OFFICIAL_ENV.md), not in ours. The
work is that of the train step's backbone: ResNet-50 with FrozenBatchNorm2d, stem and layer1
frozen, layer2-4 trained (`Backbone("resnet50", train_backbone=True, ...)`, random weights), the
backward of `layer4.sum()`. It is the anchor of the "backbone" row of benchmarks/profile_step.py.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch


def import_official_backbone(checkout):
  """models.backbone.Backbone of the checkout, without downloading weights; works around a CPU
  torch whose torchvision wheel cannot load its compiled ops (as official_bench.py does)."""
  sys.path.insert(0, os.path.abspath(checkout))
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
  from side_torch import import_torchvision
  import_torchvision()
  import torchvision.ops.misc
  if not hasattr(torchvision.ops.misc, "interpolate"):
    torchvision.ops.misc.interpolate = torch.nn.functional.interpolate
  import models.backbone
  models.backbone.is_main_process = lambda: False  # no ImageNet download
  return models.backbone.Backbone


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("checkout", help="the official DETR repository")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  backbone = import_official_backbone(args.checkout)("resnet50", True, False, False).body
  x = torch.randn(args.batch, 3, *args.size)

  def forward():
    with torch.no_grad():
      backbone(x)

  def forward_backward():
    backbone(x)["0"].sum().backward()

  result = {"size": list(args.size), "batch": args.batch, "threads": args.threads, "torch": torch.__version__}
  for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
    fn()  # warm-up
    times = []
    for _ in range(args.reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    print(f"{name}: median {statistics.median(times):.3f} s, min {min(times):.3f} s", flush=True)
    result[f"{name}_median_s"] = round(statistics.median(times), 4)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
