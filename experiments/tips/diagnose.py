"""Why does the log-prob actor lose to random? Per-step diagnosis and actor variants.

    python -m experiments.tips.diagnose --workdir=runs/tips_diag            # training games
    python -m experiments.tips.diagnose --n_games=8 --max_steps=12 \
        --variants='pmi:norm=pmi;sum_loop:norm=sum,loop_penalty=1000'

Plays TRAINING games (``game_set(..., seed=train_seed)``, game seeds disjoint from the
evaluation games of ``heldout``) with each actor variant (``ActorConfig`` fields), every
step scored with ``diag=True``: for each admissible command the summed log-prob and token
count under the actor prompt, after a neutral prompt (PMI) and after the same prompt with
an empty observation (calibration). From those per-step logs it measures, on the states
the actor visited:

* agreement of each scoring rule (sum, mean, pmi, calib) with the expert's next command
  (TextWorld's ``policy_commands`` from that state) against chance (1/|admissible|);
* the mean token length of the command each rule picks vs the expert's (length bias);
* the repeated-action rate (same command again in the same room) and the game score.

Writes <workdir>/diagnosis.json (everything) and diagnosis.md (the table).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

RULES = ("sum", "mean", "pmi", "calib")
DEFAULT_VARIANTS = (
    "sum:norm=sum;"
    "mean:norm=mean;"
    "pmi:norm=pmi;"
    "calib:norm=calib;"
    "pmi_loop:norm=pmi,loop_penalty=1000;"
    "calib_loop:norm=calib,loop_penalty=1000;"
    "sum_loop:norm=sum,loop_penalty=1000;"
    "pmi_window_loop:norm=pmi,prompt=window,history=3,loop_penalty=1000"
)


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """'name:field=value,field=value;name2:...' -> {name: {field: value}} (values typed
    from ``ActorConfig``'s defaults)."""
    from jaxlm.agents.tips import ActorConfig

    base = ActorConfig()
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, body = part.partition(":")
        kw: dict[str, Any] = {}
        for item in filter(None, body.split(",")):
            k, _, v = item.partition("=")
            if not hasattr(base, k):
                raise ValueError(f"variant {name!r}: ActorConfig has no field {k!r}")
            typ = type(getattr(base, k))
            kw[k] = typ(v) if typ is not bool else v.lower() in ("1", "true", "yes")
        out[name] = kw
    return out


def rule_values(d: dict[str, Any], rule: str) -> np.ndarray:
    s = np.asarray(d["sum"], np.float64)
    if rule == "sum":
        return s
    if rule == "mean":
        return s / np.maximum(np.asarray(d["tokens"], np.float64), 1)
    if rule == "pmi":
        return s - np.asarray(d["neutral"], np.float64)
    if rule == "calib":
        return s - np.asarray(d["calib"], np.float64)
    raise ValueError(rule)


def step_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rule agreement with the expert, chance, and length bias over logged steps."""
    steps = [s for r in rows for s in r["steps"] if s.get("diag") and s.get("expert")]
    steps = [s for s in steps if s["expert"] in s["diag"]["commands"]]
    out: dict[str, Any] = {"n_states": len(steps)}
    if not steps:
        return out
    out["chance"] = float(np.mean([1 / len(s["diag"]["commands"]) for s in steps]))
    exp_len = [s["diag"]["tokens"][s["diag"]["commands"].index(s["expert"])] for s in steps]
    out["expert_tokens"] = float(np.mean(exp_len))
    out["mean_tokens"] = float(np.mean([np.mean(s["diag"]["tokens"]) for s in steps]))
    for rule in RULES:
        picks = [int(np.argmax(rule_values(s["diag"], rule))) for s in steps]
        agree = [s["diag"]["commands"][p] == s["expert"] for p, s in zip(picks, steps)]
        # rank of the expert command among the admissible ones (0 = top), normalized
        ranks = []
        for s in steps:
            v = rule_values(s["diag"], rule)
            e = s["diag"]["commands"].index(s["expert"])
            ranks.append(float((v > v[e]).sum()) / max(len(v) - 1, 1))
        out[f"agree_{rule}"] = float(np.mean(agree))
        out[f"tokens_{rule}"] = float(np.mean([s["diag"]["tokens"][p]
                                               for p, s in zip(picks, steps)]))
        out[f"expert_rank_{rule}"] = float(np.mean(ranks))
    # length bias: correlation of summed log-prob with token count, per state
    cors = []
    for s in steps:
        t, v = np.asarray(s["diag"]["tokens"], float), np.asarray(s["diag"]["sum"], float)
        if len(t) > 2 and t.std() > 0 and v.std() > 0:
            cors.append(float(np.corrcoef(t, v)[0, 1]))
    out["corr_sum_vs_tokens"] = float(np.mean(cors)) if cors else float("nan")
    # the looping pattern: how often the chosen action was taken before in the same room
    out["chosen_was_repeat"] = float(np.mean([s["diag"]["repeats"][
        s["diag"]["commands"].index(s["action"])] > 0 if s["action"] in s["diag"]["commands"]
        else 0 for s in steps]))
    return out


def episode_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from jaxlm.utils.stats import bootstrap_ci

    ns = [r["norm_score"] for r in rows]
    m, lo, hi = bootstrap_ci(ns)
    return {"n_games": len(rows), "norm_score": m, "ci": [lo, hi],
            "win_rate": float(np.mean([r["won"] for r in rows])),
            "repeat_rate": float(np.mean([r["repeat_rate"] for r in rows])),
            "expert_agreement": float(np.mean([r["expert_agreement"] for r in rows])),
            "steps": float(np.mean([r["n_steps"] for r in rows]))}


def random_baseline(envs, seeds=range(5)) -> tuple[list[float], dict[str, Any]]:
    """Per-game normalized score of the random agent, averaged over ``seeds``."""
    from jaxlm.agents.tips import run_episodes

    per = np.zeros(len(envs))
    rows = []
    for sd in seeds:
        trajs = run_episodes(envs, "random", None, seed=1000 + sd)
        per += [t.norm_score for t in trajs]
        rows += [t.to_dict() for t in trajs]
    per /= len(seeds)
    return per.tolist(), episode_stats(rows)


def markdown(table: list[dict[str, Any]]) -> str:
    cols = ["variant", "norm_score", "ci", "win_rate", "repeat_rate", "expert_agreement",
            "agree_sum", "agree_mean", "agree_pmi", "agree_calib", "chance",
            "tokens_sum", "tokens_mean", "tokens_pmi", "expert_tokens", "corr_sum_vs_tokens",
            "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.2f}"
            elif isinstance(v, list):
                v = "[" + ", ".join(f"{x:.2f}" for x in v) + "]"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnose(backend, envs, variants: dict[str, dict[str, Any]], *, workdir: pathlib.Path,
             random_seeds=range(5), log=print) -> dict[str, Any]:
    from jaxlm.agents.tips import ActorConfig, run_episodes

    workdir.mkdir(parents=True, exist_ok=True)
    rnd_per_game, rnd = random_baseline(envs, random_seeds)
    table = [{"variant": "random", **rnd, "seconds": 0.0}]
    log(f"random: {rnd['norm_score']:.2f}")
    all_rows = {}
    for name, kw in variants.items():
        t0 = time.time()
        actor = ActorConfig(**{**kw, "diag": kw.get("mode", "score") == "score"})
        trajs = run_episodes(envs, "none", backend, actor=actor)
        rows = [t.to_dict() for t in trajs]
        all_rows[name] = rows
        r = {"variant": name, **{k: v for k, v in kw.items()}, **episode_stats(rows),
             **step_stats(rows), "seconds": time.time() - t0}
        table.append(r)
        log(f"{name}: score {r['norm_score']:.2f} repeat {r['repeat_rate']:.2f} "
            f"agree {r['expert_agreement']:.2f} ({r['seconds']:.0f}s)")
        # written after every variant, so a killed run keeps what it measured
        with open(workdir / "diagnosis_steps.jsonl", "a" if len(all_rows) > 1 else "w") as f:
            for row in rows:
                f.write(json.dumps({"variant": name, **row}) + "\n")
        res = {"table": table, "random_per_game": rnd_per_game,
               "games": [e.name for e in envs]}
        (workdir / "diagnosis.json").write_text(json.dumps(res, indent=1, default=str))
        (workdir / "diagnosis.md").write_text(markdown(table) + "\n")
    return {"table": table, "random_per_game": rnd_per_game, "games": [e.name for e in envs]}


def main(argv):
    del argv
    from absl import flags

    from jaxlm.agents.textworld_env import TextWorldEnv, game_set, make_games
    from jaxlm.llm.local import LocalBackend

    f = flags.FLAGS
    specs = game_set(f.game_set, f.n_games, f.train_seed)
    paths = make_games(specs, f.cache_dir)
    envs = [TextWorldEnv(p, max_steps=f.max_steps, hide_objective=True) for p in paths]
    variants = parse_variants(f.variants)
    backend = LocalBackend("smollm2-135m-instruct", prefix_slots=len(envs),
                           prefix_capacity=1280)
    res = diagnose(backend, envs, variants, workdir=pathlib.Path(f.workdir))
    print(markdown(res["table"]))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("game_set", "coin_easy", "Game set (textworld_env.game_set).")
    flags.DEFINE_integer("n_games", 10, "Training games.")
    flags.DEFINE_integer("train_seed", 5, "Game-set seed of the training games (held-out "
                         "evaluation uses seed 0: disjoint game seeds).")
    flags.DEFINE_integer("max_steps", 15, "Env steps per episode.")
    flags.DEFINE_string("variants", DEFAULT_VARIANTS, "name:field=value,...;name2:...")
    flags.DEFINE_string("cache_dir", None, "Game cache.")
    flags.DEFINE_string("workdir", "runs/tips_diag", "Output folder.")
    app.run(main)
