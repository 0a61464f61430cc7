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
  ema_params: Any = None  # exponential moving average of params (config.ema_decay > 0), else None

  @classmethod
  def create(cls, params, tx, key, ema: bool = False):
    """Step 0; with `ema` the average starts at `params`."""
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params), key=key,
               ema_params=params if ema else None)

  def eval_params(self):
    """The weights to evaluate: the EMA when kept, else the trained parameters."""
    return self.params if self.ema_params is None else self.ema_params


def ema_update(ema, params, decay: float):
  """decay * ema + (1 - decay) * params, written as ema + (1 - decay) * (params - ema) so that a
  parameter that does not move (frozen) keeps its value exactly."""
  return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
