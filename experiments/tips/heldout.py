"""Held-out check: does an actor (picked on training games by ``diagnose``) beat random?

    python -m experiments.tips.heldout --n_games=20 --variant='norm=sum,prompt=window,history=0,loop_penalty=1000'
    python -m experiments.tips.heldout --game_set=treasure_mid --n_games=20 \
        --adapter=runs/tips_lora_treasure/adapter \
        --variant='norm=sum,prompt=window,history=1,loop_penalty=1000'   # fine-tuned actor

Evaluation games are ``game_set(game_set, n_games, seed=eval_seed)`` (seed 0: game seeds
0..n-1; ``diagnose`` and ``finetune`` train on seed 5: game seeds 5000+, disjoint; with
``--adapter`` the adapter's recorded training games are checked against the evaluation
games: ``check_heldout``). The random agent is
averaged over 5 policy seeds per game. Reported: the actor's mean normalized score with
a 95% bootstrap CI over games, random's mean, and the paired per-game difference
(actor - random) with its CI. "Beats random" = the actor's CI lies above random's mean
and the difference CI lies above 0. Writes <workdir>/heldout.json.

``--adapter``: a LoRA adapter folder from ``experiments.tips.finetune`` (merged into the
base weights before play); pass the ``--variant`` it was trained for (its meta's
``actor``; the default variant here is the prompt-only actor's).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from experiments.tips import TRAIN_WORKDIR


def evaluate(backend, envs, actor_kw: dict[str, Any], random_seeds=range(5)) -> dict[str, Any]:
    from experiments.tips.diagnose import episode_stats, random_baseline, step_stats
    from jaxlm.agents.tips import ActorConfig, run_episodes
    from jaxlm.utils.stats import bootstrap_ci

    rnd_per_game, rnd = random_baseline(envs, random_seeds)
    t0 = time.time()
    actor = ActorConfig(**actor_kw)
    trajs = run_episodes(envs, "none", backend, actor=actor)
    secs = time.time() - t0
    rows = [t.to_dict() for t in trajs]
    act = np.array([r["norm_score"] for r in rows])
    diff = act - np.asarray(rnd_per_game)
    m, lo, hi = bootstrap_ci(act)
    dm, dlo, dhi = bootstrap_ci(diff)
    return {"actor": actor_kw, "games": [e.name for e in envs], "n_games": len(envs),
            "actor_score": m, "actor_ci": [lo, hi], "random_score": rnd["norm_score"],
            "random_ci": rnd["ci"], "diff": dm, "diff_ci": [dlo, dhi],
            "beats_random": bool(lo > rnd["norm_score"] and dlo > 0),
            "actor_stats": {**episode_stats(rows), **step_stats(rows)}, "random_stats": rnd,
            "actor_per_game": act.tolist(), "random_per_game": rnd_per_game,
            "actor_seconds": secs}


ADAPTER_ENV = "JAXLM_TIPS_ADAPTER"
# the treasure_mid-trained adapter (experiments.tips.finetune's defaults: TRAIN_*)
DEFAULT_ADAPTER = f"{TRAIN_WORKDIR}/adapter"


def training_games(meta_extra: dict[str, Any]) -> list[str] | None:
    """Names of the games an adapter was trained on (validation games included), from its
    meta's ``extra`` (``game_set``, ``n_games``, ``train_seed``, as ``finetune`` writes
    them); None when the meta does not say."""
    from jaxlm.agents.textworld_env import game_set

    try:
        return [g.name for g in game_set(meta_extra["game_set"], int(meta_extra["n_games"]),
                                         int(meta_extra["train_seed"]))]
    except (KeyError, TypeError, ValueError):
        return None


def check_heldout(adapter, eval_names: list[str]) -> str:
    """Refuses (ValueError) an adapter trained on any of the evaluation games; returns a
    one-line description of its training games for reports."""
    from jaxlm.train.lora import read_lora_meta

    extra = read_lora_meta(adapter).get("extra", {})
    train = training_games(extra)
    if train is None:
        return (f"adapter {adapter}: training games not recorded in its meta (cannot check "
                "that they are disjoint from the evaluation games)")
    both = sorted(set(train) & set(eval_names))
    if both:
        raise ValueError(
            f"adapter {adapter} was trained on {len(both)} of the evaluation games "
            f"({', '.join(both[:3])}{', ...' if len(both) > 3 else ''}): evaluate on another "
            "game-set seed (--seed / --eval_seed) or train with another --train_seed")
    return describe_training(extra)


def describe_training(extra: dict[str, Any]) -> str:
    """'trained on 60 treasure_mid games (game seeds 5000-5059)' from an adapter's meta."""
    train = training_games(extra)
    if train is None:
        return "training games not recorded"
    s = int(extra["train_seed"]) * 1000
    return (f"trained on walkthroughs of {len(train)} {extra['game_set']} games (game seeds "
            f"{s}-{s + len(train) - 1})")


