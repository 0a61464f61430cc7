"""torchvision in the side environment that runs the official code (../shared/OFFICIAL_ENV.md)."""
import sys

_LIBRARIES = []  # the operator declarations live as long as their Library objects


def import_torchvision():
  """torchvision, imported even where its compiled extension was built for another torch (the side
  venv's CPU torch: "operator torchvision::nms does not exist"): the two operator schemas it expects
  are declared first (never called), after which the pure-python parts DETR uses work. Raises
  ModuleNotFoundError when torch or torchvision is missing."""
  import torch
  try:
    import torchvision
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)
    import torchvision
  return torchvision
