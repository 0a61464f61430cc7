"""Train or evaluate DETR.

  python train.py --config configs/synthetic.py --workdir /tmp/detr [--config.total_steps=100 ...]
  python train.py --config configs/synthetic.py --workdir /tmp/detr --mode eval [--checkpoint /tmp/detr/best]
  python train.py --config configs/synthetic.py --print_config [--config.total_steps=100 ...]

--config.KEY=VALUE sets any field of the config (--config.model.dropout=0.0,
--config.dataset.bucket_sides="(640, 800)"); --print_config lists every field with its value
(the config's defaults with your overrides applied) and exits.

Training resumes automatically from the latest complete checkpoint in WORKDIR/checkpoints, with
the model saved in it (command-line model settings that differ are named and ignored); a damaged
one is moved to WORKDIR/damaged_checkpoints/. Ctrl-C or SIGTERM saves a checkpoint after the
current step and exits 0. A diverging run (NaN/inf) stops before writing anything non-finite.
Several hosts: start the same command on each with --coordinator_address HOST:PORT
--num_processes N --process_id I (or --distributed where jax detects them, e.g. TPU pods);
WORKDIR must be on storage all hosts share.
"""
import contextlib
import os
import signal
import sys

from absl import app, flags, logging

from detr_jax import config as config_lib
from detr_jax.errors import UserError
from detr_jax.training.metrics_log import format_stats
from detr_jax.training import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Configuration file, FILE or FILE:ARG (configs/*.py); set its fields with "
                    "--config.KEY=VALUE, list them with --print_config.")
flags.DEFINE_bool("print_config", False, "Print the configuration, one KEY=VALUE per field (defaults with the "
                  "--config.KEY=VALUE overrides applied), and exit.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and pictures.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate at the end) or only evaluate.")
flags.DEFINE_string("checkpoint", None, "--mode eval: the model checkpoint to evaluate (WORKDIR/best, a converted "
                    "one, ...) instead of WORKDIR's latest; pictures go to WORKDIR.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-host training.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Multi-host with the cluster detected by jax (TPU pods, SLURM).")


def parse_flags(argv: list[str]) -> list[tuple[str, str | None]]:
  """absl parses train.py's flags; returns the --config.KEY=VALUE overrides (main's argument)."""
  args, overrides = config_lib.split_overrides(argv[1:])
  try:
    extra = FLAGS([argv[0], *args])[1:]
  except flags.Error as e:
    raise UserError(f"{e} (see --help)") from None
  if extra:
    raise UserError(f"unexpected argument {extra[0]!r} (see --help)")
  if not FLAGS.config:
    raise UserError("--config is required, e.g. --config configs/synthetic.py")
  return overrides


@contextlib.contextmanager
def ctrl_c_held():
  """Defers SIGINT (Ctrl-C) to the end of the block: a KeyboardInterrupt raised while jaxlib's
  extension modules are being imported crashes the interpreter or is swallowed by jax."""
  caught = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught and callable(previous):
    previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt


def initialize_jax(config) -> None:
  """Multi-host setup (before any other jax call) and the persistent compilation cache."""
  with ctrl_c_held():
    import jax
    import orbax.checkpoint  # noqa: F401 (defines the flag below)
  # orbax's default barrier is a device collective; run from its async-save thread it can
  # interleave differently with the train step's collectives on different hosts and deadlock.
  FLAGS.experimental_orbax_use_distributed_barrier = True
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only runs (tests); else unused
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def main(overrides) -> int:
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  config = config_lib.load_config(FLAGS.config, overrides)
  if FLAGS.print_config:
    print(config_lib.format_config(config))
    return 0
  if not FLAGS.workdir:
    raise UserError("--workdir is required (or --print_config)")
  if FLAGS.checkpoint and FLAGS.mode != "eval":
    raise UserError("--checkpoint is for --mode eval; to start training from a checkpoint use --config.init_from")
  workdir_lib.check_workdir(FLAGS.workdir, create=FLAGS.mode == "train" or bool(FLAGS.checkpoint))
  initialize_jax(config)
  import jax
  config_lib.check_config(config, device_count=jax.device_count())
  from detr_jax.training import loop
  with workdir_lib.disk_full_is_user_error(FLAGS.workdir):
    if FLAGS.mode == "eval":
      stats = loop.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint or "")
    else:
      stats = loop.train_and_evaluate(config, FLAGS.workdir)
  if stats and jax.process_index() == 0:  # {}: stopped by a signal, after saving a checkpoint
    print("eval: " + format_stats(stats))  # AP, AR and PQ all in percent
  return 0


if __name__ == "__main__":
  try:
    app.run(main, flags_parser=parse_flags)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:  # Ctrl-C outside the train steps (setup, compilation, evaluation)
    print("interrupted: the checkpoints already in the workdir are kept; the same command resumes from the "
          "latest", file=sys.stderr)
    sys.exit(130)
