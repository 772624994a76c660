"""Introspective Tips on TextWorld with a pluggable LLM backend.

    python -m experiments.introspective_tips --backend=local --game_set=coin_easy \
        --n_games=20 --trials=3 --methods=random,walkthrough,none,tips
    python -m experiments.introspective_tips --backend=openai --base_url=http://host:8000/v1 \
        --model=my-model --actor_mode=generate
    python -m experiments.introspective_tips --backend=replay --cassette=runs/it/cassette.jsonl

Writes <workdir>/episodes.jsonl (every episode, as it finishes), results.json
(summaries with 95% bootstrap CIs, trials to first win, tip provenance, timings) and
score_vs_trial.png. ``--record`` with local/openai writes the cassette that
``--backend=replay`` replays exactly, with no model loaded.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "openai", "replay"], "LLM backend.")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Local model name or server model.")
_BASE_URL = flags.DEFINE_string("base_url", None, "OpenAI-compatible base URL (openai backend).")
_CASSETTE = flags.DEFINE_string("cassette", None, "JSONL cassette (replay, or --record).")
_RECORD = flags.DEFINE_bool("record", False, "Record the backend traffic to --cassette.")
_GAME_SET = flags.DEFINE_string("game_set", "coin_easy", "coin_easy|coin_distractor|"
                                "treasure_easy|cooking_l1|cooking_l2|mixed_easy")
_N_GAMES = flags.DEFINE_integer("n_games", 20, "Games in the set.")
_TRIALS = flags.DEFINE_integer("trials", 3, "Trials per game.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 15, "env.step calls per episode.")
_SCENARIOS = flags.DEFINE_list("scenarios", ["S1"], "S1 (own experience), S2 (expert), "
                               "S3 (zero-shot to unseen games).")
_METHODS = flags.DEFINE_list("methods", ["random", "walkthrough", "none", "tips"],
                             "S1 methods: none,tips,raw,reflexion,oracle_tips,random,walkthrough")
_ACTOR = flags.DEFINE_enum("actor_mode", "score", ["score", "generate"], "Action selection.")
_NORM = flags.DEFINE_enum("norm", "pmi", ["mean", "sum", "pmi"],
                          "Score ranking for actor_mode=score (pmi: minus an action-only prompt).")
_PROMPT = flags.DEFINE_enum("prompt", "append", ["append", "window"],
                            "Actor prompt: append (multi-turn, prefix-cacheable) or window.")
_HISTORY = flags.DEFINE_integer("history", 3, "Steps kept after the history is cut.")
_HISTORY_MAX = flags.DEFINE_integer("history_max", 14, "append prompts: cut the history "
                                    "to --history steps when longer than this.")
_PREFIX_SLOTS = flags.DEFINE_integer("prefix_slots", -1, "Local backend: cached prompts for "
                                     "prefix KV reuse (-1: one per game; 0: off).")
_PREFIX_CAP = flags.DEFINE_integer("prefix_capacity", 1280, "Local backend: KV slots per "
                                   "cached prompt.")
_HIDE = flags.DEFINE_bool("hide_objective", True, "Hide route-revealing objectives.")
_CACHE = flags.DEFINE_string("cache_dir", None, "Game cache (default ~/.cache/jaxlm/textworld).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/introspective_tips", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Game-set and policy seed.")


def read_rows(path):
    """The rows of a JSONL file (the episode log)."""
    return [json.loads(x) for x in pathlib.Path(path).read_text().splitlines() if x.strip()]


def main(argv):
    del argv
    from tqdm.auto import tqdm

    from experiments.tips.plots import plot_score_vs_trial
    from jaxlm.agents.textworld_env import TextWorldEnv, game_set, make_games
    from jaxlm.agents.tips import ActorConfig, EpisodeLog, TipGenerator, run_suite
    from jaxlm.llm import make_backend

    work = pathlib.Path(_WORKDIR.value)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    specs = game_set(_GAME_SET.value, _N_GAMES.value, _SEED.value)
    with tqdm(total=len(specs), desc="games") as bar:
        paths = make_games(specs, _CACHE.value, bar)
    t_games = time.time() - t0
    slots = len(paths) if _PREFIX_SLOTS.value < 0 else _PREFIX_SLOTS.value
    if _PROMPT.value == "window":
        slots = 0  # window prompts are rebuilt every step: nothing to reuse
    local_kw = {"prefix_slots": slots, "prefix_capacity": _PREFIX_CAP.value}
    backend = make_backend(_BACKEND.value, model=_MODEL.value, base_url=_BASE_URL.value,
                           cassette=_CASSETTE.value, record=_RECORD.value, local_kw=local_kw)
    envs = [TextWorldEnv(p, max_steps=_MAX_STEPS.value, hide_objective=_HIDE.value)
            for p in paths]
    actor = ActorConfig(mode=_ACTOR.value, norm=_NORM.value, prompt=_PROMPT.value,
                        history=_HISTORY.value, history_max=_HISTORY_MAX.value)
    log_path = work / "episodes.jsonl"
    log_path.unlink(missing_ok=True)
    t1 = time.time()
    with tqdm(desc="env steps") as bar:
        res = run_suite(envs, backend, methods=tuple(_METHODS.value), trials=_TRIALS.value,
                        scenarios=tuple(_SCENARIOS.value), actor=actor,
                        tipgen=TipGenerator(backend), seed=_SEED.value,
                        log=EpisodeLog(log_path), progress=bar.update)
    res["timing"].update(games_s=t_games, agent_s=time.time() - t1, total_s=time.time() - t0)
    res["config"] = {f: flags.FLAGS[f].value for f in (
        "backend", "model", "game_set", "n_games", "trials", "max_steps", "scenarios", "methods",
        "actor_mode", "norm", "prompt", "history", "history_max", "prefix_slots",
        "prefix_capacity", "hide_objective", "seed")}
    res["backend_stats"] = dict(getattr(backend, "stats", {}))
    local = getattr(backend, "inner", None) or backend
    if getattr(local, "prefix", None) is not None:
        res["backend_stats"]["prefix"] = dict(local.prefix.stats)
        print("prefix cache:", local.prefix.stats)
    res["prompt_cuts"] = sum(r.get("prompt_cuts", 0) for r in read_rows(log_path))
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plot_score_vs_trial(res["summary"], work / "score_vs_trial.png")
    for r in res["summary"]:
        print(f"{r['scenario']:3s} {r['method']:18s} trial {r['trial'] + 1}: score "
              f"{r['norm_score']:.2f} [{r['norm_score_ci'][0]:.2f},{r['norm_score_ci'][1]:.2f}] "
              f"win {r['win_rate']:.2f} steps {r['steps']:.1f} invalid {r['invalid_rate']:.2f}")
    print(f"agent time {res['timing']['agent_s']:.0f}s, total {res['timing']['total_s']:.0f}s")


if __name__ == "__main__":
    app.run(__import__("jaxlm.utils.cli", fromlist=["guard"]).guard(main))
