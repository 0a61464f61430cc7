"""Dataset errors and up-front checks: every problem of a dataset reported at once, before training.

`Problems` collects one line per problem (file + what is wrong) and raises them as one `DatasetError`
whose message is bounded: "N problems in dataset X:", the first `MAX_LINES` lines, "... and K more".
`check_images` checks image files cheaply (see `image_problem`), in threads, with a progress bar.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from detr_jax.errors import UserError

MAX_LINES = 20
THREADS = 16  # file checks wait on the disk (or a network file system), not on the CPU
# The last bytes of a complete file: JPEG's end-of-image marker, PNG's IEND chunk (with its CRC).
_ENDINGS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


class DatasetError(UserError, ValueError):
  """A dataset's setting, annotation or image is wrong (also a ValueError, as these were before)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
  """A dataset's file or folder does not exist (also a FileNotFoundError, as these were before)."""


class Problems:
  """The problems found in dataset `name`, one line each (file + what is wrong)."""

  def __init__(self, name: str):
    self.name, self.lines = name, []

  def add(self, line: str | None) -> None:
    if line is not None:
      self.lines.append(line)

  def extend(self, lines) -> None:
    for line in lines:
      self.add(line)

  def raise_if_any(self) -> None:
    """Raises one DatasetError listing the first MAX_LINES problems and the count of the rest."""
    if not self.lines:
      return
    n = len(self.lines)
    message = [f"{n} problem{'s' if n > 1 else ''} in dataset {self.name}:"]
    message += [f"  {line}" for line in self.lines[:MAX_LINES]]
    if n > MAX_LINES:
      message.append(f"  ... and {n - MAX_LINES} more")
    raise DatasetError("\n".join(message))


def image_problem(path: str, expected_hw=None) -> str | None:
  """What is wrong with the image file `path` ("path: ..."), or None; reads its header and last bytes.

  Found: a missing or empty file, a file PIL cannot identify as an image, a header that cannot be
  read, a size other than `expected_hw` (h, w), and a JPEG or PNG that does not end as a complete
  one does; such a file (truncated, or with trailing data) is decoded to tell, so damage in the
  middle of a complete-looking file shows only when the loader decodes it (the error names the file).
  """
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size == 0:
        return f"{path}: empty file"
      with Image.open(f) as img:
        hw, ending = (img.height, img.width), _ENDINGS.get(img.format)
        if expected_hw is not None and hw != tuple(expected_hw):
          return (f"{path}: image is {hw[0]}x{hw[1]} (h x w) but the annotation file says "
                  f"{expected_hw[0]}x{expected_hw[1]}")
        if ending is not None:
          f.seek(max(0, size - len(ending)))
          if f.read() != ending:
            img.load()
  except FileNotFoundError:
    return f"{path}: image not found"
  except UnidentifiedImageError:
    return f"{path}: not an image (PIL cannot identify its format)"
  except (OSError, Image.DecompressionBombError) as e:
    return f"{path}: cannot read image ({e})"
  return None


def check_images(files, desc: str) -> list[str]:
  """The problems (`image_problem`) of `files`, a list of (path, expected (h, w)), in their order.

  A progress bar (stderr) appears when the check takes more than a second.
  """
  with ThreadPoolExecutor(THREADS) as pool:
    found = pool.map(lambda f: image_problem(*f), files)
    return [p for p in tqdm(found, total=len(files), desc=desc, unit="img", delay=1.0) if p is not None]
