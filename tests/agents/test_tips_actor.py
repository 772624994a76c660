"""The diagnosed actor: scoring rules (calib/pmi consistent with the per-step diagnosis
logs), loop breaking, expert labels, the Choice-constrained generation actor, tips under
a JSON schema, and the diagnosis statistics."""

import hashlib
import json

import numpy as np
import pytest

from jaxlm.agents.textworld_env import GameSpec, TextWorldEnv, make_game, textworld_available
from jaxlm.agents.tips import (
    ActorConfig,
    TipGenerator,
    room_of,
    run_episodes,
    tips_from_json,
    tips_schema,
)
from jaxlm.llm import GenConfig, ScriptedBackend
from jaxlm.llm.base import Completion

pytestmark = pytest.mark.filterwarnings("ignore:.*not fully supported")


def test_actor_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mode"):
        ActorConfig(mode="beam")
    with pytest.raises(ValueError, match="norm"):
        ActorConfig(norm="max")
    with pytest.raises(ValueError, match="loop_penalty"):
        ActorConfig(loop_penalty=-1.0)


def test_room_of():
    assert room_of("bla\n-= Kitchen =-\nyou see\n-= Attic =-\n") == "Attic"
    assert room_of("You are carrying nothing.", "Attic") == "Attic"


def test_tips_schema_and_json_parsing():
    from jaxlm.structured.constraints import check_schema

    check_schema(tips_schema(4))  # only keywords the token automaton enforces
    assert tips_schema(4)["properties"]["tips"]["maxItems"] == 4
    assert tips_from_json('{"tips": ["a b c", "d e f"]}') == "a b c\nd e f"
    assert tips_from_json('{"tips": "a b c"}') is None
    assert tips_from_json("not json") is None and tips_from_json('["x"]') is None


def test_tip_generator_under_schema_sends_response_format_and_parses():
    seen = []

    class B(ScriptedBackend):
        def chat(self, messages, cfg=GenConfig()):
            seen.append(cfg)
            if cfg.response_format is None:
                return [Completion("I wandered; next time read first.", "stop", 1, 1)]
            return [Completion(json.dumps({"tips": ["Read the cookbook before cooking.",
                                                    "Open closed containers to find items."]}),
                               "stop", 1, 1)]

    gen = TipGenerator(B(), max_tips=3, schema=True)
    from jaxlm.agents.tips import Trajectory

    tr = Trajectory("g", 0, "tips", goal="cook")
    tips = gen.from_self(tr, [])
    assert tips == ["Read the cookbook before cooking.", "Open closed containers to find items."]
    rf = seen[-1].response_format
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == tips_schema(3, 160)
    assert gen.stats["parse_failures"] == 0
    assert gen.reflect(tr).startswith("I wandered")  # reflections stay free text
    assert seen[-1].response_format is None

    class Bad(B):
        def chat(self, messages, cfg=GenConfig()):
            return [Completion('{"tips": 3}', "stop", 1, 1)]

    gen = TipGenerator(Bad(), schema=True)
    assert gen.from_self(tr, ["keep me please"]) == ["keep me please"]
    assert gen.stats["parse_failures"] == 1


def test_step_stats_counts_rule_agreement():
    from experiments.tips.diagnose import rule_values, step_stats

    d = {"commands": ["go east", "look", "take coin"], "tokens": [2, 1, 2],
         "sum": [-3.0, -1.0, -2.5], "neutral": [-5.0, -0.5, -3.0],
         "calib": [-2.0, -3.0, -4.0], "repeats": [0, 1, 0]}
    rows = [{"steps": [{"diag": d, "expert": "go east", "action": "look"},
                       {"diag": d, "expert": "take coin", "action": "go east"}]}]
    st = step_stats(rows)
    # sum -> look; mean -> look (-1 vs -1.5, -1.25); pmi -> go east (2.0); calib -> look (2.0)
    assert np.argmax(rule_values(d, "pmi")) == 0 and np.argmax(rule_values(d, "calib")) == 1
    assert st["agree_sum"] == 0.0 and st["agree_pmi"] == 0.5 and st["agree_calib"] == 0.0
    assert st["chance"] == pytest.approx(1 / 3) and st["chosen_was_repeat"] == 0.5
    assert st["expert_tokens"] == 2.0 and st["tokens_sum"] == 1.0


# ----------------------------------------------------------------------------- with games
@pytest.fixture(scope="module")
def games(tmp_path_factory):
    if not textworld_available():
        pytest.skip("textworld is not installed (pip install -e '.[agents]')")
    cache = tmp_path_factory.getbasetemp() / "tw_shared_games"
    return [make_game(GameSpec("coin_collector", 2, 11), cache),
            make_game(GameSpec("cooking", 1, 5), cache)]


