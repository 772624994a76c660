"""Mamba-ND paper package: experiment driver and presets (``experiment``), figures
(``plots``), the absl entrypoint (``main``, run as ``python -m experiments.mamba_nd``) and
the selective-scan benchmark logic (``scan_bench``, run as ``python -m experiments.bench_scan``).

The mechanisms (scans, Mamba-ND, baselines, data, trainer) live in ``jaxlm.ssm``. Importing
this package imports nothing heavy and defines no flags.
"""
