"""Luminate: structured design-space generation with SmolLM2-135M-Instruct.

    python -m experiments.luminate --config=quick --workdir=runs/luminate
    python -m experiments.luminate --config=default --override=prompt="Write a poem line."
    python -m experiments.luminate --config=default_test --backend=scripted   # no model

Writes luminate.html (self-contained, offline), luminate.json and, where Chromium is
installed, luminate.png (headless screenshot) under --workdir.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app, flags

from jaxlm.utils.config import ConfigError, apply_overrides

_CONFIG = flags.DEFINE_string("config", "quick", "Preset: default, quick or *_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "LuminateConfig field=value overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/luminate", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "scripted"],
                             "local = SmolLM2-135M-Instruct; scripted = canned replies.")
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

    try:  # every setting is checked here, before a model is loaded or a file written
        cfg = apply_overrides(presets().get(_CONFIG.value), _OVERRIDE.value)
        cfg = dataclasses.replace(cfg, seed=_SEED.value)
    except (ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    if _BACKEND.value == "local":
        from jaxlm.llm import LocalBackend

        backend = LocalBackend()
    else:
        backend = scripted_backend()
    out = pathlib.Path(_WORKDIR.value)
    res = run_luminate(backend, cfg, out)
    print(json.dumps(res["metrics"], indent=1, default=str))
    if _SCREENSHOT.value:
        if find_chromium() is None:
            print("screenshot skipped: no Chromium binary on PATH")
        else:
            print(f"screenshot: {screenshot(res['html'], out / 'luminate.png')}")
    print(f"wrote {res['html']}")


if __name__ == "__main__":
    app.run(main)
