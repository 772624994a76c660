"""Luminate: structured design-space generation with SmolLM2-135M-Instruct.

    python -m experiments.luminate --config=quick --workdir=runs/luminate
    python -m experiments.luminate --config=default --override=prompt="Write a poem line."
    python -m experiments.luminate --config=default_test --backend=scripted   # no model
    OPENAI_API_KEY=... python -m experiments.luminate --config=quick --backend=openai \
        --base_url=http://host:8000/v1 --model=NAME --record=runs/lum.jsonl
    python -m experiments.luminate --config=quick --backend=replay --cassette=runs/lum.jsonl

Writes luminate.html (self-contained, offline), luminate.json and, where Chromium is
installed, luminate.png (headless screenshot) under --workdir.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import flags

from jaxlm.utils import cli

from jaxlm.llm.cli import BackendFlagError, backend_spec_from_flags, define_backend_flags
from jaxlm.utils.config import ConfigError, apply_overrides

_CONFIG = flags.DEFINE_string("config", "quick", "Preset: default, quick or *_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "LuminateConfig field=value overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/luminate", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
define_backend_flags("local")  # --backend, --model, --base_url, --record, --cassette, ...
_SCREENSHOT = flags.DEFINE_bool("screenshot", True, "Screenshot the page with Chromium.")


def presets():
    from jaxlm.agents.luminate import presets as _presets

    return _presets()


def scripted_backend():
    from jaxlm.agents.luminate import scripted_backend as _scripted

    return _scripted()


def main(argv):
    del argv
    from jaxlm.agents.luminate import find_chromium, run_luminate, screenshot
    from jaxlm.llm import BackendError
    from jaxlm.llm.cli import build_backend

    try:  # every setting is checked here, before a model is loaded or a file written
        cfg = apply_overrides(presets().get(_CONFIG.value), _OVERRIDE.value)
        cfg = dataclasses.replace(cfg, seed=_SEED.value)
        spec = backend_spec_from_flags()
    except (ConfigError, BackendFlagError, ValueError) as e:
        raise cli.UserError(str(e)) from None  # one line, exit 2 (jaxlm.utils.cli)
    out = pathlib.Path(_WORKDIR.value)
    try:
        backend = build_backend(spec, scripted=scripted_backend)
        res = run_luminate(backend, cfg, out)
    except BackendError as e:
        sys.exit(f"error: backend: {e}")
    print(json.dumps(res["metrics"], indent=1, default=str))
    if _SCREENSHOT.value:
        if find_chromium() is None:
            print("screenshot skipped: no Chromium binary on PATH")
        else:
            print(f"screenshot: {screenshot(res['html'], out / 'luminate.png')}")
    print(f"wrote {res['html']}")


if __name__ == "__main__":
    cli.run(main)
