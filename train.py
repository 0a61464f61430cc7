"""Train or evaluate DETR: not implemented yet.

Training (matcher, set criterion, optimizer, pmap step, orbax checkpoints, synthetic default)
is the next milestone. Today the library offers the model, weight conversion and parity tools:
see README.md.
"""
import sys

if __name__ == "__main__":
  sys.exit("train.py: training is not implemented yet (matcher, criterion and train loop are the next "
           "milestone); see README.md for what works today: convert_torch_weights.py, "
           "python -m detr_jax.compare, benchmarks/forward.py")
