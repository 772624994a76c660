"""LoRA fine-tuning of the Introspective Tips actor on walkthroughs of TRAINING games.

    python -m experiments.tips.finetune      # = --game_set=treasure_mid --n_games=60 --steps=120
                                             #   --batch=4 --lr=1e-3 --workdir=runs/tips_lora_treasure

The defaults (``experiments.tips.TRAIN_*``) train the adapter the full Introspective Tips
run uses by default: 60 treasure_mid games (treasure hunter levels 5-8) of game-set seed 5,
game seeds 5000-5059 (9:27 wall on 2 quiet cores; validation step accuracy 0.95).
Training games are ``game_set(game_set, n_games, seed=train_seed)`` (seed 5: game seeds
5000+, disjoint from the held-out games of ``experiments.tips.heldout`` and the full run,
seed 0: game seeds 0..19; the adapter's meta records them and the evaluating entries
refuse an overlap), made offline with TextWorld's ``tw-make`` challenge makers and cached.
Each walkthrough step gives one (prompt, expert command) pair where the prompt is exactly
what the actor sees in that state (``jaxlm.agents.tips.expert_examples`` -> the same
``actor_messages`` as ``run_episodes``, rendered with the backend's chat template and
tokenized as ``LocalBackend.score`` does: prefix ids, then the command's ids).

Loss: next-token cross-entropy on the command tokens only. The actor ranks admissible
commands by their summed log-prob, which is minus this loss on the expert's command, so
the loss raises exactly the quantity the actor ranks by (a ranking loss over all
admissible commands would cost one extra scored sequence per command per example).
Only the LoRA adapters train (``jaxlm.train.lora``, through ``make_train_step``); the
vocabulary projection runs at the command positions only.

A tenth of the training games (at least one) is kept out of training for validation.
Before and after training it reports the per-step accuracy (the actor's rule, argmax of
summed log-prob over the admissible commands, equal to the walkthrough command) on the
training steps and on the validation steps. Writes the adapter with orbax under
``<workdir>/adapter`` and ``<workdir>/finetune.json`` (config, loss curve, accuracies,
wall and CPU seconds).
"""

from __future__ import annotations

import json
import pathlib
import resource
import time
from typing import Any

import numpy as np

# the actor the adapter is trained for (and that heldout / the full repro use with it)
ACTOR = "norm=sum,prompt=window,history=1,loop_penalty=1000"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def encode_examples(backend, examples: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """(prefix ids + command ids, number of prefix ids) per example, tokenized the way
    ``LocalBackend.score`` tokenizes a (chat prefix, continuation) pair."""
    out = []
    for ex in examples:
        p = backend.encode(backend.apply_chat_template(ex["messages"]))
        c = backend.encode(ex["expert"])
        out.append((p + c, len(p)))
    return out


def make_batch(rows: list[tuple[list[int], int]], length: int, n_cmd: int,
               pad_id: int) -> dict[str, np.ndarray]:
    """inputs [B, length]; the command's predicting slots ``at`` [B, n_cmd], their target
    ids and mask (slot ``j`` predicts token ``j + 1``)."""
    b = len(rows)
    inputs = np.full((b, length), pad_id, np.int32)
    at = np.zeros((b, n_cmd), np.int32)
    tgt = np.zeros((b, n_cmd), np.int32)
    mask = np.zeros((b, n_cmd), np.float32)
    for r, (ids, n_pre) in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"example of {len(ids)} tokens exceeds the batch length {length}")
        inputs[r, : len(ids)] = ids
        k = len(ids) - n_pre
        if k > n_cmd:
            raise ValueError(f"command of {k} tokens exceeds n_cmd={n_cmd}")
        at[r, :k] = np.arange(n_pre - 1, len(ids) - 1)
        tgt[r, :k] = ids[n_pre:]
        mask[r, :k] = 1.0
    return {"inputs": inputs, "at": at, "targets": tgt, "mask": mask}


