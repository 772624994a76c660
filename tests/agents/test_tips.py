"""Tips agent: memory/provenance, malformed output, scenarios with a scripted backend,
episode logs surviving backend failures, one short SmolLM2-free local-backend episode."""

import json

import jax
import pytest

from jaxlm.agents.textworld_env import GameSpec, TextWorldEnv, make_game, textworld_available
from jaxlm.agents.tips import (
    ActorConfig,
    EpisodeError,
    EpisodeLog,
    TipGenerator,
    TipMemory,
    Trajectory,
    build_chat,
    oracle_tips,
    run_episodes,
    run_expert,
    run_own_experience,
    run_zero_shot,
    sanitize_tips,
    summarize,
    trials_to_first_win,
)
from jaxlm.llm import BackendError, GenConfig, ReplayBackend, ScriptedBackend
from jaxlm.llm.local import ByteTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:.*not fully supported")

TIP_REPLY = ("Here are the tips:\n1. Read the cookbook before taking any food.\n"
             "2) Take only the ingredients the recipe lists.\n- Prepare the meal, then eat it.\n"
             "ok\n1. Read the cookbook before taking any food.")


def test_sanitize_tips_handles_malformed_output():
    assert sanitize_tips(TIP_REPLY) == ["Read the cookbook before taking any food.",
                                        "Take only the ingredients the recipe lists.",
                                        "Prepare the meal, then eat it."]
    assert sanitize_tips("") == [] and sanitize_tips("!!!\n\n12 34 56\nok") == []
    long = " ".join(["word"] * 50)
    assert len(sanitize_tips(long, max_words=20)[0].split()) == 20
    assert len(sanitize_tips("\n".join(f"tip number {i} here" for i in range(9)), 5)) == 5


def test_tip_memory_rewrite_and_provenance():
    m = TipMemory(max_tips=2)
    m.rewrite(["a b c", "d e f", "g h i"], "self", ["g1"], 0)
    assert m.texts() == ["a b c", "d e f"] and m.version == 1
    won = Trajectory("g1", 0, "tips", won=True, score=1, max_score=1)
    lost = Trajectory("g1", 1, "tips", won=False)
    m.record_outcome(won)
    m.rewrite(["d e f", "x y z"], "expert", ["g2"], 1)  # rewritten, not appended
    m.record_outcome(lost)
    prov = {r["tip"]: r for r in m.provenance()}
    assert set(prov) == {"d e f", "x y z"}
    assert prov["d e f"]["source"] == "self" and prov["d e f"]["version"] == 1  # kept tip
    assert prov["d e f"]["episodes"] == 2 and prov["d e f"]["wins"] == 1
    assert prov["x y z"]["source"] == "expert" and prov["x y z"]["wins"] == 0
    assert m.credit["a b c"] == {"episodes": 1, "wins": 1, "score": 1.0}
    assert m.history == [["a b c", "d e f"], ["d e f", "x y z"]]


def test_tip_generator_fallback_on_garbage():
    gen = TipGenerator(ScriptedBackend(default="???"))
    tr = Trajectory("g", 0, "tips", goal="eat")
    assert gen.from_self(tr, ["keep me please"]) == ["keep me please"]
    assert gen.stats == {"calls": 1, "parse_failures": 1}
    gen2 = TipGenerator(ScriptedBackend(default=TIP_REPLY))
    assert len(gen2.from_self(tr, [])) == 3 and gen2.stats["parse_failures"] == 0
    assert gen2.consolidate([["a b c d"], ["e f g h"]])[0].startswith("Read the cookbook")
    assert oracle_tips(["go east", "take coin"]) == [
        "Do exactly these actions in order: go east, then take coin."]


def test_append_prompts_extend_each_other():
    """Consecutive "append" prompts share everything but the last turn's action list, so a
    prefix-caching backend only encodes the new turn; a cut history is marked."""
    cfg, tok = ActorConfig(), ByteTokenizer()
    obs = ["You are in a shed.", "A garden. Exits: north.", "A hall with a coin."]
    acts = ["go east", "go north"]
    texts = [tok.apply_chat_template(build_chat("Find the coin.", ["Explore."], "Tips:",
                                                obs[: t + 1], acts[:t], ["look", "go x"], cfg))
             for t in range(3)]
    for a, b in zip(texts, texts[1:], strict=False):
        common = a[: a.index("\n\nValid actions")]
        assert b.startswith(common) and len(b) > len(a)
    assert texts[-1].count("Valid actions") == 1 and "Tips:\n1. Explore." in texts[0]
    cut = build_chat("g", [], "", obs[1:], acts[1:], ["look"], cfg, cut=True)
    assert "Earlier steps omitted" in cut[1]["content"]
    with pytest.raises(ValueError, match="one more observation"):
        build_chat("g", [], "", obs, acts[:1], ["look"], cfg)
    with pytest.raises(ValueError, match="history"):
        ActorConfig(history=5, history_max=3)


