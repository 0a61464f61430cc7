"""Shared fixtures (helpers for tests live in helpers.py), and the order of the test files."""
import pytest

from helpers import load_npz

# The longest files first: pytest-xdist hands whole files to its workers in collection order
# (--dist loadfile --no-loadscope-reorder), so no worker is left alone with a long file at the end.
LONGEST_FIRST = ("test_training.py", "test_multihost.py", "test_panoptic_recipe.py", "test_mixed_precision.py",
                 "test_convert_and_compare.py", "test_criterion.py", "test_finetune.py", "test_compare_train.py",
                 "test_predict.py", "test_extra_variants.py", "test_model_parity.py", "test_batch_invariance.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path_factory, monkeypatch):
  """Tests never write to the user's ~/.cache (predict keeps its ONNX exports there by default)."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


@pytest.fixture(scope="session")
def inputs():
  return load_npz("inputs.npz")
