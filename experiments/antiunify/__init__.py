"""Anti-unification paper package: random term pairs and the linear-time benchmark
(``bench``), golden cases and property checks shared by the entrypoint and the repro entry
(``report``), and the absl entrypoint (``main``, run as ``python -m experiments.antiunify``).
Mechanisms live in ``jaxlm.symbolic``. Importing this package defines no flags.
"""
