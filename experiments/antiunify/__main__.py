"""``python -m experiments.antiunify``: runs ``experiments/antiunify/main.py`` as the main module
(so absl's --help lists its flags)."""

import runpy

runpy.run_module("experiments.antiunify.main", run_name="__main__", alter_sys=True)
