"""TACS (truth-aware context selection) on capital facts with SmolLM2-135M-Instruct.

    python -m experiments.tacs --quick --workdir=runs/tacs
    python -m experiments.tacs --override=position_mode=compress

Writes table.md, results.json, probe_accuracy.png and da.png under --workdir.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes (~3 minutes on 2 CPU cores).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tacs", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for foils, splits and bootstraps.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "TacsConfig field=value overrides.")


def main(argv):
    del argv
    from jaxlm.utils.report import markdown_table

    out = pathlib.Path(_WORKDIR.value)
    from jaxlm.context.pipeline import run_pretrained

    res = run_pretrained(_QUICK.value, _SEED.value, out, _OVERRIDE.value)
    (out / "table.md").write_text(markdown_table(res["table"]))
    keep = {k: v for k, v in res.items() if k not in ("detector", "test_prompts", "test_drops")}
    (out / "results.json").write_text(json.dumps(keep, indent=2, default=lambda o: getattr(
        o, "tolist", lambda: str(o))()))
    print(markdown_table(res["table"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(__import__("jaxlm.utils.cli", fromlist=["guard"]).guard(main))
