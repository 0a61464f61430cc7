"""Shared fixtures (helpers for tests live in helpers.py)."""
import pytest

from helpers import load_npz


@pytest.fixture(scope="session")
def inputs():
  return load_npz("inputs.npz")
