"""The one exception type for expected, user-caused failures.

Command-line entry points print a `UserError` as a single `error: ...` line and exit non-zero;
any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input, configuration or environment, described in one line naming the file and key."""
