"""Keyformer vs H2O / StreamingLLM / SnapKV / TOVA: accuracy against the full-cache output.

    python -m experiments.keyformer_eval --config=keyformer_quick --workdir=runs/keyformer_quick
    python -m experiments.keyformer_eval --config=keyformer --workdir=runs/keyformer
    python -m experiments.keyformer_eval --config=keyformer_test --workdir=/tmp/kf_test
    python -m experiments.keyformer_eval --config=keyformer --override=budgets=0.5 \
        --override=policies=h2o,keyformer-paper,keyformer-nonoise

SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32), greedy decoding, offline
tasks built from pydoc_data.topics (summarize/continue, passkey, multi-turn chat).
Writes <workdir>/results.json, outputs.jsonl (every row's text) and
accuracy_vs_budget.png, and prints the table and the paired comparisons.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", "keyformer_quick",
                              "Preset: keyformer, keyformer_quick, *_test twins.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value overrides of the preset.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/keyformer_eval", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Task-construction seed.")


def main(argv):
    del argv
    from tqdm.auto import tqdm

    from experiments.keyformer import evaluate as E
    from jaxlm.utils.config import ConfigError
    from jaxlm.utils.report import markdown_table

    try:
        cfg = E.EVALS.get(_CONFIG.value, _OVERRIDE.value)
    except (ConfigError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    res = E.run_eval(cfg, progress=lambda total, desc="": tqdm(total=total, desc=desc),
                     outdir=out, seed=_SEED.value)
    E.plot(res["table"], cfg, out / "accuracy_vs_budget.png")
    (out / "results.json").write_text(json.dumps(
        {k: res[k] for k in ("table", "setup", "comparisons")}, indent=2))
    print(markdown_table(res["table"]))
    print(markdown_table(res["comparisons"]))
    print(f"setup: {res['setup']}")
    print(f"results in {out}")


if __name__ == "__main__":
    cli.run(main)
