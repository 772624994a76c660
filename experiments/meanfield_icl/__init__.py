"""Mean-field ICL paper package (Kim & Suzuki, ICML 2024): E1-E7 drivers and presets
(``experiment``), claim verdicts (``report``), figures (``plots``) and the absl entrypoint
(``main``, run as ``python -m experiments.meanfield_icl``). Mechanisms live in
``jaxlm.meanfield``. Importing this package imports nothing heavy and defines no flags.
"""
