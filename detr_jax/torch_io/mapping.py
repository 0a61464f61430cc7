"""The official state_dict layout and its one-to-one mapping onto our Flax parameter tree.

Each entry is (torch key, torch shape, flax path, kind) in the official state_dict order, where
kind says how the tensor's layout changes: "linear" ([out, in] <-> kernel [in, out]), "conv"
(OIHW <-> HWIO) or "copy".
"""
from typing import Iterator, NamedTuple

import numpy as np

from detr_jax.architecture import (BBOX_MLP_LAYERS, LEARNED_POSITION_CELLS, STEM_CHANNELS, mask_head_widths,
                                   num_channels, resnet_stages)
from detr_jax.errors import UserError


class Entry(NamedTuple):
  key: str
  shape: tuple[int, ...]
  path: tuple[str, ...]
  kind: str


def _linear(key, path, out_dim, in_dim):
  yield Entry(f"{key}.weight", (out_dim, in_dim), path + ("kernel",), "linear")
  yield Entry(f"{key}.bias", (out_dim,), path + ("bias",), "copy")


def _conv(key, path, out_ch, in_ch, k, bias=True):
  yield Entry(f"{key}.weight", (out_ch, in_ch, k, k), path + ("kernel",), "conv")
  if bias:
    yield Entry(f"{key}.bias", (out_ch,), path + ("bias",), "copy")


def _norm(key, path, dim):
  yield Entry(f"{key}.weight", (dim,), path + ("scale",), "copy")
  yield Entry(f"{key}.bias", (dim,), path + ("bias",), "copy")


def _frozen_bn(key, path, dim):
  for t, f in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")):
    yield Entry(f"{key}.{t}", (dim,), path + (f,), "copy")


def resnet_layout(arch: str, prefix: str = "", path: tuple = (), layers: int = 4) -> Iterator[Entry]:
  """torchvision ResNet keys (without avgpool/fc) under `prefix`, e.g. "backbone.0.body.", of
  layer1..layer{layers}."""
  yield from _conv(f"{prefix}conv1", path + ("conv1",), STEM_CHANNELS, 3, 7, bias=False)
  yield from _frozen_bn(f"{prefix}bn1", path + ("bn1",), STEM_CHANNELS)
  for block in (block for stage in resnet_stages(arch)[:layers] for block in stage):
    key, p = f"{prefix}layer{block.stage}.{block.index}", path + (f"layer{block.stage}_{block.index}",)
    for k, (out_ch, in_ch, size) in enumerate(block.convs, start=1):
      yield from _conv(f"{key}.conv{k}", p + (f"conv{k}",), out_ch, in_ch, size, bias=False)
      yield from _frozen_bn(f"{key}.bn{k}", p + (f"bn{k}",), out_ch)
    if block.downsample:
      yield from _conv(f"{key}.downsample.0", p + ("downsample_conv",), block.out_channels, block.in_channels, 1,
                       bias=False)
      yield from _frozen_bn(f"{key}.downsample.1", p + ("downsample_bn",), block.out_channels)


def _attention(key, path, d):
  yield Entry(f"{key}.in_proj_weight", (3 * d, d), path + ("in_proj_kernel",), "linear")
  yield Entry(f"{key}.in_proj_bias", (3 * d,), path + ("in_proj_bias",), "copy")
  yield from _linear(f"{key}.out_proj", path + ("out_proj",), d, d)


def _transformer_layer(key, path, d, ff, decoder):
  yield from _attention(f"{key}.self_attn", path + ("self_attn",), d)
  if decoder:
    yield from _attention(f"{key}.multihead_attn", path + ("multihead_attn",), d)
  yield from _linear(f"{key}.linear1", path + ("linear1",), ff, d)
  yield from _linear(f"{key}.linear2", path + ("linear2",), d, ff)
  for k in (1, 2, 3) if decoder else (1, 2):
    yield from _norm(f"{key}.norm{k}", path + (f"norm{k}",), d)


