"""Explainability demo on SmolLM2-135M-Instruct: attributions (gradients, IG, occlusion,
KernelSHAP, LIME, attention rollout), faithfulness, plausibility, per-generated-token
attribution, the model-parameter randomization check and causal tracing.

    python -m experiments.explain --config=quick --workdir=runs/explain
    python -m experiments.explain --config=full --override=mask=attention --override=n_attr=8
    python -m experiments.explain --quick            # old flag: the same as --config=quick
    python -m experiments.explain --list_configs

Presets: ``experiments.explainability.config.EXPLAIN`` (``quick``, ``full``, ``quick_test``);
``--override=field=value`` sets any field of ``ExplainConfig``. Writes attributions.png,
generation_attribution.png, causal_trace.png, logit_lens.png, table.md, results.json.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", None, "Preset (see --list_configs); default: full, or "
                              "quick with --quick.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value overrides of the preset.")
_LIST = flags.DEFINE_bool("list_configs", False, "Print the preset names and exit.")
_QUICK = flags.DEFINE_bool("quick", False, "Shorthand for --config=quick (when --config is not "
                           "given).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/explain", "Output folder.")
_SEED = flags.DEFINE_integer("seed", None, "Seed (shorthand for --override=seed=N).")


def config():
    """The run's ExplainConfig from the flags (ConfigError names a bad preset or field)."""
    from experiments.explainability.config import EXPLAIN, explain_config

    if _LIST.value:
        print("\n".join(EXPLAIN.names()))
        raise SystemExit(0)
    name = _CONFIG.value or ("quick" if _QUICK.value else "full")
    overrides = list(_OVERRIDE.value)
    if _SEED.value is not None:
        overrides.append(f"seed={_SEED.value}")
    return name, explain_config(name, overrides)


def main(argv):
    del argv
    name, rc = config()
    from experiments.explainability.demo import public, run_pretrained
    from jaxlm.utils.report import markdown_table

    out = pathlib.Path(_WORKDIR.value)
    res = run_pretrained(name != "full", rc.seed, out, config=rc)
    (out / "table.md").write_text(markdown_table(public(res["table"])) + "\n"
                                  + markdown_table(public(res["plausibility"])) + "\n"
                                  + markdown_table(public(res["capital_study"])))
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print(markdown_table(public(res["table"])))
    print(markdown_table(public(res["plausibility"])))
    print(markdown_table(public(res["capital_study"])))
    print("IG completeness (mean, max) by steps:", res["completeness"])
    for g in res["generation"]:
        print(f"{g['country']}: generated {''.join(g['generated'])!r}, mass on country per "
              f"token {[round(m, 2) for m in g['mass_on_country']]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
