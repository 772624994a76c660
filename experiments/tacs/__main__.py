"""``python -m experiments.tacs``: runs ``experiments/tacs/main.py`` as the main module
(so absl's --help lists its flags)."""

import runpy

runpy.run_module("experiments.tacs.main", run_name="__main__", alter_sys=True)
