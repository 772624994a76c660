"""Mean-field MLP + linear attention ICL experiments E1-E6 (Kim & Suzuki, ICML 2024).

    python -m experiments.meanfield_icl --experiment=e1 --config=quick
    python -m experiments.meanfield_icl --experiment=all --config=full --workdir=runs/meanfield
    python -m experiments.meanfield_icl --experiment=e5 --config=quick --override=e5_particles=32
    python -m experiments.meanfield_icl --experiment=e7 --config=quick   # optional E7
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags, logging

from jaxlm.utils import cli

_EXPERIMENT = flags.DEFINE_list(
    "experiment", ["e1"], "Comma list of e1,...,e7 or 'all' (e2 is computed from e1; e7 is optional)."
)
_CONFIG = flags.DEFINE_string("config", "quick", "Preset: full, quick, full_test, quick_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value config overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/meanfield_icl", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed.")
_VALID = ("e1", "e2", "e3", "e4", "e5", "e6", "e7")


def main(argv):
    del argv
    import dataclasses

    import jax
    import numpy as np

    from experiments.meanfield_icl import experiment as ex
    from experiments.meanfield_icl import plots
    from jaxlm.utils.config import ConfigError

    wanted = list(_VALID) if _EXPERIMENT.value == ["all"] else _EXPERIMENT.value
    bad = [e for e in wanted if e not in _VALID]
    if bad:
        raise app.UsageError(f"--experiment: unknown {bad}; choose from {_VALID} or 'all'")
    try:
        cfg = ex.PRESETS.get(_CONFIG.value, _OVERRIDE.value)
        cfg = dataclasses.replace(cfg, seed=_SEED.value)
        ex.validate(cfg)
    except (ConfigError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    logging.info("devices: %s; config %s", jax.devices(), cfg)
    from tqdm.auto import tqdm

    bar = tqdm(desc="meanfield", leave=False)
    results, paths = {}, []
    if "e1" in wanted or "e2" in wanted:
        results["e1"] = ex.run_e1(cfg, bar)
        paths += plots.plot_e1(results["e1"], out)
    if "e3" in wanted:
        results["e3"] = ex.run_e3(cfg, bar)
        paths += plots.plot_e3(results["e3"], out)
    if "e4" in wanted:
        results["e4"] = ex.run_e4(cfg, bar)
    if "e1" in results:
        paths += plots.plot_e2_e4(results["e1"], results.get("e4"), out)
    if "e5" in wanted:
        results["e5"] = ex.run_e5(cfg, bar)
        paths += plots.plot_e5(results["e5"], out)
    if "e6" in wanted:
        results["e6"] = ex.run_e6(cfg, bar)
        paths += plots.plot_e6(results["e6"], out)
    if "e7" in wanted:
        results["e7"] = ex.run_e7(cfg, bar)
        paths += plots.plot_e7(results["e7"], out)
        for name, arm in results["e7"]["arms"].items():
            print(f"E7 {name}: T(L < L_S/2) = {arm['t_escape']:.4g}, final L = "
                  f"{arm['final_loss']:.3g}")
    bar.close()

    def _js(x):
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, (np.floating, np.integer)):
            return x.item()
        return str(x)

    slim = json.loads(json.dumps({k: v for k, v in results.items()}, default=_js))
    (out / "results.json").write_text(json.dumps(slim))
    print(f"wrote {out / 'results.json'} and plots: {paths}")


if __name__ == "__main__":
    cli.run(main)
