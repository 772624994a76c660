"""Explainability demo on SmolLM2-135M-Instruct: attributions, faithfulness, causal tracing.

    python -m experiments.explain --quick --workdir=runs/explain

Writes attributions.png, causal_trace.png, logit_lens.png, table.md, results.json.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes (~3 minutes on 2 CPU cores).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/explain", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (random-ranking control, tracing noise).")


def main(argv):
    del argv
    from jaxlm.utils.report import markdown_table

    out = pathlib.Path(_WORKDIR.value)
    from experiments.explainability.demo import run_pretrained

    res = run_pretrained(_QUICK.value, _SEED.value, out)
    (out / "table.md").write_text(markdown_table(res["table"]))
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print(markdown_table(res["table"]))
    print("IG completeness (mean, max) by steps:", res["completeness"])
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
