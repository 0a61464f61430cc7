"""Train or evaluate DETR.

  python train.py --config configs/synthetic.py --workdir /tmp/detr [--config.total_steps=100 ...]
  python train.py --config configs/synthetic.py --workdir /tmp/detr --mode eval

Training resumes automatically from the latest complete checkpoint in WORKDIR/checkpoints.
"""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and pictures.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate at the end) or only evaluate.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  # A failing host callback (the matcher refusing NaN boxes) is reported once, by us, below.
  std_logging.getLogger("jax._src.callback").setLevel(std_logging.CRITICAL)
  from detr_jax.training import loop
  try:
    if FLAGS.mode == "eval":
      stats = loop.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
      stats = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (loop.NonFiniteLossError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print("eval: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
