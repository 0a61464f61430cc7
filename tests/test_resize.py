"""The 3x3 conv of a nearest-resized map computed at the source resolution (detr_jax.ops.resize), and
the mask head that uses it for inference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.models.segmentation import MaskHeadSmallConv
from detr_jax.ops.resize import conv3x3_of_resize_nearest, resize_nearest


@pytest.mark.parametrize("source, size", [((25, 34), (50, 67)), ((5, 7), (10, 14)), ((4, 6), (9, 13)),
                                          ((6, 6), (6, 6)), ((3, 5), (11, 7)), ((8, 9), (5, 4))])
def test_conv_of_resize_nearest_is_the_conv_of_the_resized_map(source, size):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *source, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4))
  expected = jax.lax.conv_general_dilated(resize_nearest(x, size), kernel, (1, 1), ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = conv3x3_of_resize_nearest(x, kernel, size)
  assert got.shape == expected.shape == (2, *size, 4)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(jnp.abs(expected).max()))
  assert not np.allclose(conv3x3_of_resize_nearest(x, kernel[::-1], size), expected, atol=1e-2)  # taps matter


def test_the_mask_heads_inference_order_gives_the_training_orders_masks():
  """MaskHeadSmallConv(inference=True) convolves the upsampled maps at their source resolution;
  training upsamples first. Same parameters, same masks up to float rounding."""
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = jax.random.normal(keys[0], (2, 3, 4, 128))
  bbox_mask = jax.nn.softmax(jax.random.normal(keys[1], (2, 5, 8, 3, 4)), axis=-1)
  fpns = [jax.random.normal(k, (2, 3 * 2 ** i, 4 * 2 ** i - i, 16)) for i, k in enumerate(keys[2:], start=1)]
  head = MaskHeadSmallConv(128)
  params = head.init(jax.random.PRNGKey(1), x, bbox_mask, fpns)
  fast = head.apply(params, x, bbox_mask, fpns, inference=True)
  plain = head.apply(params, x, bbox_mask, fpns, inference=False)
  assert fast.shape == (2, 5, 24, 29)
  np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5 * float(jnp.abs(plain).max()))
