"""Modules that import neither jax nor flax (each checked in a fresh interpreter).

Data workers stay light: the modules a grain worker runs (sources, transforms, batching) and the
package __init__s they pass through. `detr_jax.data.pipeline` is not listed: grain itself imports
jax when it is installed (its profiler). The torch-side helpers (fill, .pth files, the official key
layout) work in a torch environment without jax.
"""
import importlib.util
import subprocess
import sys

import pytest

WORKER_MODULES = (
    "detr_jax", "detr_jax.data", "detr_jax.data.coco", "detr_jax.data.synthetic", "detr_jax.data.tfds_source",
    "detr_jax.data.transforms", "detr_jax.data.batching", "detr_jax.data.validation", "detr_jax.data.images",
    "detr_jax.data.fake_coco", "detr_jax.panoptic_png", "detr_jax.ops", "detr_jax.ops.sampling",
    "detr_jax.coco_categories", "detr_jax.evaluation", "detr_jax.evaluation.coco", "detr_jax.evaluation.panoptic",
)
TORCH_SIDE_MODULES = ("detr_jax.fill", "detr_jax.torch_io", "detr_jax.torch_io.pth", "detr_jax.torch_io.mapping")


@pytest.mark.parametrize("module", WORKER_MODULES + TORCH_SIDE_MODULES)
def test_module_imports_no_jax(module):
  if module == "detr_jax.data.tfds_source" and importlib.util.find_spec("tensorflow_datasets") is None:
    pytest.skip("tensorflow-datasets is not installed")
  check = (f"import sys, {module}; heavy = sorted({{'jax', 'flax'}} & set(sys.modules)); "
           f"assert not heavy, f'{module} imports {{heavy}}'")
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
