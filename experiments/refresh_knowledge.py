"""Refreshing model knowledge: ROME / MEMIT / FT-L / retrieval edits on SmolLM2.

    python -m experiments.refresh_knowledge --config=smollm2_test --workdir=runs/refresh_knowledge_test
    python -m experiments.refresh_knowledge --config=smollm2 --override=layer=-1

Writes <workdir>/results.json and the plots (causal tracing, sequential edits).
"""

from __future__ import annotations

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "smollm2", "Preset (smollm2 or smollm2_test).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value overrides of the preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/refresh_knowledge", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the context prefixes and tracing noise.")


def main(argv):
    del argv
    import json

    from tqdm.auto import tqdm

    from jaxlm.editing import experiment

    ecfg = experiment.EXPERIMENTS.get(_CONFIG.value, _OVERRIDE.value)
    out = experiment.run(ecfg, _WORKDIR.value, seed=_SEED.value,
                         bar=lambda total, desc="": tqdm(total=total, desc=desc))
    paths = experiment.plots(out, _WORKDIR.value)
    print(json.dumps({"single": out["single"], "edit_seconds": {
        k: v["median"] for k, v in out["edit_seconds"].items()}, "plots": paths}, indent=1))


if __name__ == "__main__":
    app.run(main)
