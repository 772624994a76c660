"""Introspective Tips paper package (the entrypoint is still ``experiments/introspective_tips.py``,
owned with its presets elsewhere): figures (``plots``). Mechanisms live in ``jaxlm.agents.tips``.

``FULL_*``: the full run's held-out family and scale, shared by the ``default`` preset of
``experiments.introspective_tips`` and ``repro_introspective_tips`` (full): 20 treasure_mid
games (treasure hunter levels 5-8) of game-set seed ``FULL_EVAL_SEED`` = 0, i.e. game seeds
0-19.

``TRAIN_*``: the LoRA actor the full run uses by default (``experiments.tips.finetune``'s
defaults): trained on walkthroughs of 60 treasure_mid games of game-set seed 5 (game seeds
5000-5059; the last 6 held out for validation), disjoint from the evaluation games (the
entries check the adapter's recorded training games against the games they evaluate on:
``experiments.tips.heldout.check_heldout``). Its folder is ``TRAIN_WORKDIR``/adapter.
"""

FULL_GAME_SET = "treasure_mid"
FULL_N_GAMES = 20
FULL_EVAL_SEED = 0
FULL_TRIALS = 2
FULL_MAX_STEPS = 10
FULL_SEEDS = 3
# the actor's scoring shapes (LocalBackend): 20 prompts of ~290 tokens are 20 x 320 computed
# tokens instead of 32 x 512 with the default power-of-two buckets
SCORE_BUCKETS = {"score_rows_multiple": 4, "score_len_multiple": 64}

TRAIN_GAME_SET = "treasure_mid"
TRAIN_SEED = 5
TRAIN_N_GAMES = 60
TRAIN_STEPS = 120
TRAIN_BATCH = 4
TRAIN_LR = 1e-3
TRAIN_WORKDIR = "runs/tips_lora_treasure"
