"""Train state: everything a step changes, as one pytree."""
from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: number of completed steps
  params: Any
  opt_state: Any
  key: jax.Array       # base PRNG key; step keys are folded from it, so resuming is exact

  @classmethod
  def create(cls, params, tx, key):
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params), key=key)
