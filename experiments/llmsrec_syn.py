"""LLMSRec-Syn: in-context sequential recommendation on synthetic ML-1M-format data.

    python -m experiments.llmsrec_syn --config=quick --workdir=runs/llmsrec_syn
    python -m experiments.llmsrec_syn --config=default --override=n_test=200
    python -m experiments.llmsrec_syn --config=target500 --workdir=runs/llmsrec500
    python -m experiments.llmsrec_syn --config=demos_k --workdir=runs/llmsrec_demos
    python -m experiments.llmsrec_syn --config=default --data_dir=/path/to/ml-1m  # real ML-1M
    python -m experiments.llmsrec_syn --config=default_test --backend=scripted    # no model
    OPENAI_API_KEY=... python -m experiments.llmsrec_syn --config=quick --backend=openai \
        --base_url=http://host:8000/v1 --model=NAME --override=mode=generate --record=r.jsonl
    python -m experiments.llmsrec_syn --config=quick --backend=replay --cassette=r.jsonl \
        --override=mode=generate

Log-prob scoring (mode=score, the default) needs prompt log-probs: a chat/completions
server does not return them, so --backend=openai needs --override=mode=generate (the
model writes a ranked list, read by parse_ranking) or --echo_logprobs when the server
echoes prompt log-probs on /completions (vLLM, llama.cpp); otherwise it stops with one
line saying so.

Writes llmsrec_syn.json, table.md and llmsrec_ndcg10.png under --workdir.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from absl import flags

from jaxlm.utils import cli

from jaxlm.llm.cli import BackendFlagError, backend_spec_from_flags, define_backend_flags
from jaxlm.utils.config import ConfigError, Registry, apply_overrides

_CONFIG = flags.DEFINE_string("config", "quick", "Preset: default, quick or *_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "RecExpConfig field=value overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/llmsrec_syn", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for candidates, demos and bootstraps.")
define_backend_flags("local")  # --backend, --model, --base_url, --record, --cassette, ...
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with ML-1M movies.dat/ratings.dat.")


def _presets() -> Registry:
    from jaxlm.agents.recsys.data import SynthConfig
    from experiments.llmsrec.experiment import QUICK, RecExpConfig

    reg: Registry = Registry("llmsrec_syn")
    reg.add("default", RecExpConfig())
    reg.add("quick", QUICK)
    # the scale target: a 500-user synthetic world, every user scored by SmolLM2
    # with zero-shot and the aggregated demonstration (fast engine, bf16 matmuls with f32
    # accumulation, per-row length buckets)
    fast = dict(score_engine="fast", score_mm_dtype="bfloat16", score_attn_dtype="bfloat16",
                score_row_buckets=True)
    reg.add("target500", RecExpConfig(
        synth=SynthConfig(n_users=500, n_items=400), n_test=500,
        methods=("zero", "aggregated:2"), scrambled_methods=(), **fast))
    # "more demonstrations do not help": nearest-k and aggregated-k on a user subset
    reg.add("demos_k", RecExpConfig(
        synth=SynthConfig(n_users=500, n_items=400), n_test=500, n_llm_users=32,
        methods=("zero", "nearest:1", "nearest:2", "nearest:4", "aggregated:2",
                 "aggregated:4"), scrambled_methods=(), sasrec_steps=0, score_len_step=128,
        **fast))
    reg.add("demos_k_test", dataclasses.replace(
        QUICK, synth=SynthConfig(n_users=60, n_items=96, min_len=6, max_len=12), n_test=8,
        n_llm_users=4, methods=("zero", "nearest:1", "nearest:2"),
        subset_methods=("aggregated:2",), n_subset_users=2, scrambled_methods=(),
        sasrec_steps=0, **fast))
    reg.add("target500_test", dataclasses.replace(
        QUICK, synth=SynthConfig(n_users=60, n_items=96, min_len=6, max_len=12), n_test=20,
        n_llm_users=6, methods=("zero", "aggregated:2"), scrambled_methods=(),
        sasrec_steps=5, **fast))
    tiny = dataclasses.replace(QUICK, synth=SynthConfig(n_users=60, n_items=96, min_len=6,
                                                        max_len=12), n_test=8, sasrec_steps=5)
    reg.add("default_test", tiny)
    reg.add("quick_test", tiny)
    return reg


def main(argv):
    del argv
    from jaxlm.agents.recsys.data import load_ml1m
    from experiments.llmsrec.experiment import run_experiment
    from jaxlm.llm import BackendError
    from jaxlm.llm.cli import build_backend, check_log_prob_scoring
    from jaxlm.utils.report import markdown_table

    try:  # flags and settings are checked before any data or model is loaded
        cfg = apply_overrides(_presets().get(_CONFIG.value), _OVERRIDE.value)
        cfg = dataclasses.replace(cfg, seed=_SEED.value)
        spec = backend_spec_from_flags()
        check_log_prob_scoring(spec, cfg.mode == "score", task="score candidates",
                               fix="--override=mode=generate (the model writes a ranking)")
    except (ConfigError, BackendFlagError, ValueError) as e:
        raise cli.UserError(str(e)) from None  # one line, exit 2 (jaxlm.utils.cli)
    try:
        backend = build_backend(spec)
        if cfg.mode == "score" and "score" not in backend.capabilities:
            sys.exit(f"error: backend {backend.name!r} has no log-prob scoring tier: pass "
                     "--override=mode=generate (or replay a cassette recorded in score mode)")
        data = load_ml1m(_DATA_DIR.value) if _DATA_DIR.value else None
        out = pathlib.Path(_WORKDIR.value)
        res = run_experiment(backend, cfg, out, data=data,
                             bar=lambda total, desc: __import__("tqdm").tqdm(total=total,
                                                                             desc=desc))
    except BackendError as e:
        sys.exit(f"error: backend: {e}")
    (out / "table.md").write_text(markdown_table(res["table"]))
    print(markdown_table(res["table"]))
    for k, (m, lo, hi) in res["paired"].items():
        print(f"NDCG@10 {k}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print("NDCG@10 by scoring normalisation: " + ", ".join(
        f"{k} {v['NDCG@10']:.3f}" for k, v in res["norms"].items()))
    print(f"timing: {res['timing']}\nwrote {out}")


if __name__ == "__main__":
    cli.run(main)
