"""TACS driver: presets (``TACS``), SmolLM2 loading, the run and its figures."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

from jaxlm.context.pipeline import TacsConfig
from jaxlm.utils.config import Registry

TACS: Registry[TacsConfig] = Registry("tacs")
TACS.add("full", TacsConfig())
TACS.add("quick", TacsConfig(n_train=16, n_val=8, n_test_known=12, n_test_unknown=12))
# *_test twins: a handful of countries per split, for smoke tests of the whole path
TACS.add("full_test", TacsConfig(n_train=6, n_val=3, n_test_known=3, n_test_unknown=3, batch=8))
TACS.add("quick_test", TacsConfig(n_train=6, n_val=3, n_test_known=3, n_test_unknown=3,
                                  batch=8))


def run_config(tcfg: TacsConfig, outdir: pathlib.Path, progress: Callable | None = None) -> dict:
    """Loads SmolLM2-135M-Instruct, runs TACS with ``tcfg``, writes the plots; returns results."""
    import jax
    import jax.numpy as jnp

    from experiments.tacs import plots
    from jaxlm import weights
    from jaxlm.context.pipeline import run

    m = weights.load("smollm2-135m-instruct")
    params = jax.tree.map(jnp.asarray, m.params)
    res = run(params, m.cfg, m.tokenizer, tcfg, progress=progress)
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    res["plots"] = [plots.plot_layer_accuracy(res, outdir / "probe_accuracy.png"),
                    plots.plot_da(res, outdir / "da.png")]
    return res


def run_pretrained(quick: bool, seed: int, outdir: pathlib.Path, overrides: Sequence[str] = (),
                   progress: Callable | None = None) -> dict:
    """The ``quick`` or ``full`` preset with ``seed`` and ``overrides`` (the repro entry)."""
    tcfg = TACS.get("quick" if quick else "full", [f"seed={seed}", *overrides])
    return run_config(tcfg, outdir, progress)
