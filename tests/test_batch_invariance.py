"""isolate_padding: an image's detections do not depend on the padding its batch adds (docs/parity.md §1.2)."""
import numpy as np
import pytest
from flax import traverse_util

from detr_jax.config import model_config
from detr_jax.models import build_model
from detr_jax.torch_io.convert import filled_params


def _with_batchnorm_shifts(params, seed=0):
  """Random FrozenBatchNorm biases and means: with the init's zeros, a zero-padded input would
  keep the padding at 0 through the backbone, and the test could not fail."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  for path, value in flat.items():
    if path[-1] in ("bias", "mean") and "bn" in path[-2]:
      flat[path] = rng.normal(0, 0.5, value.shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("backbone, dilation", [("resnet18", False), ("resnet50", True)])
def test_padded_and_unpadded_give_the_same_detections(backbone, dilation):
  cfg = model_config(backbone=backbone, dilation=dilation, hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1,
                     dim_feedforward=64, num_queries=5, num_classes=7, dropout=0.0)
  rng = np.random.default_rng(0)
  h, w = 75, 101  # not multiples of the stride
  image = rng.normal(size=(1, h, w, 3)).astype(np.float32)
  padded = np.zeros((2, 128, 160, 3), np.float32)
  padded[0, :h, :w] = image[0]
  padded[1] = rng.normal(size=(128, 160, 3))
  mask = np.ones((2, 128, 160), bool)
  mask[0, :h, :w] = False
  mask[1] = False
  isolated, official = build_model(cfg, isolate_padding=True), build_model(cfg)
  params = _with_batchnorm_shifts(filled_params(cfg))
  alone = official.apply({"params": params}, image, np.zeros((1, h, w), bool))
  in_batch = isolated.apply({"params": params}, padded, mask)
  as_official = official.apply({"params": params}, padded, mask)
  for key in ("pred_logits", "pred_boxes"):
    scale = float(np.abs(alone[key]).max())
    np.testing.assert_allclose(in_batch[key][0], alone[key][0], atol=1e-4 * scale, rtol=1e-4)
    assert float(np.abs(as_official[key][0] - alone[key][0]).max()) > 1e-3 * scale  # the official model is not invariant
