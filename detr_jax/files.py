"""Files written whole or not at all."""
import contextlib
import os


@contextlib.contextmanager
def written_whole(path: str, mode: str = "w"):
  """A file open for writing beside `path` under a temporary name, renamed to `path` when the block
  ends normally and removed when it raises (an error, Ctrl-C): readers see the old file or the whole
  new one, never a part."""
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
