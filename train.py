"""Train or evaluate DETR.

  python train.py --config configs/synthetic.py --workdir /tmp/detr [--config.total_steps=100 ...]
  python train.py --config configs/synthetic.py --workdir /tmp/detr --mode eval

Training resumes automatically from the latest complete checkpoint in WORKDIR/checkpoints.
Several hosts: start the same command on each with --coordinator_address HOST:PORT
--num_processes N --process_id I (or --distributed where jax detects them, e.g. TPU pods);
WORKDIR must be on storage all hosts share.
"""
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and pictures.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate at the end) or only evaluate.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-host training.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool("distributed", False, "Multi-host with the cluster detected by jax (TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_jax(config) -> None:
  """Multi-host setup (before any other jax call) and the persistent compilation cache."""
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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  # A failing host callback (the matcher refusing NaN boxes) is reported once, by us, below.
  std_logging.getLogger("jax._src.callback").setLevel(std_logging.CRITICAL)
  initialize_jax(FLAGS.config)
  import jax
  from detr_jax.training import loop
  try:
    if FLAGS.mode == "eval":
      stats = loop.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
      stats = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (loop.NonFiniteLossError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print("eval: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
