"""Introspective Tips on TextWorld with a pluggable LLM backend.

    python -m experiments.introspective_tips --config=default
    python -m experiments.introspective_tips --config=default --override=n_games=10 \
        --override=methods=random,none,tips
    python -m experiments.introspective_tips --config=default_test --backend=scripted
    OPENAI_API_KEY=... python -m experiments.introspective_tips --backend=openai \
        --base_url=http://host:8000/v1 --model=NAME --override=actor_mode=generate \
        --record=runs/it/cassette.jsonl
    python -m experiments.introspective_tips --backend=replay --cassette=runs/it/cassette.jsonl \
        --override=actor_mode=generate

Presets (``--config``, with ``--override=field=value``): ``default`` (the full run's
family: 20 held-out treasure_mid games, 2 trials, 10 steps, S1+S2+S3 with none, tips,
reflexion, oracle tips, random and walkthrough; one game-set seed per run, ``--seed``),
``quick`` and their seconds-long ``*_test`` twins. ``adapter=auto`` (default) plays the
local actor with the LoRA adapter of ``$JAXLM_TIPS_ADAPTER`` or ``runs/tips_lora/adapter``
when one exists (tips are then written by the base model; ``--record`` records only the
actor's requests in that case), else the prompt-only actor; it prints which. The older single-field flags
(``--n_games``, ``--trials``, ``--methods``, ...) still work and override the preset.
Backend flags come from ``jaxlm.llm.cli``: ``--backend=local|openai|replay|scripted``,
``--record=PATH`` records every request of the run, ``--backend=replay --cassette=PATH``
replays it exactly with no model. The log-prob actor (``actor_mode=score``) needs a
scoring tier: over HTTP that is ``--echo_logprobs`` (a server that echoes prompt
log-probs), else use ``--override=actor_mode=generate``.

Writes <workdir>/episodes.jsonl (every episode, as it finishes), results.json
(summaries with 95% bootstrap CIs, trials to first win, tip provenance, timings) and
score_vs_trial.png.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

from absl import flags

from jaxlm.utils import cli

from jaxlm.llm.cli import BackendFlagError, backend_spec_from_flags, define_backend_flags
from jaxlm.utils.config import ConfigError, Registry, apply_overrides

from jaxlm.agents.textworld_env import GAME_SETS

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
            ($JAXLM_TIPS_ADAPTER, else runs/tips_lora/adapter if it exists, else none),
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


_CONFIG = flags.DEFINE_string("config", "default", "Preset: default, quick or *_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "TipsExpConfig field=value overrides.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Game cache (default ~/.cache/jaxlm/textworld).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/introspective_tips", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Game-set and policy seed.")
define_backend_flags("local")  # --backend, --model, --base_url, --record, --cassette, ...
# single-field shortcuts kept from before the presets: each overrides the preset when given
_SHORTCUTS = {
    "game_set": flags.DEFINE_string("game_set", None, "Shortcut for --override=game_set=."),
    "n_games": flags.DEFINE_integer("n_games", None, "Shortcut for --override=n_games=."),
    "trials": flags.DEFINE_integer("trials", None, "Shortcut for --override=trials=."),
    "max_steps": flags.DEFINE_integer("max_steps", None, "Shortcut for --override=max_steps=."),
    "scenarios": flags.DEFINE_list("scenarios", None, "Shortcut for --override=scenarios=."),
    "methods": flags.DEFINE_list("methods", None, "Shortcut for --override=methods=."),
    "actor_mode": flags.DEFINE_string("actor_mode", None, "Shortcut: score|generate|choice."),
    "norm": flags.DEFINE_string("norm", None, "Shortcut: sum|mean|pmi|calib."),
    "prompt": flags.DEFINE_string("prompt", None, "Shortcut: append|window."),
    "history": flags.DEFINE_integer("history", None, "Shortcut for --override=history=."),
    "history_max": flags.DEFINE_integer("history_max", None, "Shortcut for history_max."),
    "prefix_slots": flags.DEFINE_integer("prefix_slots", None, "Shortcut for prefix_slots."),
    "prefix_capacity": flags.DEFINE_integer("prefix_capacity", None, "Shortcut."),
    "hide_objective": flags.DEFINE_bool("hide_objective", None, "Shortcut."),
}


def read_rows(path):
    """The rows of a JSONL file (the episode log)."""
    return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines() if x.strip()]


def get_config() -> TipsExpConfig:
    """The preset with the shortcut flags and ``--override`` applied (ConfigError/ValueError)."""
    overrides = []
    for name, fl in _SHORTCUTS.items():
        if fl.value is not None:
            v = fl.value
            overrides.append(f"{name}={','.join(v) if isinstance(v, list) else v}")
    return apply_overrides(presets().get(_CONFIG.value), overrides + list(_OVERRIDE.value))


def main(argv):
    del argv
    from tqdm.auto import tqdm

    from experiments.tips.plots import plot_score_vs_trial
    from jaxlm.agents.textworld_env import TextWorldEnv, game_set, make_games
    from jaxlm.agents.tips import EpisodeLog, TipGenerator, run_suite
    from jaxlm.llm import BackendError, ScriptedBackend
    from jaxlm.llm.cli import build_backend, check_log_prob_scoring

    try:  # flags and settings are checked before games are made or a model loaded
        cfg = get_config()
        spec = backend_spec_from_flags()
        check_log_prob_scoring(spec, cfg.actor_mode == "score", task="rank commands",
                               fix="--override=actor_mode=generate")
    except (ConfigError, BackendFlagError, ValueError) as e:
        raise cli.UserError(str(e)) from None  # one line, exit 2 (jaxlm.utils.cli)
    work = pathlib.Path(_WORKDIR.value)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    specs = game_set(cfg.game_set, cfg.n_games, _SEED.value)
    with tqdm(total=len(specs), desc="games") as bar:
        paths = make_games(specs, _CACHE.value, bar)
    t_games = time.time() - t0
    slots = len(paths) if cfg.prefix_slots < 0 else cfg.prefix_slots
    if cfg.prompt == "window":
        slots = 0  # window prompts are rebuilt every step: nothing to reuse

    from experiments.tips.heldout import resolve_adapter

    try:
        adapter = resolve_adapter(cfg.adapter) if spec.kind == "local" else None
    except FileNotFoundError as e:
        raise cli.UserError(str(e)) from None
    adapter_actor = None
    if adapter is not None:
        from jaxlm.train.lora import read_lora_meta

        adapter_actor = read_lora_meta(adapter).get("extra", {}).get("actor")
        print(f"actor: LoRA adapter {adapter} (prompt {adapter_actor})")
    else:
        print("actor: prompt-only (no LoRA adapter)")
    actor = cfg.actor(adapter_actor)
    if actor.prompt == "window":
        slots = 0

    writer = {}  # with an adapter, tips are written by the base model (see below)

    def local():
        from jaxlm.llm.local import LocalBackend

        be = LocalBackend(spec.model, prefix_slots=0 if adapter else slots,
                          prefix_capacity=cfg.prefix_capacity)
        if adapter is not None:
            from experiments.tips.heldout import with_adapter

            # the adapter is trained on command tokens only and writes degenerate tips
            # ("take passkey take passkey ..."): the actor uses it, the tip writer does not
            writer["base"] = be
            be = with_adapter(be, adapter, prefix_slots=slots)
        return be

    try:
        backend = build_backend(spec, local=local,
                                scripted=lambda: ScriptedBackend(default="look"))
        if cfg.actor_mode == "score" and "score" not in backend.capabilities:
            sys.exit(f"error: backend {backend.name!r} has no log-prob scoring tier: pass "
                     "--override=actor_mode=generate")
        envs = [TextWorldEnv(p, max_steps=cfg.max_steps, hide_objective=cfg.hide_objective)
                for p in paths]
        log_path = work / "episodes.jsonl"
        log_path.unlink(missing_ok=True)
        t1 = time.time()
        with tqdm(desc="env steps") as bar:
            res = run_suite(envs, backend, methods=cfg.methods, trials=cfg.trials,
                            scenarios=cfg.scenarios, actor=actor,
                            tipgen=TipGenerator(writer.get("base", backend),
                                                schema=cfg.schema_tips),
                            seed=_SEED.value,
                            log=EpisodeLog(log_path), progress=bar.update)
    except BackendError as e:
        sys.exit(f"error: backend: {e} (episodes finished so far are in {work})")
    res["timing"].update(games_s=t_games, agent_s=time.time() - t1, total_s=time.time() - t0)
    res["config"] = dict(dataclasses.asdict(cfg), config=_CONFIG.value, backend=spec.kind,
                         model=spec.model, seed=_SEED.value,
                         adapter=str(adapter) if adapter else None,
                         actor=dataclasses.asdict(actor))
    res["backend_stats"] = dict(getattr(backend, "stats", {}))
    inner = getattr(backend, "inner", None) or backend
    if getattr(inner, "prefix", None) is not None:
        res["backend_stats"]["prefix"] = dict(inner.prefix.stats)
        print("prefix cache:", inner.prefix.stats)
    res["prompt_cuts"] = sum(r.get("prompt_cuts", 0) for r in read_rows(log_path))
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plot_score_vs_trial(res["summary"], work / "score_vs_trial.png")
    for r in res["summary"]:
        print(f"{r['scenario']:3s} {r['method']:18s} trial {r['trial'] + 1}: score "
              f"{r['norm_score']:.2f} [{r['norm_score_ci'][0]:.2f},{r['norm_score_ci'][1]:.2f}] "
              f"win {r['win_rate']:.2f} steps {r['steps']:.1f} invalid {r['invalid_rate']:.2f}")
    print(f"agent time {res['timing']['agent_s']:.0f}s, total {res['timing']['total_s']:.0f}s")


if __name__ == "__main__":
    cli.run(main)
