"""Keyformer paper package: accuracy-vs-budget evaluation with its presets, report table and
plot (``evaluate``; entrypoint ``python -m experiments.keyformer_eval``) and the decode
throughput harness (``bench``; entrypoint ``python -m experiments.bench_kvcache``).
Mechanisms (policies, evicting cache, eviction decode loop) live in ``jaxlm.kvcache``.
Importing this package defines no flags.
"""
