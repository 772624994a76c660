"""Fine-tuning the actor: batches put the loss on the command tokens only, and the
command loss equals core's masked next-token loss (an independent path: full logits)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tips.finetune import encode_examples, make_batch
from jaxlm.core import MODELS, init
from jaxlm.train import lm_loss_fn

CFG = MODELS.get("smollm2-135m_test")


def test_make_batch_targets_the_command_tokens():
    rows = [([5, 6, 7, 8, 9], 3), ([1, 2, 3], 2)]
    b = make_batch(rows, 8, 3, pad_id=0)
    assert b["inputs"].shape == (2, 8) and list(b["inputs"][1]) == [1, 2, 3, 0, 0, 0, 0, 0]
    # row 0: slots 2, 3 predict 8, 9; row 1: slot 1 predicts 3
    assert list(b["at"][0][:2]) == [2, 3] and list(b["targets"][0][:2]) == [8, 9]
    assert list(b["mask"][0]) == [1, 1, 0] and list(b["mask"][1]) == [1, 0, 0]
    assert b["at"][1][0] == 1 and b["targets"][1][0] == 3
    with pytest.raises(ValueError, match="exceeds the batch length"):
        make_batch(rows, 4, 3, 0)
    with pytest.raises(ValueError, match="n_cmd"):
        make_batch(rows, 8, 1, 0)


def test_command_loss_equals_masked_lm_loss():
    params = init(jax.random.key(1), CFG)
    rng = np.random.default_rng(0)
    rows = [(list(rng.integers(3, CFG.vocab_size, n)), n - k) for n, k in ((20, 3), (13, 2))]
    b = make_batch(rows, 24, 4, pad_id=0)
    got, w = lm_loss_fn(CFG)(params, {k: jnp.asarray(v) for k, v in b.items()}, None)
    # reference: full-sequence loss with a [B, T] mask on the command targets
    x = jnp.asarray(b["inputs"])
    mask = np.zeros((2, 23), np.float32)
    for r, (ids, n_pre) in enumerate(rows):
        mask[r, n_pre - 1: len(ids) - 1] = 1
    want, w2 = lm_loss_fn(CFG)(params, {"inputs": x[:, :-1], "targets": x[:, 1:],
                                        "mask": jnp.asarray(mask)}, None)
    assert float(w) == float(w2) == 5.0
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_encode_examples_matches_the_backend_scoring_tokenization():
    from jaxlm.llm.local import ByteTokenizer, LocalBackend

    be = LocalBackend(cfg=CFG, params=init(jax.random.key(0), CFG), tokenizer=ByteTokenizer())
    ex = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
          "expert": "go east"}
    (ids, n_pre), = encode_examples(be, [ex])
    assert ids[:n_pre] == be._prefix_ids(ex["messages"])
    assert ids[n_pre:] == be.encode("go east")


def test_heldout_with_adapter_merges_a_saved_adapter(tmp_path):
    from flax import traverse_util

    from experiments.tips.heldout import with_adapter
    from jaxlm.llm.local import ByteTokenizer, LocalBackend
    from jaxlm.train import lora as L

    params = init(jax.random.key(0), CFG)
    be = LocalBackend(cfg=CFG, params=params, tokenizer=ByteTokenizer())
    ad = L.init_lora(jax.random.key(1), params, CFG, rank=2, targets=(r"attn/wv$",))
    flat = traverse_util.flatten_dict(ad.weights, sep="/")
    flat = {k: (0.3 * jax.random.normal(jax.random.key(len(k)), v.shape)
                if k.endswith("/b") else v) for k, v in flat.items()}
    ad = ad.replace(weights=traverse_util.unflatten_dict(flat, sep="/"))
    L.save_lora(tmp_path / "ad", ad)
    tuned = with_adapter(be, tmp_path / "ad")
    assert tuned.name.endswith("+lora") and tuned.prefix is None
    want = LocalBackend(cfg=CFG, params=L.merge(params, ad), tokenizer=ByteTokenizer())
    a = tuned.score("You are in a room.", ["go east", "look"])
    b = want.score("You are in a room.", ["go east", "look"])
    base = be.score("You are in a room.", ["go east", "look"])
    np.testing.assert_allclose([r.sum_logprob for r in a], [r.sum_logprob for r in b],
                               rtol=1e-5)
    assert not np.allclose([r.sum_logprob for r in a], [r.sum_logprob for r in base])


def test_repro_finds_the_adapter_only_for_the_full_run(tmp_path, monkeypatch):
    from experiments import repro_introspective_tips as R
    from experiments.tips.diagnose import parse_variants
    from jaxlm.agents.tips import ActorConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(R.ADAPTER_ENV, raising=False)
    assert R.find_adapter(quick=False) is None  # no runs/tips_lora/adapter here
    (tmp_path / R.DEFAULT_ADAPTER).mkdir(parents=True)
    assert R.find_adapter(quick=False) == tmp_path.joinpath(R.DEFAULT_ADAPTER).relative_to(
        tmp_path)
    assert R.find_adapter(quick=True) is None
    monkeypatch.setenv(R.ADAPTER_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="JAXLM_TIPS_ADAPTER"):
        R.find_adapter(quick=False)
    # the prompt-only actor is the one the quick entry always used
    a = ActorConfig(mode="score", **parse_variants("a:" + R.PROMPT_ONLY_ACTOR)["a"])
    assert a == ActorConfig(mode="score", norm="sum", prompt="window", history=0,
                            loop_penalty=1000.0)


def test_resolve_adapter_and_the_full_preset(tmp_path, monkeypatch):
    from experiments.tips import FULL_GAME_SET
    from experiments.tips.heldout import ADAPTER_ENV, DEFAULT_ADAPTER, resolve_adapter

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ADAPTER_ENV, raising=False)
    assert resolve_adapter("none") is None and resolve_adapter("") is None
    assert resolve_adapter("auto") is None
    with pytest.raises(FileNotFoundError, match="adapter=nowhere"):
        resolve_adapter("nowhere")
    (tmp_path / "mine").mkdir()
    assert str(resolve_adapter("mine")) == "mine"
    (tmp_path / DEFAULT_ADAPTER).mkdir(parents=True)
    assert str(resolve_adapter("auto")) == DEFAULT_ADAPTER
    monkeypatch.setenv(ADAPTER_ENV, str(tmp_path / "mine"))
    assert resolve_adapter("auto") == tmp_path / "mine"

    from experiments.tips.config import presets  # (importing the entrypoint would define flags)

    full = presets().get("default")
    assert (full.game_set, full.adapter) == (FULL_GAME_SET, "auto")
    assert set(full.scenarios) == {"S1", "S2", "S3"} and full.n_games >= 20
    assert {"none", "tips", "reflexion", "oracle_tips", "random"} <= set(full.methods)
    assert presets().get("quick_test").adapter == "none"
    # an adapter's meta actor spec overrides the prompt fields it names
    a = full.actor("norm=sum,prompt=window,history=1,loop_penalty=1000")
    assert (a.history, a.prompt, a.mode) == (1, "window", full.actor_mode)
    assert full.actor().history == full.history


def test_summarize_reads_a_partial_log(tmp_path, capsys):
    from experiments.tips.summarize import main

    rows = []
    for seed, (a, b) in enumerate([(1.0, 0.0), (0.0, 0.0)]):
        for g, (none, tips) in enumerate([(0.0, 1.0), (1.0, 1.0)]):
            rows += [{"scenario": "S1", "method": "none", "trial": 0, "game": f"g{g}",
                      "norm_score": none, "seed": seed},
                     {"scenario": "S1", "method": "random", "trial": 0, "game": f"g{g}",
                      "norm_score": (a, b)[g], "seed": seed},
                     {"scenario": "S1", "method": "tips", "trial": 1, "game": f"g{g}",
                      "norm_score": tips, "seed": seed}]
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main(str(path))
    out = capsys.readouterr().out
    # random: g0 averages 0.5 over seeds, g1 0.0 -> actor - random = mean(-0.5, +1.0)
    assert "actor - random           +0.25" in out and "(n=2 games; 0.50 vs 0.25)" in out
    # tips at trial 1 against none (played once, stands for trial 1): mean(+1, 0)
    assert "S1 tips - none           +0.50" in out
    assert "S1/tips/1" in out and "n=  4" in out
    assert "oracle" not in out  # arms absent from the log are not reported


def test_default_adapter_training_games_are_disjoint_from_the_evaluation_games(tmp_path):
    from experiments.tips import (FULL_EVAL_SEED, FULL_GAME_SET, FULL_N_GAMES, TRAIN_GAME_SET,
                                  TRAIN_N_GAMES, TRAIN_SEED, TRAIN_WORKDIR)
    from experiments.tips.heldout import DEFAULT_ADAPTER, check_heldout, training_games
    from jaxlm.agents.textworld_env import game_set
    from jaxlm.train import lora as L

    assert DEFAULT_ADAPTER == f"{TRAIN_WORKDIR}/adapter" and TRAIN_GAME_SET == FULL_GAME_SET
    extra = {"game_set": TRAIN_GAME_SET, "n_games": TRAIN_N_GAMES, "train_seed": TRAIN_SEED}
    train = training_games(extra)
    evals = [g.name for g in game_set(FULL_GAME_SET, FULL_N_GAMES, FULL_EVAL_SEED)]
    assert len(train) == TRAIN_N_GAMES and len(set(train)) == TRAIN_N_GAMES
    assert not set(train) & set(evals)
    # the seeds themselves never meet (the same tw-make seed could make the same map)
    seeds = lambda names: {n.rsplit("-s", 1)[1] for n in names}  # noqa: E731
    assert not seeds(train) & seeds(evals)
    assert training_games({"game_set": TRAIN_GAME_SET}) is None  # meta lacks the fields
    # an adapter whose recorded training games are evaluation games is refused
    params = init(jax.random.key(0), CFG)
    ad = L.init_lora(jax.random.key(1), params, CFG, rank=2, targets=(r"attn/wv$",))
    L.save_lora(tmp_path / "ok", ad, extra=extra)
    assert "game seeds 5000-5059" in check_heldout(tmp_path / "ok", evals)
    L.save_lora(tmp_path / "bad", ad, extra=dict(extra, train_seed=FULL_EVAL_SEED))
    with pytest.raises(ValueError, match="trained on 20 of the evaluation games"):
        check_heldout(tmp_path / "bad", evals)
    L.save_lora(tmp_path / "old", ad, extra={"actor": "norm=sum"})
    assert "not recorded" in check_heldout(tmp_path / "old", evals)


def test_quick_section_points_at_the_published_full_run(tmp_path):
    from experiments import repro_introspective_tips as R

    assert "No full run is published" in R.full_run_pointer(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    assert "unreadable" in R.full_run_pointer(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({R.NAME: {"diffs": {}}}))
    assert "unreadable" in R.full_run_pointer(tmp_path)  # a missing key is named, not raised
    diff = {"mean": 0.575, "ci": [0.375, 0.76], "n_games": 20}
    (tmp_path / "metrics.json").write_text(json.dumps({R.NAME: {
        "diffs": {"actor_vs_random": diff, "S1_tips_vs_none": {**diff, "mean": -0.004}},
        "seeds": [0, 1, 2], "adapter": "runs/x/adapter", "seconds": 1462.0,
        "finished_utc": "2026-12-04 12:00:00", "verdict": "not reproduced"}}))
    text = R.full_run_pointer(tmp_path)
    assert "seeds [0, 1, 2] x 20 games, 24 min" in text
    assert "actor - random +0.57 [+0.38, +0.76]" in text and "-0.00" in text
    assert "not reproduced" in text
