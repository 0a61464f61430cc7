"""torchvision-style ResNet (v1.5) with FrozenBatchNorm and optional DC5 dilation (NHWC).

Parameter names mirror torchvision: `conv1`, `bn1`, `layer{1..4}_{block}` with `conv{k}`,
`bn{k}` and `downsample_conv` / `downsample_bn`. Blocks, widths and strides come from
`detr_jax.architecture.resnet_stages`, shared with the official key layout.

Mixed precision (`dtype` bfloat16): convolutions run in bf16 and the activations are bf16; each
FrozenBatchNorm folds its statistics into a scale and shift in float32, then applies them in bf16
(one multiply-add, where bf16 loses nothing the conv before it has not already rounded).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.architecture import BOTTLENECK_EXPANSION, STEM_CHANNELS, resnet_stages
from detr_jax.ops.resize import resize_nearest


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics: y = x * scale + shift, eps 1e-5 inside the rsqrt.

  All four tensors are parameters so that checkpoints hold them; the optimizer never updates
  them.
  """
  features: int
  dtype: Any = jnp.float32  # of the output; scale and shift are computed in float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    scale = weight * jax.lax.rsqrt(var + 1e-5)
    shift = bias - mean * scale
    x, scale, shift = nn.dtypes.promote_dtype(x, scale, shift, dtype=self.dtype)
    return x * scale + shift


class Conv1x1(nn.Module):
  """1x1 conv (optionally strided); parameters are those of nn.Conv.

  as_matmul: a matmul over channels, which XLA:CPU runs several times faster than a 1x1
  convolution; False: a convolution, which ONNX runtimes fuse with the FrozenBatchNorm after it
  and run in their blocked conv layout (see `detr_jax.onnx_runtime`)."""
  features: int
  stride: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  as_matmul: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.as_matmul:
      y = x[:, ::self.stride, ::self.stride] @ kernel[0, 0]
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if not self.use_bias:
      return y
    return y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)


def _conv(features, kernel, stride=1, dilation=1, dtype=jnp.float32, matmul_1x1=True, name=None):
  """Bias-free conv with torch's explicit symmetric padding (never "SAME")."""
  if kernel == 1:
    return Conv1x1(features, stride, use_bias=False, dtype=dtype, as_matmul=matmul_1x1, name=name)
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=False, dtype=dtype, name=name)


def _max_pool_3x3_stride2(x):
  """torch's MaxPool2d(3, stride=2, padding=1) on NHWC: the padding cells are -inf. (Padded here
  rather than by nn.max_pool, whose jax2onnx plugin drops explicit padding.)"""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


def _zero_padding(x, valid):
  """x [B, h, w, C] with the padding cells set to 0 (valid [B, h, w, 1], 1 = real; None: x)."""
  return x if valid is None else x * valid


def _strided(valid, stride):
  """The real cells after a stride: output cell i is real iff input cell stride * i is (torch's
  padding makes every conv/pool output size ceil(size / stride))."""
  return None if valid is None else valid[:, ::stride, ::stride]


class _Block(nn.Module):
  """Fields shared by the residual blocks. `valid` [B, h, w, 1] (1 = real cell, at the block
  input's resolution) isolates the padding, see `ResNet`."""
  width: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  matmul_1x1: bool = True  # see Conv1x1.as_matmul

  def conv(self, features, kernel, stride=1, dilation=1, name=None):
    return _conv(features, kernel, stride, dilation, self.dtype, self.matmul_1x1, name)

  def bn(self, features, name):
    return FrozenBatchNorm(features, self.dtype, name=name)


class BasicBlock(_Block):
  """ResNet-18/34 block: 3x3 (stride) -> 3x3, plus identity or 1x1 downsample."""

  @nn.compact
  def __call__(self, x, valid=None):
    if self.dilation > 1:
      raise ValueError("BasicBlock (resnet18/34) does not support dilation (DC5), as in torchvision")
    y = nn.relu(self.bn(self.width, "bn1")(self.conv(self.width, 3, self.stride, name="conv1")(x)))
    valid = _strided(valid, self.stride)
    y = self.bn(self.width, "bn2")(self.conv(self.width, 3, name="conv2")(_zero_padding(y, valid)))
    if self.downsample:
      x = self.bn(self.width, "downsample_bn")(self.conv(self.width, 1, self.stride, name="downsample_conv")(x))
    return _zero_padding(nn.relu(x + y), valid)


class Bottleneck(_Block):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), plus shortcut."""

  @nn.compact
  def __call__(self, x, valid=None):
    out = BOTTLENECK_EXPANSION * self.width
    y = nn.relu(self.bn(self.width, "bn1")(self.conv(self.width, 1, name="conv1")(x)))
    y = self.conv(self.width, 3, self.stride, self.dilation, name="conv2")(_zero_padding(y, valid))
    y = nn.relu(self.bn(self.width, "bn2")(y))
    y = self.bn(out, "bn3")(self.conv(out, 1, name="conv3")(y))
    if self.downsample:
      x = self.bn(out, "downsample_bn")(self.conv(out, 1, self.stride, name="downsample_conv")(x))
    return _zero_padding(nn.relu(x + y), _strided(valid, self.stride))


class ResNet(nn.Module):
  """Returns the outputs of layer1..layer{num_layers} (strides 4, 8, 16, 32; layer4 at 16 with DC5).

  x [B, H, W, 3] with padding 0 at the bottom/right. mask [B, H, W] (True = padding), if given,
  isolates the padding: every activation a spatial conv or the max pool reads is zeroed there
  (beyond the cells that the image alone would give),
  so each image's features are those of the image alone, padded or not (the official model's
  features near the border depend on how much padding the batch added).

  dtype: of the convolutions and the activations. remat: each residual block is recomputed in
  the backward pass instead of storing its activations (the block inputs are kept). num_layers:
  the stages built, 4 as torchvision; 3 ends the network at layer3 (stride 16). matmul_1x1: see
  Conv1x1.as_matmul.
  """
  arch: str = "resnet50"
  dilation: bool = False
  dtype: Any = jnp.float32
  remat: bool = False
  num_layers: int = 4
  matmul_1x1: bool = True

  @nn.compact
  def __call__(self, x, mask=None):
    valid = None if mask is None else (~mask)[..., None].astype(self.dtype)
    stem = _conv(STEM_CHANNELS, 7, 2, dtype=self.dtype, name="conv1")
    x = nn.relu(FrozenBatchNorm(STEM_CHANNELS, self.dtype, name="bn1")(stem(x)))
    x = _zero_padding(x, _strided(valid, 2))  # >= 0 after the ReLU, so 0 never wins the max pool
    valid = _strided(valid, 4)
    x = _zero_padding(_max_pool_3x3_stride2(x), valid)
    levels = []
    for blocks in resnet_stages(self.arch, self.dilation)[:self.num_layers]:
      for block in blocks:
        block_cls = Bottleneck if block.bottleneck else BasicBlock
        block_cls = nn.remat(block_cls) if self.remat else block_cls
        x = block_cls(block.width, block.stride, block.dilation, block.downsample, self.dtype,
                      self.matmul_1x1, name=f"layer{block.stage}_{block.index}")(x, valid)
        valid = _strided(valid, block.stride)
      levels.append(x)
    return levels


def downsample_mask(mask: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """Padding mask [B, H, W] (True = padding) to a feature size with torch's legacy nearest."""
  return resize_nearest(mask, tuple(size))
