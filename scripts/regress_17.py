"""Regression table for issue 17 (one model path): old (pre-#17) vs new code, alternating.

Checks out the last commit before the one-model-path work (the parent of the commit that
added ``jaxlm/core/params.py``) into a temporary git worktree and runs the same
measurements on the old and the new tree in separate processes, alternating
(A B, B A, A B, ... for ``--rounds`` rounds, one measurement after another), so load on a
shared machine hits both alike; reports medians and new/old speed ratios. Each process
imports the ``jaxlm`` of its own tree (``cwd`` and ``PYTHONPATH`` = the tree).

Measurements (the issue's "Must not regress" list):
  recsys_f32, recsys_bf16  LLMSRec candidate scoring, RecScorer(engine="fast"), cands/s
  decode_b1, decode_b16    core.generate greedy decode, new tokens/s (batch 1 and 16)
  rome                     one ROME edit (layer 4, C = I) on SmolLM2, seconds
  keyformer                experiments.keyformer_eval --config=keyformer_quick (slice), s
  tips                     experiments.introspective_tips, 2 games x 1 trial, seconds
plus line counts per jaxlm package before and after.

    nice -n 10 python scripts/regress_17.py --rounds=3 [--only=recsys_f32,decode_b1]

Writes runs/bench/regress_17.json and runs/bench/regress_17.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable

# ----------------------------------------------------------------- in-process snippets
# Each prints one JSON line {"value": float}; it uses only APIs both trees have.
_LOAD = """
import json, time, statistics
import jax, jax.numpy as jnp, numpy as np
from jaxlm.weights import load
m = load("smollm2-135m-instruct")
"""

_RECSYS = _LOAD + """
from jaxlm.agents.recsys.scoring import RecScorer
sc = RecScorer(m.params, m.cfg, m.tokenizer, engine="fast", mm_dtype={dtype!r})
rng = np.random.default_rng(0)
words = "the movie film drama comedy love war story night city man woman life day".split()
def text(n): return " ".join(rng.choice(words, n))
prompts = ["User history: " + text(120) + " Rank the candidates." for _ in range(4)]
conts = [[" " + text(6) for _ in range(20)] for _ in prompts]
sc.score(prompts, conts)  # compile
ts = []
for _ in range(3):
    t0 = time.perf_counter(); sc.score(prompts, conts); ts.append(time.perf_counter() - t0)
print(json.dumps({{"value": 80 / statistics.median(ts)}}))
"""

_DECODE = _LOAD + """
from jaxlm.core.generate import generate
params = jax.tree.map(jnp.asarray, m.params)
ids = m.tokenizer.encode("The capital of France is")
prompts = [ids] * {batch}
def run():
    out = generate(params, m.cfg, prompts, max_new_tokens=32, key=jax.random.PRNGKey(0))
    jax.block_until_ready(out.tokens)
run()
ts = []
for _ in range(3):
    t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
print(json.dumps({{"value": {batch} * 32 / statistics.median(ts)}}))
"""

_ROME = _LOAD + """
from jaxlm.editing import rome
from jaxlm.editing.requests import EditRequest
params = jax.tree.map(jnp.asarray, m.params)
try:  # the caller owns one layer stack (the old tree cached one per params object itself)
    from jaxlm.core import stack_layers
    params = stack_layers(params)
except ImportError:
    pass
req = EditRequest("The capital of {{}} is", "France", " Rome", " Paris")
hp = rome.RomeConfig(layer=4)
rome.rome_edit(params, m.cfg, m.tokenizer, req, hp)  # compile
ts = []
for _ in range(2):
    t0 = time.perf_counter(); rome.rome_edit(params, m.cfg, m.tokenizer, req, hp)
    ts.append(time.perf_counter() - t0)
