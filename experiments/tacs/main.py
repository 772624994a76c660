"""TACS (truth-aware context selection) on capital facts with SmolLM2-135M-Instruct.

    python -m experiments.tacs --config=quick --workdir=runs/tacs      # ~3 minutes on 2 CPU cores
    python -m experiments.tacs --quick --workdir=runs/tacs              # the same (--config=quick)
    python -m experiments.tacs --config=full --override=position_mode=compress
    python -m experiments.tacs --config=quick_test --workdir=/tmp/tacs  # smoke test
    python -m experiments.tacs --list_configs

Presets are ``experiments.tacs.experiment.TACS`` (``full``, ``quick`` and ``*_test`` twins of
``jaxlm.context.pipeline.TacsConfig``); ``--override=field=value`` (nested:
``detector.window=1``). Writes table.md, results.json, probe_accuracy.png and da.png under
--workdir.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from jaxlm.utils import cli

_CONFIG = flags.DEFINE_string("config", "full", "Preset: full, quick, full_test, quick_test.")
_QUICK = flags.DEFINE_bool("quick", False, "Shorthand for --config=quick (~3 minutes on 2 "
                           "CPU cores).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "TacsConfig field=value overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tacs", "Output folder.")
_SEED = flags.DEFINE_integer("seed", None, "Seed for foils, splits and bootstraps (overrides "
                             "the preset's).")
_LIST = flags.DEFINE_bool("list_configs", False, "Print the preset names and exit.")


def main(argv):
    del argv
    from experiments.tacs.experiment import TACS, run_config
    from jaxlm.utils.config import ConfigError
    from jaxlm.utils.report import markdown_table

    if _LIST.value:
        print("\n".join(TACS.names()))
        return 0
    name = _CONFIG.value
    if _QUICK.value:
        if flags.FLAGS["config"].present and name != "quick":
            raise app.UsageError(f"--quick means --config=quick; drop one (got --config={name})")
        name = "quick"
    overrides = list(_OVERRIDE.value)
    if _SEED.value is not None:
        overrides.append(f"seed={_SEED.value}")
    try:
        tcfg = TACS.get(name, overrides)
    except ConfigError as e:
        raise app.UsageError(str(e)) from None
    out = pathlib.Path(_WORKDIR.value)
    res = run_config(tcfg, out)
    (out / "table.md").write_text(markdown_table(res["table"]))
    keep = {k: v for k, v in res.items() if k not in ("detector", "test_prompts", "test_drops")}
    (out / "results.json").write_text(json.dumps(keep, indent=2, default=lambda o: getattr(
        o, "tolist", lambda: str(o))()))
    print(markdown_table(res["table"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