def test_chat_many_cassette_round_trip(tmp_path):
    inner = ScriptedBackend(rules=[(r"coin", "take coin")], default="look")
    rec = ReplayBackend(tmp_path / "c.jsonl", inner=inner)
    gen = TipGenerator(rec, cfg=GenConfig(max_tokens=8))
    msgs = [[{"role": "user", "content": c}] for c in ("a coin", "a door", "a coin")]
    live = [c[0].text for c in rec.chat_many(msgs, gen.cfg)]
    assert live == ["take coin", "look", "take coin"]
    rep = ReplayBackend(tmp_path / "c.jsonl")
    assert [c[0].text for c in rep.chat_many(msgs, gen.cfg)] == live
    assert rep.stats["hits"] == 3


def test_summary_and_first_win():
    a = [Trajectory("g1", 0, "x", won=False, score=0), Trajectory("g2", 0, "x", won=True,
                                                                   score=1)]
    b = [Trajectory("g1", 1, "x", won=True, score=1), Trajectory("g2", 1, "x", won=True,
                                                                  score=1)]
    s = summarize(a)
    assert s["n"] == 2 and s["win_rate"] == 0.5 and s["norm_score_ci"][0] <= 0.5
    assert trials_to_first_win([a, b]) == [1, 0]


# ----------------------------------------------------------------------------- with games
needs_tw = pytest.mark.skipif(not textworld_available(),
                              reason="textworld is not installed (pip install -e '.[agents]')")


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    if not textworld_available():
        pytest.skip("textworld is not installed (pip install -e '.[agents]')")
    cache = tmp_path_factory.getbasetemp() / "tw_shared_games"  # shared by both modules
    return [make_game(GameSpec("coin_collector", 2, 11), cache),
            make_game(GameSpec("cooking", 1, 5), cache)]


_OPEN_ENVS: list = []


@pytest.fixture(scope="module", autouse=True)
def _close_envs():
    """Closes every TextWorld env this module opened while the interpreter is alive (jericho's
    close during interpreter-exit garbage collection can crash the process)."""
    yield
    while _OPEN_ENVS:
        _OPEN_ENVS.pop().close()


def _envs(games, steps=8):
    envs = [TextWorldEnv(p, max_steps=steps, hide_objective=True) for p in games]
    _OPEN_ENVS.extend(envs)
    return envs


def _oracle_scorer(prefix, cont):
    """Scripted log-probs that prefer the command named first in a 'Do exactly' tip."""
    import re

    m = re.search(r"Do exactly these actions in order: (.*?)\.", prefix)
    if m:
        seq = m.group(1).split(", then ")
        # past actions: "> cmd" lines (window prompts) or assistant turns (append prompts)
        done = [ln.removeprefix("> ") for ln in prefix.splitlines()
                if ln.removeprefix("> ") in seq]
        nxt = seq[min(seq.index(done[-1]) + 1, len(seq) - 1)] if done else seq[0]
        return 0.0 if cont == nxt else -5.0
    return -1.0 - 0.01 * len(cont)


@needs_tw
def test_baselines_and_oracle_tips_ceiling(games):
    envs = _envs(games)
    b = ScriptedBackend(scorer=_oracle_scorer)
    wt = run_episodes(envs, "walkthrough", None)
    assert all(t.won and t.norm_score == 1.0 for t in wt)
    rnd = run_episodes(envs, "random", None, seed=1)
    assert all(t.invalid_rate == 0 and t.n_steps <= 8 for t in rnd)
    res = run_own_experience(envs, "oracle_tips", b, trials=1)
    tr = res["trajectories"][0]
    assert all(t.won for t in tr) and all(t.memory for t in tr)
    assert [s.how for s in tr[0].steps] == ["score"] * tr[0].n_steps
    none = run_own_experience(envs, "none", b, trials=1)["trajectories"][0]
    assert sum(t.norm_score for t in none) < sum(t.norm_score for t in tr)