_OPEN: list = []


@pytest.fixture(scope="module", autouse=True)
def _close_envs():
    yield
    while _OPEN:
        _OPEN.pop().close()


def _envs(games, steps=8):
    envs = [TextWorldEnv(p, max_steps=steps, hide_objective=True) for p in games]
    _OPEN.extend(envs)
    return envs


def _hash_scorer(prefix, cont):
    """Deterministic pseudo-random log-probs that depend on the whole prefix."""
    h = hashlib.sha256((prefix + "\x00" + cont).encode()).digest()
    return -10.0 * int.from_bytes(h[:4], "little") / 2**32


def test_expert_labels_follow_the_walkthrough(games):
    tr = run_episodes(_envs(games[:1]), "walkthrough", None)[0]
    assert tr.won and all(s.expert == s.action for s in tr.steps)
    assert tr.expert_agreement == 1.0 and tr.repeat_rate == 0.0
    assert all(s.n_admissible >= 1 and s.room for s in tr.steps)


@pytest.mark.parametrize("norm", ["sum", "mean", "pmi", "calib"])
def test_online_choice_matches_the_logged_rule(games, norm):
    from experiments.tips.diagnose import rule_values

    b = ScriptedBackend(scorer=_hash_scorer)
    tr = run_episodes(_envs(games, steps=5), "none", b,
                      actor=ActorConfig(norm=norm, diag=True, prompt="window"))
    n = 0
    for t in tr:
        for s in t.steps:
            d = s.diag
            assert len(d["commands"]) == len(d["sum"]) == len(d["neutral"]) == len(d["calib"])
            assert d["commands"][int(np.argmax(rule_values(d, norm)))] == s.action
            n += 1
    assert n >= 5
    # the three prompts differ, so pmi/calib are not the plain sum
    d = tr[1].steps[0].diag
    assert not np.allclose(d["neutral"], d["sum"]) and not np.allclose(d["calib"], d["sum"])


def test_loop_penalty_breaks_repeats(games):
    const = ScriptedBackend(scorer=lambda p, c: -1.0 if c == "look" else -5.0 - len(c))
    plain = run_episodes(_envs(games[:1], 6), "none", const)[0]
    assert [s.action for s in plain.steps] == ["look"] * 6 and plain.repeat_rate == 5 / 6
    tr = run_episodes(_envs(games[:1], 6), "none", const,
                      actor=ActorConfig(loop_penalty=1000.0))[0]
    first_room = [s for s in tr.steps if s.room == tr.steps[0].room]
    k = min(len(first_room), tr.steps[0].n_admissible)
    acts = [s.action for s in first_room[:k]]
    assert len(set(acts)) == len(acts)  # every command of the room before any repeat
    assert tr.repeat_rate < plain.repeat_rate


def test_choice_actor_offers_the_admissible_commands(games):
    offered = []

    class B(ScriptedBackend):
        def chat(self, messages, cfg=GenConfig()):
            rf = cfg.response_format
            assert rf["type"] == "choice"
            offered.append(list(rf["choice"]))
            return [Completion(rf["choice"][-1], "stop", 1, 1)]

    envs = _envs(games[:1], 4)
    tr = run_episodes(envs, "none", B(), actor=ActorConfig(mode="choice"))[0]
    assert all(s.how == "choice" and s.valid for s in tr.steps)
    assert offered[0] == TextWorldEnv(games[0]).reset().admissible
    offered.clear()
    tr = run_episodes(envs, "none", B(), actor=ActorConfig(mode="choice", loop_penalty=1.0))[0]
    # loop breaking: a command already taken in this room is not offered again
    for s, opts in zip(tr.steps, offered):
        earlier = {(x.room, x.action) for x in tr.steps[: tr.steps.index(s)]}
        assert all((s.room, c) not in earlier for c in opts) or len(opts) == s.n_admissible


