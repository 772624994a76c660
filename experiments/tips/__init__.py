"""Introspective Tips paper package (the entrypoint is still ``experiments/introspective_tips.py``,
owned with its presets elsewhere): figures (``plots``). Mechanisms live in ``jaxlm.agents.tips``.

``FULL_*``: the full run's held-out family and scale, shared by the ``default`` preset of
``experiments.introspective_tips`` and ``repro_introspective_tips`` (full). The family is
the one where the LoRA actor (``experiments.tips.finetune`` on coin_easy training games)
is below its ceiling and above random (probes in ``repro_introspective_tips``'s note).
"""

FULL_GAME_SET = "treasure_mid"
FULL_N_GAMES = 20
FULL_TRIALS = 2
FULL_MAX_STEPS = 10
FULL_SEEDS = 3
