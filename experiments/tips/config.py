"""Presets of the Introspective Tips entrypoint (``experiments.introspective_tips``): the
run config and its registry, importable without defining the entrypoint's absl flags."""

from __future__ import annotations

import dataclasses

from jaxlm.agents.textworld_env import GAME_SETS
from jaxlm.utils.config import Registry

from experiments.tips import FULL_GAME_SET, FULL_MAX_STEPS, FULL_N_GAMES, FULL_TRIALS

METHODS = ("none", "tips", "raw", "reflexion", "oracle_tips", "random", "walkthrough")
SCENARIOS = ("S1", "S2", "S3")


@dataclasses.dataclass(frozen=True)
class TipsExpConfig:
    """One Introspective Tips run.

    Attributes:
        game_set, n_games: the seeded TextWorld game set (``textworld_env.game_set``).
        trials, max_steps: trials per game; env.step calls per episode.
        scenarios: S1 (own experience), S2 (expert), S3 (zero-shot to unseen games).
        methods: S1 methods (none, tips, raw, reflexion, oracle_tips, random, walkthrough).
        actor_mode: "score" (log-prob ranking of admissible commands), "generate" (free
            text matched to a command) or "choice" (generation constrained to the
            admissible commands).
        norm: score ranking (sum; mean; pmi: minus an action-only prompt; calib: minus the
            same prompt with an empty observation). Default from the diagnosis
            (experiments/tips/diagnose.py): sum.
        prompt, history, history_max: actor prompt layout (see ``ActorConfig``). Default
            "window" with no history: the model copies its own earlier answers when they
            are in the prompt (the diagnosed loop).
        loop_penalty: loop breaking (``ActorConfig.loop_penalty``; 1000 = try every command
            of a room before repeating one).
        schema_tips: tips generated as JSON under ``tips_schema`` (response_format).
        prefix_slots, prefix_capacity: local backend prefix KV reuse (-1: one per game).
        hide_objective: hide route-revealing objectives.
        adapter: LoRA adapter of the local actor (``experiments.tips.finetune``): "auto"
            ($JAXLM_TIPS_ADAPTER, else runs/tips_lora_treasure/adapter, the
            treasure_mid-trained one of ``experiments.tips.finetune``, if it exists, else none),
            "none" (prompt-only actor) or a folder. With an adapter the actor's prompt
            fields (norm, prompt, history, loop_penalty) are the ones it was trained for
            (its meta's ``actor``).
    """

    game_set: str = "coin_easy"
    n_games: int = 20
    trials: int = 3
    max_steps: int = 15
    scenarios: tuple[str, ...] = ("S1",)
    methods: tuple[str, ...] = ("random", "walkthrough", "none", "tips")
    actor_mode: str = "score"
    norm: str = "sum"
    prompt: str = "window"
    history: int = 0
    history_max: int = 14
    prefix_slots: int = -1
    prefix_capacity: int = 1280
    hide_objective: bool = True
    loop_penalty: float = 1000.0
    schema_tips: bool = False
    adapter: str = "auto"

    def __post_init__(self):
        for f in ("n_games", "trials", "max_steps", "prefix_capacity"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TipsExpConfig.{f} must be an integer >= 1, got {v!r}")
        if self.game_set not in GAME_SETS:
            raise ValueError(f"TipsExpConfig.game_set={self.game_set!r}: choose one of "
                             f"{'|'.join(GAME_SETS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"TipsExpConfig.methods: unknown {bad}; choose from "
                             f"{','.join(METHODS)}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise ValueError(f"TipsExpConfig.scenarios: unknown {bad}; choose from "
                             f"{','.join(SCENARIOS)}")
        if "S3" in self.scenarios and self.n_games < 2:
            raise ValueError("TipsExpConfig: scenario S3 needs n_games >= 2 (train and test "
                             "games)")
        if self.prefix_slots < -1:
            raise ValueError(f"TipsExpConfig.prefix_slots must be >= -1, got "
                             f"{self.prefix_slots}")
        self.actor()  # ActorConfig checks mode, norm, prompt and history

    def actor(self, adapter_actor: str | None = None):
        """The ActorConfig; ``adapter_actor`` (an adapter's meta ``actor`` spec,
        field=value,...) overrides the prompt fields it names."""
        from jaxlm.agents.tips import ActorConfig

        kw = dict(mode=self.actor_mode, norm=self.norm, prompt=self.prompt,
                  history=self.history, history_max=self.history_max,
                  loop_penalty=self.loop_penalty)
        if adapter_actor:
            from experiments.tips.diagnose import parse_variants

            kw.update(parse_variants("a:" + adapter_actor)["a"])
        return ActorConfig(**kw)


def presets() -> Registry:
    reg: Registry = Registry("introspective_tips")
    # the full run: the held-out family where the LoRA actor is below its ceiling (see
    # experiments/repro_introspective_tips.py FULL for the measured cost and the cuts)
    reg.add("default", TipsExpConfig(
        game_set=FULL_GAME_SET, n_games=FULL_N_GAMES, trials=FULL_TRIALS,
        max_steps=FULL_MAX_STEPS,
        scenarios=("S1", "S2", "S3"),
        methods=("random", "walkthrough", "none", "tips", "reflexion", "oracle_tips")))
    reg.add("quick", TipsExpConfig(n_games=5, trials=2, max_steps=8,
                                   methods=("random", "walkthrough", "none", "tips")))
    tiny = TipsExpConfig(n_games=2, trials=1, max_steps=3, methods=("random", "none", "tips"),
                         adapter="none")
    reg.add("default_test", tiny)
    reg.add("quick_test", tiny)
    return reg