def test_paired_differences_average_seeds_then_bootstrap_games():
    from experiments.repro_introspective_tips import paired

    rows = []
    for seed, (a1, a2) in enumerate([(1.0, 0.5), (0.0, 0.5)]):
        rows += [{"scenario": "S1", "method": "tips", "trial": 1, "game": "g1", "norm_score": a1},
                 {"scenario": "S1", "method": "tips", "trial": 1, "game": "g2", "norm_score": a2},
                 {"scenario": "S1", "method": "none", "trial": 1, "game": "g1", "norm_score": 0.0},
                 {"scenario": "S1", "method": "none", "trial": 1, "game": "g2",
                  "norm_score": 0.25 * seed}]
    m, lo, hi, n, ma, mb = paired(rows, ("S1", "tips", 1), ("S1", "none", 1))
    # per game over seeds: g1 0.5 - 0.0, g2 0.5 - 0.125 -> mean 0.4375
    assert n == 2 and m == pytest.approx(0.4375) and lo <= m <= hi
    assert ma == pytest.approx(0.5) and mb == pytest.approx(0.0625)
    assert np.isnan(paired(rows, ("S2", "tips", 0), ("S1", "none", 1))[0])


def test_heldout_evaluate_reports_paired_ci(games):
    from experiments.tips.heldout import evaluate

    # a scorer that always prefers the expert's walkthrough command "go east"/"take coin"
    b = ScriptedBackend(scorer=lambda p, c: 0.0 if c in ("go east", "take coin") else -9.0)
    res = evaluate(b, _envs(games[:1], 6), {"norm": "sum", "prompt": "window", "history": 0},
                   random_seeds=range(3))
    assert res["actor_per_game"] == [1.0] and res["n_games"] == 1
    assert res["diff"] == pytest.approx(1.0 - res["random_per_game"][0])
    assert res["actor_stats"]["expert_agreement"] == 1.0


@pytest.mark.parametrize("kw", [{"prompt": "window", "history": 1},
                                {"prompt": "window", "history": 0},
                                {"prompt": "append", "history": 1, "history_max": 2}])
def test_expert_examples_are_the_prompts_the_actor_scores(games, kw):
    """Fine-tuning pairs (expert_examples) hold exactly the prompts run_episodes scores in
    the same states: an actor that follows the walkthrough sees the same messages."""
    from jaxlm.agents.tips import expert_examples

    envs = _envs(games, 12)
    actor = ActorConfig(norm="sum", **kw)
    examples = expert_examples(envs, actor)
    wts = {e.name: list(e.walkthrough) for e in envs}
    seen = []

    class Follow(ScriptedBackend):
        def score_many(self, requests):
            out = []
            for msgs, adm in requests:
                seen.append(msgs)
                out.append(self.score(msgs, adm))
            return out

    want = {(x["game"], x["step"]): x for x in examples}
    step_of = {e.name: 0 for e in envs}

    # play each game alone so the scorer knows which walkthrough step it is at
    for e in envs:
        # the walkthrough command of the game's current step scores highest
        b = Follow(scorer=lambda t, c, g=e.name: 0.0 if step_of[g] < len(wts[g]) and c ==
                   wts[g][step_of[g]] else -9.0)
        seen.clear()
        orig = b.score_many

        def counting(requests, g=e.name, orig=orig):
            r = orig(requests)
            step_of[g] += 1
            return r

        b.score_many = counting
        tr = run_episodes([e], "none", b, actor=actor)[0]
        assert tr.won and [s.action for s in tr.steps] == wts[e.name]
        assert len(seen) == len(wts[e.name])
        for k, msgs in enumerate(seen):
            ex = want[(e.name, k)]
            assert ex["messages"] == msgs and ex["expert"] == wts[e.name][k]
            assert ex["expert"] in ex["admissible"]
    assert len(examples) == sum(len(w) for w in wts.values())
    if kw["prompt"] == "window" and kw["history"]:
        assert "> " + wts[envs[0].name][0] in json.dumps(want[(envs[0].name, 1)]["messages"])


def test_pooled_arm_averages_seeds_per_game_and_maps_log_arms():
    from experiments.repro_introspective_tips import pooled_arm

    rows = []
    for seed in range(3):
        for g, base in (("g1", 1.0), ("g2", 0.0)):
            rows.append({"scenario": "S3-test", "method": "tips", "trial": 0, "game": g,
                         "norm_score": base if seed else 0.5, "won": base == 1.0 and seed > 0,
                         "n_steps": 3 + seed, "invalid_rate": 0.0})
    r = pooled_arm(rows, "S3", "consolidated_tips", 0)
    # g1: (0.5 + 1 + 1) / 3, g2: (0.5 + 0 + 0) / 3 -> mean 0.5
    assert r["n"] == "2 x 3" and r["trial"] == 1 and r["norm score"] == pytest.approx(0.5)
    assert r["win rate"] == pytest.approx(2 / 6) and r["steps"] == pytest.approx(4.0)
    assert pooled_arm(rows, "S2", "expert_tips", 0) is None
