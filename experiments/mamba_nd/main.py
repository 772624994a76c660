"""Mamba-ND vs ViT / BiLSTM / S4ND-like on digits, digits-canvas, moving digits and PDE fields.

    python -m experiments.mamba_nd --config=quick --workdir=runs/mamba_nd_quick
    python -m experiments.mamba_nd --config=full --workdir=runs/mamba_nd      # ~10+ min, 2 cores
    python -m experiments.mamba_nd --config=paper --workdir=runs/mamba_nd_paper  # hours
    python -m experiments.mamba_nd --config=quick --override=tasks=canvas --override=steps=200

Writes <workdir>/results.json, learning_curves.png, pde_forecast.png, video_forecast.png and
prints the tables.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", "quick", "Preset: quick, full, paper (+ *_test twins).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value overrides of the preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/mamba_nd", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed (model seeds come from the config).")


def main(argv):
    del argv
    from experiments.mamba_nd import experiment as E
    from jaxlm.utils.config import ConfigError
    from jaxlm.utils.report import markdown_table

    try:
        cfg = E.PRESETS.get(_CONFIG.value, _OVERRIDE.value)
        E.validate(cfg)
    except (ConfigError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    res = E.run_experiment(cfg, pathlib.Path(_WORKDIR.value), seed=_SEED.value)
    print(markdown_table(E.result_rows(res)))
    if res["ablation"]:
        print(markdown_table(E.ablation_rows(res)))
    print(f"results in {_WORKDIR.value} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    cli.run(main)
