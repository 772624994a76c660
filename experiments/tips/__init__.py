"""Introspective Tips paper package (the entrypoint is still ``experiments/introspective_tips.py``,
owned with its presets elsewhere): figures (``plots``). Mechanisms live in ``jaxlm.agents.tips``.
"""
