"""Refreshing model knowledge: ROME / MEMIT / FT-L / retrieval edits on SmolLM2.

    python -m experiments.refresh_knowledge --config=smollm2_test --workdir=runs/refresh_knowledge_test
    python -m experiments.refresh_knowledge --config=smollm2 --workdir=runs/refresh_knowledge

    python -m experiments.refresh_knowledge --config=smollm2_test --override=n_calib=3

Writes <workdir>/results.json and the plots (causal tracing, sequential edits). The edit
layer is traced on ``n_calib`` calibration facts; every score is on the disjoint rest.
"""

from __future__ import annotations

from absl import flags

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", "smollm2", "Preset (smollm2 or smollm2_test).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value overrides of the preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/refresh_knowledge", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the context prefixes and tracing noise.")


def main(argv):
    del argv
    import json

    from tqdm.auto import tqdm

    from experiments.knowledge_editing import experiment

    ecfg = experiment.EXPERIMENTS.get(_CONFIG.value, _OVERRIDE.value)
    out = experiment.run(ecfg, _WORKDIR.value, seed=_SEED.value,
                         bar=lambda total, desc="": tqdm(total=total, desc=desc))
    paths = experiment.plots(out, _WORKDIR.value)
    keep = ("n", "es", "es_lo", "es_hi", "ps", "ps_lo", "ps_hi", "ns", "ns_lo", "ns_hi",
            "top1", "em", "pm", "nm", "fluency")

    def short(s):
        return {k: round(v, 3) for k, v in s.items() if k in keep}

    print(json.dumps({
        "layer": out["trace"]["layer_used"], "trace_argmax": out["trace"]["argmax_first_half"],
        "trace_curve": [round(x, 4) for x in out["trace"]["curve"]],
        "calib_subjects": [c["subject"] for c in out["calib_cases"]],
        "alpha_null_dims": out["alpha_null_dims"],
        "pre": short(out["pre"]), "fluency_pre": out["fluency_pre"],
        "single": {k: short(v) for k, v in out["single"].items()},
        "edit_seconds": {k: v["median"] for k, v in out["edit_seconds"].items()},
        "layer_sweep": {k: short(v) for k, v in out["layer_sweep"].items()},
        "sequential": {k: [dict(short(r), edits=r["edits"]) for r in v]
                       for k, v in out["sequential"].items()},
        "timings": out["timings"], "plots": paths}, indent=1))


if __name__ == "__main__":
    cli.run(main)
