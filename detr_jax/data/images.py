"""Reading image files into uint8 [H, W, 3] RGB arrays, with PIL: one loader, two readings.

- datasets (default): the stored pixels converted by PIL's convert("RGB"), as the official code
  reads training and validation images (no EXIF orientation);
- photos (`photo=True`, for prediction): as a photo viewer shows them, turned upright by their EXIF
  orientation, 16-bit greyscale scaled to 8 bits (65535 -> 255), transparent images (RGBA, LA,
  palette with transparency) composited on white, every other mode converted to RGB by PIL.

PIL's errors propagate: each caller names the file and the problem in its own terms.
"""
import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # integer greyscale, 65535 = white
BACKGROUND = (255, 255, 255)  # under transparent pixels


def to_rgb(img: Image.Image) -> np.ndarray:
  """uint8 [H, W, 3] of a PIL image of any mode: integer greyscale (16-bit PNG/TIFF) scaled from
  0..65535, transparency composited on white, the rest PIL's convert("RGB")."""
  if img.mode in SIXTEEN_BIT_MODES:
    grey = np.round(np.clip(np.asarray(img, np.float64), 0, 65535) / 257).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.has_transparency_data:
    img = Image.alpha_composite(Image.new("RGBA", img.size, BACKGROUND), img.convert("RGBA"))
  return np.asarray(img.convert("RGB"))


def read_image(file, photo: bool = False) -> np.ndarray:
  """uint8 [H, W, 3] RGB of an image file (a path or a binary file object), read as a dataset image
  or (`photo`) as a photo (see the module doc)."""
  with Image.open(file) as img:
    return to_rgb(ImageOps.exif_transpose(img)) if photo else np.asarray(img.convert("RGB"))
