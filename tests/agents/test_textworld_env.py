"""TextWorld env wrapper on two tiny generated games (skipped without textworld)."""

import pytest

from jaxlm.agents.textworld_env import (
    GAME_SETS,
    GameSpec,
    TextWorldEnv,
    clean_observation,
    game_set,
    make_game,
    textworld_available,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*not fully supported")

needs_tw = pytest.mark.skipif(
    not textworld_available(),
    reason="textworld is not installed (pip install -e '.[agents]' or textworld==1.7.0)",
)


@pytest.fixture(scope="session")
def tw_games(tmp_path_factory):
    if not textworld_available():
        pytest.skip("textworld is not installed (pip install -e '.[agents]')")
    cache = tmp_path_factory.getbasetemp() / "tw_shared_games"  # shared by both modules
    return {"coin": make_game(GameSpec("coin_collector", 2, 11), cache),
            "cook": make_game(GameSpec("cooking", 1, 5), cache), "cache": cache}


def test_specs_and_sets():
    s = GameSpec("coin_collector", 3, 7)
    assert s.name == "coin_collector-L3-s7" and s.tw_make_args() == ["--level", "3"]
    assert GameSpec("cooking", 2, 0).tw_make_args()[-2:] == ["--cut", "--cook"]
    with pytest.raises(ValueError, match="level"):
        GameSpec("treasure_hunter", 99)
    with pytest.raises(ValueError, match="challenge"):
        GameSpec("zork")
    specs = game_set("coin_easy", 7, seed=1)
    assert [x.level for x in specs] == [1, 2, 3, 4, 5, 1, 2]
    assert len({x.seed for x in specs}) == 7
    with pytest.raises(ValueError, match="unknown game set"):
        game_set("nope", 2)
    # every named set builds valid specs; the harder families have their levels
    for name in GAME_SETS:
        assert len(game_set(name, 6, seed=2)) == 6
    assert [x.level for x in game_set("treasure_mid", 5)] == [5, 6, 7, 8, 5]
    assert {x.challenge for x in game_set("treasure_mid", 4)} == {"treasure_hunter"}
    assert [x.level for x in game_set("coin_long", 5)] == [6, 7, 8, 9, 10]
    assert [x.seed for x in game_set("coin_distractor_long", 3, seed=4)] == [4000, 4001, 4002]


def test_clean_observation():
    raw = ("\n  ____  \n |    \\ \n\nDo this: go east then take coin.\n\n-= Attic =-\nA room."
           "\n\n>                     -= Attic =-0/1")
    out = clean_observation(raw, "Do this: go east then take coin.", "Find the coin.")
    assert out == "Find the coin.\n\n-= Attic =-\nA room."


@needs_tw
def test_walkthrough_wins_and_cache(tw_games):
    env = TextWorldEnv(tw_games["cook"], max_steps=20)
    o = env.reset()
    assert "cookbook" in o.text.lower() and "0/1" not in o.text and o.max_score == 3
    assert "examine cookbook" in env.walkthrough and "look" in o.admissible
    for i, cmd in enumerate(env.walkthrough):
        o = env.step(cmd)
        assert o.valid or cmd not in env.walkthrough[:0]
    assert o.won and o.done and o.score == o.max_score == 3
    # cached: a second make_game returns the same file without regenerating
    again = make_game(GameSpec("cooking", 1, 5), tw_games["cache"])
    assert again == tw_games["cook"]


@needs_tw
def test_invalid_steps_and_step_cap(tw_games):
    env = TextWorldEnv(tw_games["coin"], max_steps=3, hide_objective=True)
    o = env.reset()
    assert o.text.startswith("Your task: find the coin") and "move" not in o.text.split("\n")[0]
    assert "south" in env.objective or "north" in env.objective or "east" in env.objective \
        or "west" in env.objective  # the hidden objective revealed the route
    o = env.step("dance wildly")
    assert not o.valid and o.moves == 0 and not o.done
    o = env.step("look")
    assert o.valid and not o.done
    o = env.step("look")
    assert o.done and not o.won  # 3 env.step calls used, invalid one included
    with pytest.raises(ValueError):
        env.step("  ")
