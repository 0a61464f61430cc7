"""Checks of the working directory before any work starts, and a clear message when its disk fills up."""
import contextlib
import errno
import os
import shutil
import tempfile

from detr_jax.errors import UserError

# Below this much free space a run would fail at its first checkpoints (a DETR-R50 checkpoint with
# its optimizer state is about 0.5 GB; orbax keeps the last three and writes the next one beside them).
MIN_FREE_BYTES = 1 << 30


def check_workdir(workdir: str, create: bool = True, min_free_bytes: int = MIN_FREE_BYTES) -> None:
  """Raises a UserError unless `workdir` is a directory (created if `create`) where we can write files
  and which has `min_free_bytes` free."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file, not a directory")
  if not os.path.exists(workdir):
    if not create:
      raise UserError(f"workdir {workdir} does not exist")
    try:
      os.makedirs(workdir)
    except OSError as e:
      raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from None
  try:  # the one test that holds for root, ACLs and read-only mounts alike
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None
  free = shutil.disk_usage(workdir).free
  if free < min_free_bytes:
    raise UserError(f"workdir {workdir} has only {free / 2**20:.0f} MiB free; "
                    f"a run needs at least {min_free_bytes / 2**20:.0f} MiB")


@contextlib.contextmanager
def disk_full_is_user_error(workdir: str):
  """Turns "no space left on device" (ENOSPC) raised inside into a UserError naming the file."""
  try:
    yield
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise UserError(f"no space left on device writing {e.filename or 'to workdir ' + workdir}: free some space and run "
                    "again (training resumes from the latest complete checkpoint)") from e
