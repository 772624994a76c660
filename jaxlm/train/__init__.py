"""Training substrate: pure train step, optax builder, orbax checkpoints, data, parallelism.

Public API (small on purpose; other packages train through it):

* ``TrainState``, ``create_state``, ``init_state``, ``abstract_state`` (state.py)
* ``make_optimizer(optim_cfg, total_steps) -> (tx, lr_fn)`` (optim.py)
* ``make_train_step(loss_fn, tx, lr_fn=, grad_accum=, axis_name=)`` -> pure
  ``train_step(state, batch, rng) -> (state, metrics)``; ``lm_loss_fn(model_cfg)``,
  ``make_eval_step`` (step.py)
* ``gspmd_step`` / ``shard_map_step`` / ``make_mesh`` / ``state_shardings`` (parallel.py)
* ``Checkpointer``, ``plan_resume`` (checkpoint.py)
* ``TokenStream``, ``build_token_file``, ``PackedIterator`` (data.py)
* ``TrainConfig``, ``TRAIN``, ``get_config`` (presets.py);
  ``train_and_evaluate(cfg, workdir, ...)`` (loop.py)
"""

from jaxlm.train.optim import make_optimizer, make_schedule, path_mask
from jaxlm.train.presets import TRAIN, DataConfig, OptimConfig, TrainConfig, get_config
from jaxlm.train.state import TrainState, abstract_state, create_state, init_state
from jaxlm.train.step import lm_loss_fn, make_eval_step, make_train_step

__all__ = [
    "TRAIN", "DataConfig", "OptimConfig", "TrainConfig", "TrainState", "abstract_state",
    "create_state", "get_config", "init_state", "lm_loss_fn", "make_eval_step",
    "make_optimizer", "make_schedule", "make_train_step", "path_mask",
]
