"""The COCO panoptic PNG encoding of segment ids (panopticapi's): id = R + 256 G + 65536 B (numpy, PIL)."""
import io

import numpy as np
from PIL import Image


def id2rgb(id_map):
  """panopticapi id2rgb: int ids [...] -> uint8 [..., 3] with id = R + 256 G + 65536 B."""
  id_map = np.asarray(id_map, np.int64)
  return np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536 % 256], axis=-1).astype(np.uint8)


def rgb2id(rgb):
  """panopticapi rgb2id: uint8 [..., 3] -> int32 ids [...]."""
  rgb = np.asarray(rgb, np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def png_bytes(png_ids):
  """The COCO panoptic PNG (bytes) of an id map [H, W], as the official png_string."""
  with io.BytesIO() as out:
    Image.fromarray(id2rgb(png_ids)).save(out, format="PNG")
    return out.getvalue()
