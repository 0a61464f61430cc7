"""Data workers stay light: the modules a grain worker runs (sources, transforms, batching) and the
package __init__s they pass through import neither jax nor flax (each checked in a fresh interpreter).

`detr_jax.data.pipeline` is not listed: grain itself imports jax when it is installed (its profiler).
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


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_worker_module_imports_no_jax(module):
  if module == "detr_jax.data.tfds_source" and importlib.util.find_spec("tensorflow_datasets") is None:
    pytest.skip("tensorflow-datasets is not installed")
  check = (f"import sys, {module}; heavy = sorted({{'jax', 'flax'}} & set(sys.modules)); "
           f"assert not heavy, f'{module} imports {{heavy}}'")
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
