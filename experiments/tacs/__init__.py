"""TACS paper package: presets and the SmolLM2 driver (``experiment``), figures (``plots``)
and the absl entrypoint (``main``, run as ``python -m experiments.tacs``). The mechanisms
(knowledge gate, probes, selection masks, metrics, ``pipeline.run``) live in ``jaxlm.context``.
Importing this package defines no flags.
"""
