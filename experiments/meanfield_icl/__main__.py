"""``python -m experiments.meanfield_icl``: runs ``experiments/meanfield_icl/main.py`` as the main module
(so absl's --help lists its flags)."""

import runpy

runpy.run_module("experiments.meanfield_icl.main", run_name="__main__", alter_sys=True)
