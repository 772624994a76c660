"""SmolLM2 substrate paper package: prefill/decode throughput measurement (``perf``, through
``jaxlm.core.generate``) and the HF transformers speed anchor (``hf_anchor``; torch and
transformers are imported only there). Entrypoints: ``python -m experiments.bench_generate``
and the ``smollm2`` reproduction entry. Importing this package defines no flags.
"""