@needs_tw
def test_scenarios_with_scripted_tips(games, tmp_path):
    envs = _envs(games, steps=5)
    b = ScriptedBackend(rules=[(r"Write at most|Name what|Merge them", TIP_REPLY),
                               (r"one sentence", "I wandered; next time read first.")])
    gen = TipGenerator(b)
    log = EpisodeLog(tmp_path / "log.jsonl")
    s1 = run_own_experience(envs, "tips", b, trials=2, tipgen=gen, log=log)
    assert len(s1["trajectories"]) == 2
    assert s1["trajectories"][0][0].memory == [] and len(s1["trajectories"][1][0].memory) == 3
    prov = s1["memories"][1].provenance()
    assert prov[0]["source"] == "self" and prov[0]["episodes"] == 1
    ref = run_own_experience(envs, "reflexion", b, trials=2, tipgen=gen)
    assert ref["trajectories"][1][0].memory == ["I wandered; next time read first."]
    raw = run_own_experience(envs, "raw", b, trials=2)
    assert raw["trajectories"][1][0].memory[0].startswith("1. > ")
    s2 = run_expert(envs, b, trials=1, tipgen=gen, log=log)
    assert s2["memories"][0].tips[0].source == "expert"
    assert s2["trajectories"][0][0].memory  # expert tips present from trial 0
    s3 = run_zero_shot(envs[:1], envs[1:], b, train_trials=1, tipgen=gen, log=log)
    assert s3["tips"].tips[0].source == "consolidate" and len(s3["test_tips"]) == 1
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {r["scenario"] for r in rows} == {"S1", "S2", "S3-train", "S3-test",
                                             "S3-test-none"}


@needs_tw
def test_free_generation_matching_and_fallback(games):
    envs = _envs(games[:1], steps=4)
    replies = iter(["I think: go east", "garbage output", "> LOOK", "inventory please"])
    b = ScriptedBackend(default="")
    b.chat = lambda msgs, cfg: [type("C", (), {"text": next(replies)})()]
    tr = run_episodes(envs, "none", b, actor=ActorConfig(mode="generate"))[0]
    hows = [s.how for s in tr.steps]
    assert "fallback" in hows and tr.fallback_rate > 0 and tr.invalid_rate >= tr.fallback_rate
    assert all(s.raw for s in tr.steps)


