"""``python -m experiments.mamba_nd``: runs ``experiments/mamba_nd/main.py`` as the main module
(so absl's --help lists its flags)."""

import runpy

runpy.run_module("experiments.mamba_nd.main", run_name="__main__", alter_sys=True)