print(json.dumps({{"value": statistics.median(ts)}}))
"""

MEASURES = {
    # name: (kind, payload, unit, higher_is_better)
    "recsys_f32": ("snippet", _RECSYS.format(dtype="float32"), "cands/s", True),
    "recsys_bf16": ("snippet", _RECSYS.format(dtype="bfloat16"), "cands/s", True),
    "decode_b1": ("snippet", _DECODE.format(batch=1), "tok/s", True),
    "decode_b16": ("snippet", _DECODE.format(batch=16), "tok/s", True),
    "rome": ("snippet", _ROME.format(), "s/edit", False),
    "keyformer": ("command", ["-m", "experiments.keyformer_eval", "--config=keyformer_quick",
                              "--override=n_text=1", "--override=n_passkey=1",
                              "--override=n_conv=1"], "s", False),
    "tips": ("command", ["-m", "experiments.introspective_tips", "--n_games=2", "--trials=1",
                         "--max_steps=8"], "s", False),
}


def base_commit() -> str:
    """Parent of the commit that introduced jaxlm/core/params.py (pre-#17 code)."""
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--",
                          "jaxlm/core/params.py"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.split()
    if not out:
        raise SystemExit("regress_17: no commit added jaxlm/core/params.py in this history")
    return out[-1] + "^"


def run_one(name: str, tree: pathlib.Path, work: pathlib.Path, timeout: float) -> float:
    kind, payload, _, _ = MEASURES[name]
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kind == "snippet":
        p = subprocess.run([PY, "-c", payload], cwd=tree, env=env, capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"{name} in {tree}: {p.stderr[-2000:]}")
        return float(json.loads(p.stdout.strip().splitlines()[-1])["value"])
    out = work / f"{name}_{tree.name}"
    t0 = time.perf_counter()
    p = subprocess.run([PY, *payload, f"--workdir={out}"], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"{name} in {tree}: {p.stderr[-2000:]}")
    return time.perf_counter() - t0


def line_counts(tree: pathlib.Path) -> dict[str, int]:
    out = {}
    for pkg in sorted(p for p in (tree / "jaxlm").iterdir() if p.is_dir()
                      and not p.name.startswith("__")):
        out[pkg.name] = sum(len(f.read_text(errors="replace").splitlines())
                            for f in pkg.rglob("*.py"))
    out["jaxlm (all)"] = sum(len(f.read_text(errors="replace").splitlines())
                             for f in (tree / "jaxlm").rglob("*.py"))
    out["experiments (all)"] = sum(len(f.read_text(errors="replace").splitlines())
                                   for f in (tree / "experiments").rglob("*.py"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(MEASURES))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    ap.add_argument("--out_dir", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = set(names) - set(MEASURES)
    if bad:
        raise SystemExit(f"regress_17: unknown measurement(s) {sorted(bad)}; use {list(MEASURES)}")
    base = base_commit()
    base_sha = subprocess.run(["git", "rev-parse", base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    new_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="regress17_") as tmp:
        old = pathlib.Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), base_sha], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            for so in (ROOT / "jaxlm" / "quant").glob("_kernel*.so"):  # built, git-ignored
                if (old / "jaxlm" / "quant").is_dir():
                    (old / "jaxlm" / "quant" / so.name).write_bytes(so.read_bytes())
            trees = {"old": old, "new": ROOT}
            vals: dict[str, dict[str, list[float]]] = {n: {"old": [], "new": []} for n in names}
            errors: dict[str, str] = {}
            lc_old, lc_new = line_counts(old), line_counts(ROOT)
            # one measurement at a time (results land as they complete), its rounds
            # alternating old/new as A B, B A, A B, ...: same load drift hits both trees
            for name in names:
                for r in range(args.rounds):
                    if name in errors:
                        break
                    order = ("old", "new") if r % 2 == 0 else ("new", "old")
                    for which in order:
                        try:
                            v = run_one(name, trees[which], pathlib.Path(tmp), args.timeout)
                        except (RuntimeError, subprocess.TimeoutExpired) as e:
                            errors[name] = f"{which}: {str(e)[-600:]}"
                            break
                        vals[name][which].append(v)
                        print(f"round {r + 1} {name} {which}: {v:.4g} {MEASURES[name][2]}",
                              flush=True)
                _write(out_dir, names, vals, errors, base_sha, new_sha, args.rounds,
                       lc_old, lc_new)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           capture_output=True)
    print((out_dir / "regress_17.md").read_text())


def _write(out_dir, names, vals, errors, base_sha, new_sha, rounds, lc_old, lc_new):
    rows = {}
    for n in names:
        o, w = vals[n]["old"], vals[n]["new"]
        if not o or not w:
            rows[n] = {"error": errors.get(n, "no samples")}
            continue
        mo, mw = statistics.median(o), statistics.median(w)
        hib = MEASURES[n][3]
        # speed of new relative to old (> 1: new is faster)
        rel = (mw / mo) if hib else (mo / mw)
        rows[n] = {"unit": MEASURES[n][2], "old": o, "new": w, "old_median": mo,
                   "new_median": mw, "new_speed_vs_old": rel, "within_10pct": rel >= 1 / 1.1}
    res = {"machine": {"cpus": os.cpu_count(), "note": "shared machine, under load"},
           "old_commit": base_sha, "new_commit": new_sha, "rounds": rounds,
           "results": rows, "line_counts": {"old": lc_old, "new": lc_new}}
    (out_dir / "regress_17.json").write_text(json.dumps(res, indent=1))
    md = [f"old = {base_sha[:10]} (pre-#17), new = {new_sha[:10]}; medians of alternating "
          "runs (A B, B A, ...), separate processes.", "",
          "| measurement | unit | old | new | new speed / old | n |", "|---|---|---|---|---|---|"]
    for n, r in rows.items():
        if "error" in r:
            md.append(f"| {n} | | | | error: {r['error'][:80]} | |")
        else:
            md.append(f"| {n} | {r['unit']} | {r['old_median']:.4g} | {r['new_median']:.4g} | "
                      f"{r['new_speed_vs_old']:.3f} | {min(len(r['old']), len(r['new']))} |")
    md += ["", "| package | lines before | lines after |", "|---|---|---|"]
    for k in sorted(set(lc_old) | set(lc_new)):
        md.append(f"| {k} | {lc_old.get(k, 0)} | {lc_new.get(k, 0)} |")
    (out_dir / "regress_17.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
