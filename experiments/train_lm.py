"""Train a language model: presets, overrides, resume, fine-tuning, multi-host.

    python -m experiments.train_lm --config=tiny --workdir=runs/tiny
    python -m experiments.train_lm --config=20m --override=steps=500 --workdir=runs/20m
    python -m experiments.train_lm --config=smollm2-ft --workdir=runs/ft \\
        --init_from=smollm2-135m-instruct --data='notes/*.txt'
    # kill it any time; the same command resumes from the newest intact checkpoint
    # (a corrupt step is reported and skipped; a changed config is refused unless
    # --allow_config_change).

Resume order: checkpoint in --workdir > --resume_from > --init_from (params only) >
scratch. Presets: see ``jaxlm/train/presets.py`` (--list_configs).
"""

from __future__ import annotations

import os

from absl import flags, logging

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", "tiny", "Training preset (see --list_configs).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value (nested: optim.lr=1e-3).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics, TB).")
_SEED = flags.DEFINE_integer("seed", None, "Root seed (overrides the preset's).")
_DATA = flags.DEFINE_string("data", None, "Corpus: 'pydoc' (bundled) or a glob of .txt files.")
_STEPS = flags.DEFINE_integer("steps", None, "Total steps (overrides the preset's).")
_RESUME = flags.DEFINE_string("resume_from", None, "Another run's workdir to continue from.")
_INIT = flags.DEFINE_string("init_from", None, "Pretrained weights (params only), e.g. "
                            "smollm2-135m-instruct.")
_LIST = flags.DEFINE_bool("list_configs", False, "Print the preset names and exit.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 for multi-host ('auto' on SLURM/TPU).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Processes in the multi-host job.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Fake CPU devices (testing).")
_GLOO = flags.DEFINE_bool("gloo", False, "CPU collectives over gloo (multi-process CPU).")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a --workdir whose saved config differs in a setting that changes the computation "
    "(model shape, seq_len, learning rate, seed, data); the old config.json is kept.")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected argument {argv[1]!r}; flags are written --name=value")
    if not _LIST.value and not _WORKDIR.value:
        raise cli.UserError("--workdir is required (a folder for checkpoints and metrics)")
    cli.check_range("steps", _STEPS.value, lo=1, allow_none=True)
    cli.check_range("cpu_devices", _CPU_DEVICES.value, lo=1, allow_none=True)
    import jax

    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    if _GLOO.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

    from jaxlm.train import parallel
    from jaxlm.train.loop import train_and_evaluate
    from jaxlm.train.presets import TRAIN, get_config

    if _LIST.value:
        print("\n".join(TRAIN.names()))
        return 0
    overrides = list(_OVERRIDE.value)
    if _SEED.value is not None:
        overrides.append(f"seed={_SEED.value}")
    if _DATA.value:
        overrides.append(f"data.corpus={_DATA.value}")
    if _STEPS.value is not None:
        overrides.append(f"steps={_STEPS.value}")
    cfg = get_config(_CONFIG.value, overrides)  # validated before any data or compilation
    parallel.init_distributed(_COORD.value, _NPROC.value, _PID.value)
    logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    res = train_and_evaluate(cfg, _WORKDIR.value, resume_from=_RESUME.value,
                             init_from=_INIT.value, allow_config_change=_ALLOW_CHANGE.value)
    if jax.process_index() == 0 and res.evals:
        ev = res.evals[-1]
        print(f"done: step {ev['step']} held-out loss {ev['loss']:.4f} "
              f"perplexity {ev['perplexity']:.2f} (workdir {os.path.abspath(_WORKDIR.value)})")
    return 0


if __name__ == "__main__":
    cli.run(main)