def resolve_adapter(setting: str = "auto") -> pathlib.Path | None:
    """The LoRA adapter folder an actor uses (None: prompt-only).

    ``setting``: "none" (or "") -> None; "auto" -> ``$JAXLM_TIPS_ADAPTER`` (must name an
    existing folder when set), else ``runs/tips_lora_treasure/adapter`` (the
    treasure_mid-trained one, ``experiments.tips.finetune``'s default) if it exists, else None;
    anything else is a folder that must exist."""
    import os

    if setting in ("", "none"):
        return None
    if setting != "auto":
        p = pathlib.Path(setting).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"adapter={setting}: no such adapter folder; train one "
                                    "with python -m experiments.tips.finetune or pass none")
        return p
    env = os.environ.get(ADAPTER_ENV)
    if env:
        p = pathlib.Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"{ADAPTER_ENV}={env}: no such adapter folder; train one "
                                    "with python -m experiments.tips.finetune or unset it")
        return p
    p = pathlib.Path(DEFAULT_ADAPTER)
    return p if p.is_dir() else None


def with_adapter(backend, path, **kw):
    """A ``LocalBackend`` like ``backend`` with a LoRA adapter (``jaxlm.train.lora``
    checkpoint folder) merged into its weights; ``kw`` override constructor arguments
    (e.g. ``prefix_slots``)."""
    from jaxlm.llm.local import LocalBackend
    from jaxlm.train import lora as L

    args = dict(max_tokens_per_call=backend.max_tokens_per_call,
                prefix_slots=backend.prefix.n_slots if backend.prefix else 0,
                prefix_capacity=backend.prefix.capacity if backend.prefix else 1536,
                prefix_min_tokens=backend.prefix_min_tokens, memo_size=backend.memo_size,
                score_rows_multiple=backend.score_rows_multiple,
                score_len_multiple=backend.score_len_multiple)
    args.update(kw)
    return LocalBackend(cfg=backend.cfg, params=L.merge(backend.params, L.load_lora(path)),
                        tokenizer=backend.tokenizer, name=f"{backend.name}+lora", **args)


def main(argv):
    del argv
    from absl import flags

    from experiments.tips.diagnose import parse_variants
    from jaxlm.agents.textworld_env import TextWorldEnv, game_set, make_games
    from jaxlm.llm.local import LocalBackend

    f = flags.FLAGS
    specs = game_set(f.game_set, f.n_games, f.eval_seed)
    envs = [TextWorldEnv(p, max_steps=f.max_steps, hide_objective=True)
            for p in make_games(specs, f.cache_dir)]
    kw = parse_variants("actor:" + f.variant)["actor"]
    if f.adapter:
        print(check_heldout(f.adapter, [s.name for s in specs]))
    if f.adapter:  # merged weights, one prefix cache
        base = LocalBackend("smollm2-135m-instruct", prefix_slots=0)
        backend = with_adapter(base, f.adapter, prefix_slots=len(envs), prefix_capacity=1280)
        del base
    else:
        backend = LocalBackend("smollm2-135m-instruct", prefix_slots=len(envs),
                               prefix_capacity=1280)
    res = evaluate(backend, envs, kw)
    res.update(game_set=f.game_set, eval_seed=f.eval_seed, max_steps=f.max_steps,
               adapter=f.adapter)
    out = pathlib.Path(f.workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps(res, indent=1))
    print(f"actor {res['actor_score']:.2f} {res['actor_ci']} vs random {res['random_score']:.2f}; "
          f"diff {res['diff']:.2f} {res['diff_ci']}; beats random: {res['beats_random']} "
          f"({res['actor_seconds']:.0f}s)")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("game_set", "coin_easy", "Game set (textworld_env.game_set).")
    flags.DEFINE_integer("n_games", 20, "Held-out games.")
    flags.DEFINE_integer("eval_seed", 0, "Game-set seed of the held-out games.")
    flags.DEFINE_integer("max_steps", 15, "Env steps per episode.")
    flags.DEFINE_string("variant", "norm=sum,prompt=window,history=0,loop_penalty=1000",
                        "ActorConfig fields: field=value,...")
    flags.DEFINE_string("cache_dir", None, "Game cache.")
    flags.DEFINE_string("adapter", None, "LoRA adapter folder (experiments.tips.finetune "
                        "--workdir/adapter); default: the prompt-only actor.")
    flags.DEFINE_string("workdir", "runs/tips_heldout", "Output folder.")
    app.run(main)
