"""Architecture tables shared by the Flax modules (`detr_jax.models`) and the official key layout
(`detr_jax.torch_io.mapping`): the one place that says how many blocks, channels and widths each
part has. Pure Python, so the torch layout needs no jax.
"""
from typing import NamedTuple

# Blocks per stage (layer1..layer4) and whether the stages use bottleneck blocks (torchvision).
RESNET_SPECS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}
STEM_CHANNELS = 64  # conv1 (7x7, stride 2) and bn1, then a 3x3 max pool of stride 2
STAGE_WIDTHS = (64, 128, 256, 512)  # inner width of layer1..layer4; a bottleneck's output is 4x
BOTTLENECK_EXPANSION = 4

LEARNED_POSITION_CELLS = 50  # rows (and columns) of the learned position embedding
BBOX_MLP_LAYERS = 3  # bbox_embed: hidden_dim -> hidden_dim -> hidden_dim -> 4
MASK_HEAD_GROUPS = 8  # GroupNorm groups after each of the mask head's lay1..lay5


class ResNetBlock(NamedTuple):
  """One residual block `layer{stage}.{index}` (torchvision's names) and how it is built."""
  stage: int  # 1..4
  index: int
  in_channels: int
  width: int  # inner width
  out_channels: int
  stride: int  # of the block's 3x3 conv (first 3x3 for basic blocks) and its downsample
  dilation: int  # of the block's 3x3 conv(s)
  downsample: bool  # a 1x1 conv + BatchNorm on the shortcut
  bottleneck: bool

  @property
  def convs(self) -> tuple[tuple[int, int, int], ...]:
    """(out channels, in channels, kernel size) of conv1, conv2[, conv3]."""
    if self.bottleneck:
      return ((self.width, self.in_channels, 1), (self.width, self.width, 3), (self.out_channels, self.width, 1))
    return ((self.width, self.in_channels, 3), (self.width, self.width, 3))


def num_channels(arch: str) -> tuple[int, ...]:
  """Output channels of layer1..layer4."""
  expansion = BOTTLENECK_EXPANSION if RESNET_SPECS[arch][1] else 1
  return tuple(width * expansion for width in STAGE_WIDTHS)


def resnet_stages(arch: str, dilation: bool = False) -> list[list[ResNetBlock]]:
  """The blocks of layer1..layer4, torchvision's `_make_layer` rules: every stage but the first
  halves the resolution in its first block (with DC5, `dilation`, layer4 dilates its 3x3 convs by 2
  instead, from its second block on); a first block whose stride or channels change has a
  downsample shortcut. The parameter layout does not depend on `dilation`."""
  blocks, bottleneck = RESNET_SPECS[arch]
  stages, in_channels, current_dilation = [], STEM_CHANNELS, 1
  for stage, (count, width, out_channels) in enumerate(zip(blocks, STAGE_WIDTHS, num_channels(arch)), start=1):
    stride, previous_dilation = (1 if stage == 1 else 2), current_dilation
    if stage == 4 and dilation:
      current_dilation, stride = current_dilation * stride, 1
    stages.append([ResNetBlock(stage, 0, in_channels, width, out_channels, stride, previous_dilation,
                               stride != 1 or in_channels != out_channels, bottleneck)])
    stages[-1] += [ResNetBlock(stage, i, out_channels, width, out_channels, 1, current_dilation, False, bottleneck)
                   for i in range(1, count)]
    in_channels = out_channels
  return stages


def mask_head_widths(hidden_dim: int, num_heads: int) -> tuple[int, ...]:
  """Output channels of the mask head's lay1..lay5 (its input has hidden_dim + num_heads channels:
  the projected features and one attention map per head); adapter k outputs width k + 1."""
  return (hidden_dim + num_heads, hidden_dim // 2, hidden_dim // 4, hidden_dim // 8, hidden_dim // 16)