def step_accuracy(backend, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Fraction of states where argmax of summed log-prob over the admissible commands
    is the walkthrough command (the actor's rule without loop breaking), and chance."""
    if not examples:
        return {"n": 0, "accuracy": float("nan"), "chance": float("nan")}
    res = backend.score_many([(ex["messages"], ex["admissible"]) for ex in examples])
    hits = [ex["admissible"][int(np.argmax([r.sum_logprob for r in rr]))] == ex["expert"]
            for ex, rr in zip(examples, res, strict=True)]
    return {"n": len(examples), "accuracy": float(np.mean(hits)),
            "chance": float(np.mean([1 / len(ex["admissible"]) for ex in examples]))}


def main(argv):
    del argv
    import jax
    from absl import flags
    from tqdm import tqdm

    from experiments.tips.diagnose import parse_variants
    from jaxlm.agents.textworld_env import TextWorldEnv, game_set, make_games
    from jaxlm.agents.tips import ActorConfig, expert_examples
    from jaxlm.core.score import bucket_len
    from jaxlm.llm.local import LocalBackend
    from jaxlm.train import OptimConfig, create_state, lm_loss_fn, make_optimizer
    from jaxlm.train import lora as L

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    f = flags.FLAGS
    if f.n_games < 2:
        raise SystemExit("--n_games must be >= 2 (a tenth, at least one, is kept for validation)")
    if f.steps < 1 or f.batch < 1:
        raise SystemExit("--steps and --batch must be >= 1")
    t0, c0 = time.time(), cpu_seconds()
    out = pathlib.Path(f.workdir)
    out.mkdir(parents=True, exist_ok=True)
    actor = ActorConfig(**parse_variants("a:" + f.actor)["a"])
    specs = game_set(f.game_set, f.n_games, f.train_seed)
    bar = tqdm(total=len(specs), desc="training games", unit="game")
    paths = make_games(specs, f.cache_dir, bar)
    bar.close()
    n_val = max(1, len(paths) // 10)
    envs = [TextWorldEnv(p, max_steps=f.max_steps, hide_objective=True) for p in paths]
    examples = expert_examples(envs, actor)
    for e in envs:
        e.close()
    val_games = {e.name for e in envs[-n_val:]}
    train_ex = [x for x in examples if x["game"] not in val_games]
    val_ex = [x for x in examples if x["game"] in val_games]
    t_data = time.time() - t0

    backend = LocalBackend("smollm2-135m-instruct", prefix_slots=0)
    cfg, base = backend.cfg, backend.params
    rows = encode_examples(backend, train_ex)
    length = bucket_len(max(len(r[0]) for r in rows), 64, multiple=32)
    n_cmd = max(len(r[0]) - r[1] for r in rows)
    rng = np.random.default_rng(f.seed)
    acc_sub = [train_ex[i] for i in sorted(rng.choice(len(train_ex),
                                                      min(f.acc_examples, len(train_ex)),
                                                      replace=False))]
    val_sub = val_ex[: f.acc_examples]
    acc0 = {"train": step_accuracy(backend, acc_sub), "val": step_accuracy(backend, val_sub)}
    print(f"before: train acc {acc0['train']['accuracy']:.2f} (n={acc0['train']['n']}), "
          f"val acc {acc0['val']['accuracy']:.2f} (n={acc0['val']['n']}), chance "
          f"{acc0['val']['chance']:.2f}")

    targets = tuple(t.strip() for t in f.targets.split(";") if t.strip())
    lora = L.init_lora(jax.random.key(f.seed), base, cfg, rank=f.rank, alpha=f.alpha,
                       targets=targets)
    tx, lr_fn = make_optimizer(OptimConfig(name="adamw", lr=f.lr, warmup_steps=min(10, f.steps),
                                           weight_decay=0.0, clip_norm=1.0), f.steps)
    step = jax.jit(L.lora_train_step(lm_loss_fn(cfg), tx, lora, lr_fn=lr_fn),
                   donate_argnums=0)
    state = create_state(lora.weights, tx)
    pad = int(getattr(backend.tokenizer, "pad_id", 0) or 0)
    log, t1, c1 = [], time.time(), cpu_seconds()
    order = rng.permutation(len(rows))
    k = 0
    bar = tqdm(total=f.steps, desc="LoRA steps", unit="step")
    for s in range(f.steps):
        idx = []
        while len(idx) < f.batch:
            if k == len(order):
                order, k = rng.permutation(len(rows)), 0
            idx.append(order[k])
            k += 1
        batch = make_batch([rows[i] for i in idx], length, n_cmd, pad)
        state, m = step(state, batch, jax.random.key(f.seed), base)
        if s % 5 == 0 or s == f.steps - 1:
            loss = float(m["loss"])
            if not np.isfinite(loss):
                raise SystemExit(f"non-finite loss at step {s}; lower --lr")
            log.append({"step": s, "loss": loss, "grad_norm": float(m["grad_norm"])})
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)
    bar.close()
    train_wall, train_cpu = time.time() - t1, cpu_seconds() - c1
    lora = lora.replace(weights=state.params)
    tuned = backend.with_params(L.merge(base, lora))
    acc1 = {"train": step_accuracy(tuned, acc_sub), "val": step_accuracy(tuned, val_sub)}
    print(f"after: train acc {acc1['train']['accuracy']:.2f}, val acc "
          f"{acc1['val']['accuracy']:.2f}")
    result = {
        "actor": f.actor, "game_set": f.game_set, "train_seed": f.train_seed,
        "n_games": f.n_games, "val_games": sorted(val_games), "n_train_examples": len(train_ex),
        "n_val_examples": len(val_ex), "seq_len": length, "rank": f.rank, "alpha": f.alpha,
        "targets": list(targets), "adapter_params": lora.num_params(), "steps": f.steps,
        "batch": f.batch, "lr": f.lr, "seed": f.seed, "loss_log": log,
        "accuracy_before": acc0, "accuracy_after": acc1, "data_seconds": t_data,
        "train_wall_seconds": train_wall, "train_cpu_seconds": train_cpu,
        "total_wall_seconds": time.time() - t0, "total_cpu_seconds": cpu_seconds() - c0,
        "tokens_per_step": f.batch * length,
    }
    L.save_lora(out / "adapter", lora, step=f.steps, extra={
        k: result[k] for k in ("actor", "game_set", "train_seed", "n_games", "steps", "lr",
                               "batch")})
    (out / "finetune.json").write_text(json.dumps(result, indent=1))
    print(f"adapter -> {out / 'adapter'}; train {train_wall:.0f}s wall / {train_cpu:.0f}s CPU "
          f"for {f.steps} steps of {f.batch}x{length} tokens")


if __name__ == "__main__":
    from absl import app, flags

    from experiments.tips import (TRAIN_BATCH, TRAIN_GAME_SET, TRAIN_LR, TRAIN_N_GAMES,
                                  TRAIN_SEED, TRAIN_STEPS, TRAIN_WORKDIR)

    flags.DEFINE_string("game_set", TRAIN_GAME_SET,
                        "Training game set (textworld_env.game_set).")
    flags.DEFINE_integer("train_seed", TRAIN_SEED, "Game-set seed (5: game seeds 5000+; held-out "
                         "evaluation uses seed 0).")
    flags.DEFINE_integer("n_games", TRAIN_N_GAMES,
                         "Training games (a tenth kept for validation).")
    flags.DEFINE_integer("max_steps", 15, "Env steps per episode.")
    flags.DEFINE_string("actor", ACTOR, "ActorConfig fields field=value,... (the prompt "
                        "format trained for).")
    flags.DEFINE_integer("rank", 8, "LoRA rank.")
    flags.DEFINE_float("alpha", 16.0, "LoRA alpha (scale alpha/rank).")
    flags.DEFINE_string("targets", r"layers/(1[5-9]|2[0-9])/(attn/w[qkvo]|mlp/w_(up|down|gate))$",
                        "';'-separated param-path regexes to adapt (default: attention and MLP "
                        "of layers 15-29; the backward pass stops at the lowest).")
    flags.DEFINE_integer("steps", TRAIN_STEPS, "Optimizer steps.")
    flags.DEFINE_integer("batch", TRAIN_BATCH, "Examples per step.")
    flags.DEFINE_float("lr", TRAIN_LR, "Peak learning rate (AdamW, cosine).")
    flags.DEFINE_integer("seed", 0, "Seed (adapter init, batch order).")
    flags.DEFINE_integer("acc_examples", 40, "States scored for the accuracy checks.")
    flags.DEFINE_string("cache_dir", None, "Game cache.")
    flags.DEFINE_string("workdir", TRAIN_WORKDIR, "Output folder (adapter/, finetune.json).")
    app.run(main)