def detr_layout(cfg, prefix: str = "", path: tuple = ()) -> Iterator[Entry]:
  """Keys of the official `DETR` module for a model config, in state_dict order."""
  d, ff = cfg.hidden_dim, cfg.dim_feedforward
  for part, n in (("encoder", cfg.enc_layers), ("decoder", cfg.dec_layers)):
    for i in range(n):
      yield from _transformer_layer(f"{prefix}transformer.{part}.layers.{i}",
                                    path + ("transformer", part, f"layers_{i}"), d, ff, part == "decoder")
    if part == "decoder" or cfg.pre_norm:
      yield from _norm(f"{prefix}transformer.{part}.norm", path + ("transformer", part, "norm"), d)
  yield from _linear(f"{prefix}class_embed", path + ("class_embed",), cfg.num_classes + 1, d)
  for i in range(BBOX_MLP_LAYERS):
    out_dim = 4 if i == BBOX_MLP_LAYERS - 1 else d
    yield from _linear(f"{prefix}bbox_embed.layers.{i}", path + ("bbox_embed", f"layers_{i}"), out_dim, d)
  yield Entry(f"{prefix}query_embed.weight", (cfg.num_queries, d), path + ("query_embed", "embedding"), "copy")
  layers = cfg.get("backbone_layers", 4)
  yield from _conv(f"{prefix}input_proj", path + ("input_proj",), d, num_channels(cfg.backbone)[layers - 1], 1)
  yield from resnet_layout(cfg.backbone, f"{prefix}backbone.0.body.", path + ("backbone",), layers)
  if cfg.position_embedding == "learned":
    for axis in ("row_embed", "col_embed"):
      yield Entry(f"{prefix}backbone.1.{axis}.weight", (LEARNED_POSITION_CELLS, d // 2),
                  path + ("position_embedding", axis, "embedding"), "copy")


def official_layout(cfg) -> list[Entry]:
  """model_layout of a model the official code can build: a UserError for one it cannot."""
  if cfg.get("backbone_layers", 4) != 4:
    raise UserError(f"model.backbone_layers={cfg.backbone_layers} (the transformer reads layer3) has no "
                    "official counterpart; only models with the full backbone (4) have the official layout")
  return model_layout(cfg)


def model_layout(cfg) -> list[Entry]:
  """Official layout of DETR, or of DETRsegm (`detr.` prefix + panoptic head) when cfg.masks; with
  model.backbone_layers 3, the same keys without layer4 (a model the official code cannot build)."""
  if not cfg.masks:
    return list(detr_layout(cfg))
  d, heads = cfg.hidden_dim, cfg.nheads
  entries = list(detr_layout(cfg, "detr.", ("detr",)))
  for name in ("q_linear", "k_linear"):
    entries += _linear(f"bbox_attention.{name}", ("bbox_attention", name), d, d)
  dims = mask_head_widths(d, heads)
  in_dims = (d + heads,) + dims[:-1]
  for k in range(1, 6):
    entries += _conv(f"mask_head.lay{k}", ("mask_head", f"lay{k}"), dims[k - 1], in_dims[k - 1], 3)
    entries += _norm(f"mask_head.gn{k}", ("mask_head", f"gn{k}"), dims[k - 1])
  entries += _conv("mask_head.out_lay", ("mask_head", "out_lay"), 1, dims[-1], 3)
  fpn_dims = num_channels(cfg.backbone)[2::-1]
  for k in range(1, 4):
    entries += _conv(f"mask_head.adapter{k}", ("mask_head", f"adapter{k}"), dims[k], fpn_dims[k - 1], 1)
  return entries


def flax_shape(kind: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of a tensor of this kind in our tree: to_flax's result shape, without any data."""
  if kind == "linear":
    return tuple(reversed(torch_shape))
  if kind == "conv":
    return tuple(torch_shape[i] for i in (2, 3, 1, 0))
  return tuple(torch_shape)


def to_flax(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  return value


def to_torch(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return np.ascontiguousarray(value.T)
  if kind == "conv":
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  return value