@needs_tw
def test_backend_failure_keeps_episode_log(games, tmp_path):
    envs = _envs(games, steps=6)
    calls = {"n": 0}

    class Flaky(ScriptedBackend):
        def score(self, prefix, conts):
            calls["n"] += 1
            if calls["n"] > 3:
                raise BackendError("server gave up after 5 attempts")
            return super().score(prefix, conts)

    log = EpisodeLog(tmp_path / "ep.jsonl")
    with pytest.raises(EpisodeError) as ei:
        run_own_experience(envs, "none", Flaky(), trials=1, log=log)
    rows = [json.loads(x) for x in (tmp_path / "ep.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("gave up" in r["error"] for r in rows if not r["won"])
    assert sum(len(r["steps"]) for r in rows) >= 1
    assert ei.value.trajectories[0].steps == [] or ei.value.trajectories[0].steps[0].action


@needs_tw
def test_local_backend_scoring_actor(games):
    from jaxlm.core import MODELS, init
    from jaxlm.llm.local import ByteTokenizer, LocalBackend

    cfg = MODELS.get("llama-20m_test")  # max_seq_len 128: too short -> clear error
    small = LocalBackend(cfg=cfg, params=init(jax.random.PRNGKey(0), cfg),
                         tokenizer=ByteTokenizer())
    with pytest.raises(ValueError, match="context"):
        run_episodes(_envs(games[:1], 2), "none", small)


# ----------------------------------------------------------------------------- episode memo
class _Counting(ScriptedBackend):
    """A scripted scorer that counts the score requests it answers."""

    def __init__(self, **kw):
        super().__init__(scorer=_oracle_scorer, **kw)
        self.requests = 0

    def score(self, prefix, conts):
        self.requests += 1
        return super().score(prefix, conts)


def _same_play(a, b):
    """Two trajectories equal in everything played (labels aside)."""
    keep = lambda t: {k: v for k, v in t.to_dict().items()  # noqa: E731
                      if k not in ("trial", "method", "reused", "memory")}
    return keep(a) == keep(b)


@needs_tw
def test_episode_memo_reuses_identical_episodes_and_equals_a_recomputation(games):
    from jaxlm.agents.tips import EpisodeMemo

    envs = _envs(games, steps=6)
    tips = [oracle_tips(e.walkthrough) if e.reset() else [] for e in envs]
    b = _Counting()
    memo = EpisodeMemo()
    first = run_episodes(envs, "oracle_tips", b, tips, memo=memo, trial=0)
    n = b.requests
    assert n > 0 and memo.stats["episodes_played"] == 2 and not any(t.reused for t in first)
    # same key (another method with the same guidance text and title, another trial): reused
    again = run_episodes(envs, "tips", b, tips, memo=memo, trial=3)
    assert b.requests == n and memo.stats["episodes_reused"] == 2
    assert all(t.reused and t.trial == 3 and t.method == "tips" for t in again)
    fresh = run_episodes(envs, "tips", _Counting(), tips)  # no memo: a recomputation
    assert all(_same_play(x, y) for x, y in zip(again, fresh, strict=True))
    assert all(_same_play(x, y) for x, y in zip(first, again, strict=True))
    assert memo.stats["actor_steps_reused"] == sum(t.n_steps for t in first)


@needs_tw
def test_episode_memo_recomputes_when_anything_changes(games):
    from jaxlm.agents.tips import EpisodeMemo

    envs = _envs(games, steps=5)
    tips = [["Read the cookbook first."], ["Go east first."]]
    b = _Counting()
    memo = EpisodeMemo()
    run_episodes(envs, "tips", b, tips, memo=memo)
    played = memo.stats["episodes_played"]

    def replays(**kw):
        before = memo.stats["episodes_played"]
        args = dict(envs=envs, method="tips", backend=b, memories=tips)
        args.update(kw)
        run_episodes(args.pop("envs"), args.pop("method"), args.pop("backend"),
                     args.pop("memories"), memo=memo, **args)
        return memo.stats["episodes_played"] - before

    assert replays() == 0 and memo.stats["episodes_played"] == played
    # one changed tip string: only that game's episode is played again
    assert replays(memories=[["Read the cookbook first!"], tips[1]]) == 1
    assert replays(method="reflexion") == 2  # same lines, another title in the prompt
    assert replays(method="none") == 2  # no guidance at all
    assert replays(actor=ActorConfig(loop_penalty=5.0)) == 2
    assert replays(actor=ActorConfig(max_actions=3)) == 2
    assert replays(backend=_Counting()) == 2  # another backend with no fingerprint
    assert replays(envs=_envs(games, steps=4)) == 2  # another step limit
    assert replays(envs=_envs(games, steps=5)) == 0  # a fresh env on the same game file
    # stochastic policies: the seed is part of the key
    assert replays(method="random", seed=1) == 2
    assert replays(method="random", seed=1) == 0
    assert replays(method="random", seed=2) == 2
    # sampled generation is never reused
    gen = ActorConfig(mode="generate", gen=GenConfig(max_tokens=4, temperature=0.7))
    assert replays(actor=gen) == 2 and replays(actor=gen) == 2


@needs_tw
def test_run_suite_plays_identical_episodes_once(games):
    from jaxlm.agents.tips import EpisodeMemo, run_suite

    envs = _envs(games, steps=5)
    b = ScriptedBackend(scorer=_oracle_scorer,
                        rules=[(r"Write at most|Name what|Merge them", TIP_REPLY),
                               (r"one sentence", "I wandered; next time read first.")])
    memo = EpisodeMemo()
    r = run_suite(envs, b, methods=("none", "tips", "oracle_tips"), trials=2,
                  tipgen=TipGenerator(b), memo=memo)
    # none trial 1, tips trial 0 (no tips yet) and oracle trial 1 are reuses: 3 x 2 games
    assert r["memo"]["episodes_reused"] == 6 and r["memo"]["episodes_played"] == 6
    r2 = run_suite(envs, b, methods=("none", "tips", "oracle_tips"), trials=2,
                   tipgen=TipGenerator(b), memo=memo, seed=1)
    # another seed: the scripted tips do not depend on it, so every episode is a reuse
    assert r2["memo"]["episodes_played"] == 0 and r2["memo"]["episodes_reused"] == 12
    assert [x["norm_score"] for x in r["summary"]] == [x["norm_score"] for x in r2["summary"]]


@needs_tw
def test_env_fingerprint_follows_file_and_settings(games):
    a, b = _envs(games[:1], 5) + _envs(games[:1], 5)
    assert a.fingerprint() == b.fingerprint()
    assert _envs(games[:1], 6)[0].fingerprint() != a.fingerprint()
    assert _envs(games[1:], 5)[0].fingerprint() != a.fingerprint()


def test_backend_fingerprints(tmp_path):
    from jaxlm.core import MODELS, init
    from jaxlm.llm.local import LocalBackend

    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(0), cfg)
    one = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer())
    two = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer())
    assert one.fingerprint() == two.fingerprint()
    # one weight changed slightly -> another fingerprint
    bumped = jax.tree.map(lambda x: x, params)
    leaf = bumped["layers"][0]["attn"]["wq"]
    bumped["layers"][0]["attn"]["wq"] = leaf.at[0, 0, 0].add(1e-3 * (abs(float(leaf[0, 0, 0]))
                                                                     + 1))
    assert one.with_params(bumped).fingerprint() != one.fingerprint()
    other_tok = LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(offset=3))
    assert other_tok.fingerprint() != one.fingerprint()
    rec = ReplayBackend(tmp_path / "c.jsonl", inner=one)
    assert rec.fingerprint() == one.fingerprint()
    rec.score("hello", ["a"])
    assert ReplayBackend(tmp_path / "c.jsonl").fingerprint() is None
