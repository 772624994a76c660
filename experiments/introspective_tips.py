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
local actor with the LoRA adapter of ``$JAXLM_TIPS_ADAPTER`` or
``runs/tips_lora_treasure/adapter`` (``python -m experiments.tips.finetune``: treasure_mid
training games, game seeds 5000-5059; an adapter trained on any evaluation game is refused)
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
from jaxlm.utils.config import ConfigError, apply_overrides

from experiments.tips.config import METHODS, SCENARIOS, TipsExpConfig, presets  # noqa: F401

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

        from experiments.tips.heldout import check_heldout

        try:
            trained = check_heldout(adapter, [s.name for s in specs])
        except ValueError as e:
            raise cli.UserError(str(e)) from None
        adapter_actor = read_lora_meta(adapter).get("extra", {}).get("actor")
        print(f"actor: LoRA adapter {adapter}, {trained} (prompt {adapter_actor})")
    else:
        print("actor: prompt-only (no LoRA adapter)")
    actor = cfg.actor(adapter_actor)
    if actor.prompt == "window":
        slots = 0

    writer = {}  # with an adapter, tips are written by the base model (see below)

    def local():
        from jaxlm.llm.local import LocalBackend

        from experiments.tips import SCORE_BUCKETS

        be = LocalBackend(spec.model, prefix_slots=0 if adapter else slots,
                          prefix_capacity=cfg.prefix_capacity, **SCORE_BUCKETS)
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
