"""TextWorld game sets (made offline with the ``tw-make`` challenges) and a gym-style env.

Games are generated once from a ``GameSpec`` (challenge, level, seed, flags) into a
cache folder and reused. Generation runs TextWorld's challenge makers in-process:
the same ``CHALLENGES[name].make`` + ``compile_game`` calls as the ``tw-make`` CLI,
with the same arguments, without paying its start-up cost per game
(``use_cli=True`` shells out to ``tw-make`` instead).

``TextWorldEnv`` wraps ``textworld.gym`` with the facts that matter for agents:
score is cumulative, ``done`` also fires when ``max_steps`` env.step calls (invalid
commands included) are used, the walkthrough comes from ``extra.walkthrough``.
Observations are cleaned (ASCII banner, trailing ``-= Room =-score/moves`` status
line and end-of-game menu removed). ``hide_objective`` replaces route-revealing
objective text (coin collector spells the route out) by a generic goal.

TextWorld is an optional dependency (the ``agents`` extra); importing this module
does not import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

CHALLENGES = ("coin_collector", "treasure_hunter", "cooking", "simple")
# GATA-style cooking levels (flag sets are a jaxlm choice; see the spec).
COOKING_LEVELS = {
    1: ("--recipe", "1", "--take", "1", "--go", "1"),
    2: ("--recipe", "1", "--take", "1", "--go", "1", "--cut", "--cook"),
    3: ("--recipe", "1", "--take", "1", "--go", "9", "--open"),
    4: ("--recipe", "3", "--take", "3", "--go", "6", "--open", "--cut", "--cook", "--drop"),
}
SIMPLE_LEVELS = {
    1: ("--rewards", "dense", "--goal", "detailed"),
    2: ("--rewards", "balanced", "--goal", "brief"),
    3: ("--rewards", "sparse", "--goal", "none"),
}
# Only coin collector's objective spells out the route; the other challenges' objectives
# name what to do, not how, so ``hide_objective`` leaves them unchanged.
GENERIC_GOALS = {
    "coin_collector": "Your task: find the coin and take it.",
}
GAME_SETS = ("coin_easy", "coin_long", "coin_distractor", "coin_distractor_long",
             "treasure_easy", "treasure_mid", "cooking_l1", "cooking_l2", "mixed_easy")
DEFAULT_CACHE = pathlib.Path(os.environ.get("JAXLM_TW_CACHE", "~/.cache/jaxlm/textworld"))


def require_textworld():
    """Imports textworld or raises a clear ImportError naming the install command."""
    try:
        import textworld  # noqa: F401
        import textworld.gym  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TextWorld is not installed; install the agents extra: pip install -e '.[agents]' "
            "(or pip install textworld==1.7.0)"
        ) from e
    import textworld

    return textworld


def textworld_available() -> bool:
    try:
        require_textworld()
        return True
    except ImportError:
        return False


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """One generated game.

    Attributes:
        challenge: one of CHALLENGES.
        level: coin_collector 1..300, treasure_hunter 1..30, cooking 1..4 (COOKING_LEVELS),
            simple 1..3 (SIMPLE_LEVELS).
        seed: the tw-make ``--seed``.
        extra: further tw-make flags (e.g. ("--split", "test") for cooking).
    """

    challenge: str
    level: int = 1
    seed: int = 0
    extra: tuple[str, ...] = ()

    def __post_init__(self):
        if self.challenge not in CHALLENGES:
            raise ValueError(f"GameSpec.challenge must be one of {CHALLENGES}, got "
                             f"{self.challenge!r}")
        ranges = {"coin_collector": (1, 300), "treasure_hunter": (1, 30),
                  "cooking": (1, max(COOKING_LEVELS)), "simple": (1, max(SIMPLE_LEVELS))}
        lo, hi = ranges[self.challenge]
        if not lo <= self.level <= hi:
            raise ValueError(f"GameSpec.level for {self.challenge} must be in [{lo}, {hi}], "
                             f"got {self.level}")

    @property
    def name(self) -> str:
        extra = ("-" + "_".join(x.strip("-") for x in self.extra)) if self.extra else ""
        return f"{self.challenge}-L{self.level}-s{self.seed}{extra}"

    def tw_make_args(self) -> list[str]:
        """The tw-make arguments after the challenge name."""
        if self.challenge == "cooking":
            args = list(COOKING_LEVELS[self.level])
        elif self.challenge == "simple":
            args = list(SIMPLE_LEVELS[self.level])
        else:
            args = ["--level", str(self.level)]
        return [*args, *self.extra]


def game_set(name: str, n_games: int, seed: int = 0) -> list[GameSpec]:
    """Named, seeded game sets.

    * ``coin_easy``: coin collector levels 1..5 (quest length = level), cycling levels.
    * ``coin_long``: coin collector levels 6..10 (longer quests, no distractors).
    * ``coin_distractor``: coin collector levels 101..103 (distractor rooms).
    * ``coin_distractor_long``: coin collector levels 104..108 (quest length 4..8 with
      distractor rooms).
    * ``treasure_easy``: treasure hunter levels 1..5.
    * ``treasure_mid``: treasure hunter levels 5..8 (quest length 3..4 in 5 rooms; levels
      9-10, length 5, fail to generate for some seeds).
    * ``cooking_l1`` / ``cooking_l2``: GATA-style cooking levels 1 / 2.
    * ``mixed_easy``: alternating coin_easy, cooking_l1 and treasure_easy games.
    """
    if n_games < 1:
        raise ValueError(f"game_set: n_games must be >= 1, got {n_games}")
    specs = []
    for i in range(n_games):
        s = seed * 1000 + i
        if name == "coin_easy":
            specs.append(GameSpec("coin_collector", 1 + i % 5, s))
        elif name == "coin_long":
            specs.append(GameSpec("coin_collector", 6 + i % 5, s))
        elif name == "coin_distractor":
            specs.append(GameSpec("coin_collector", 101 + i % 3, s))
        elif name == "coin_distractor_long":
            specs.append(GameSpec("coin_collector", 104 + i % 5, s))
        elif name == "treasure_easy":
            specs.append(GameSpec("treasure_hunter", 1 + i % 5, s))
        elif name == "treasure_mid":
            specs.append(GameSpec("treasure_hunter", 5 + i % 4, s))
        elif name in ("cooking_l1", "cooking_l2"):
            specs.append(GameSpec("cooking", int(name[-1]), s))
        elif name == "mixed_easy":
            kind = i % 3
            specs.append([GameSpec("coin_collector", 1 + (i // 3) % 5, s),
                          GameSpec("cooking", 1, s),
                          GameSpec("treasure_hunter", 1 + (i // 3) % 5, s)][kind])
        else:
            raise ValueError(f"unknown game set {name!r}; use one of {', '.join(GAME_SETS)}")
    return specs


def make_game(spec: GameSpec, cache_dir: str | os.PathLike | None = None, *,
              use_cli: bool = False) -> pathlib.Path:
    """Generates ``spec`` into ``cache_dir`` (once) and returns the .z8 path."""
    cache = pathlib.Path(cache_dir or DEFAULT_CACHE).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{spec.name}.z8"
    if out.exists() and out.with_suffix(".json").exists():
        return out
    chal = f"tw-{spec.challenge}"
    if use_cli:
        exe = shutil.which("tw-make")
        if exe is None:
            raise FileNotFoundError("tw-make is not on PATH; install textworld or use_cli=False")
        cmd = [exe, chal, *spec.tw_make_args(), "--seed", str(spec.seed), "--output", str(out),
               "-f", "--silent"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out
    tw = require_textworld()
    import textworld.challenges
    import textworld.generator

    _, make, add_args = textworld.challenges.CHALLENGES[chal]
    parser = argparse.ArgumentParser(prog=chal)
    add_args(parser)
    settings = vars(parser.parse_args(spec.tw_make_args()))
    opts = tw.GameOptions()
    opts.seeds = spec.seed
    opts.path = str(out)
    opts.file_ext = ".z8"
    opts.force_recompile = True
    game = make(settings=settings, options=opts)
    path = textworld.generator.compile_game(game, opts)
    return pathlib.Path(path)


def make_games(specs: Sequence[GameSpec], cache_dir=None, progress=None) -> list[pathlib.Path]:
    """``make_game`` for each spec (cached); ``progress`` is an optional tqdm-like bar."""
    paths = []
    for s in specs:
        paths.append(make_game(s, cache_dir))
        if progress is not None:
            progress.update(1)
    return paths


# --------------------------------------------------------------------------- observations
_STATUS = re.compile(r"\s*>?\s*-=\s*[^=\n]*?\s*=-\s*\d+/\d+\s*$")
_END_MENU = re.compile(r"(\*\*\* The End \*\*\*)?\s*(You scored [^\n]*)?\s*Would you like to "
                       r"RESTART.*$", re.S)
_ART_CHARS = set(" _|\\$/<>-")


def clean_observation(text: str, objective: str | None = None, goal: str | None = None) -> str:
    """Strips the banner, the status line, prompt marks and the end menu; optionally
    replaces the objective text with ``goal``."""
    text = _END_MENU.sub("", text or "")
    text = _STATUS.sub("", text)
    lines = [ln for ln in text.splitlines()
             if not (ln.strip() and set(ln) <= _ART_CHARS and len(ln.strip()) > 3)]
    text = "\n".join(lines)
    if objective and goal is not None and objective in text:
        text = text.replace(objective, goal)
    text = re.sub(r"^\s*>\s*$", "", text, flags=re.M)
    text = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text)
    return text.strip()


@dataclasses.dataclass
class Observation:
    """What the agent sees after reset/step."""

    text: str
    admissible: list[str]
    score: int
    max_score: int
    won: bool
    lost: bool
    done: bool
    moves: int
    valid: bool = True  # the last command was admissible
    policy: list[str] = dataclasses.field(default_factory=list)  # expert's remaining commands


class TextWorldEnv:
    """A gym-style episode over one generated game.

    Args:
        path: the .z8 game file.
        max_steps: env.step calls per episode (invalid commands count).
        hide_objective: replace the objective by a generic goal (see GENERIC_GOALS).
        challenge: which generic goal to use (default: parsed from the file name).
    """

    def __init__(self, path: str | os.PathLike, max_steps: int = 30,
                 hide_objective: bool = False, challenge: str | None = None):
        tw = require_textworld()
        import textworld.gym

        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"TextWorldEnv: no game at {self.path}; make it with "
                                    "make_game(GameSpec(...), cache_dir)")
        if max_steps < 1:
            raise ValueError(f"TextWorldEnv: max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.hide_objective = hide_objective
        self.challenge = challenge or next(
            (c for c in CHALLENGES if self.path.name.startswith(c)), "simple")
        infos = tw.EnvInfos(admissible_commands=True, score=True, max_score=True, won=True,
                            lost=True, moves=True, objective=True, policy_commands=True,
                            extras=["walkthrough"])
        env_id = textworld.gym.register_game(str(self.path), request_infos=infos,
                                             max_episode_steps=max_steps, asynchronous=False)
        self._env = textworld.gym.make(env_id)
        self.objective = ""
        self.walkthrough: list[str] = []
        self.steps = 0
        self._admissible: list[str] = []

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def goal(self) -> str:
        if self.hide_objective and self.challenge in GENERIC_GOALS:
            return GENERIC_GOALS[self.challenge]
        return self.objective

    def _obs(self, text: str, info: dict[str, Any], done: bool, valid: bool) -> Observation:
        self._admissible = sorted(info.get("admissible_commands") or [])
        return Observation(
            text=clean_observation(text, self.objective, self.goal),
            admissible=self._admissible, score=int(info.get("score") or 0),
            max_score=int(info.get("max_score") or 1), won=bool(info.get("won")),
            lost=bool(info.get("lost")), done=bool(done), moves=int(info.get("moves") or 0),
            valid=valid, policy=list(info.get("policy_commands") or []),
        )

    def reset(self) -> Observation:
        text, info = self._env.reset()
        self.objective = info.get("objective") or ""
        self.walkthrough = list(info.get("extra.walkthrough") or [])
        self.policy = list(info.get("policy_commands") or [])
        self.steps = 0
        return self._obs(text, info, False, True)

    def step(self, command: str) -> Observation:
        if not isinstance(command, str) or not command.strip():
            raise ValueError("TextWorldEnv.step: command must be a non-empty string")
        valid = command in self._admissible
        text, _, done, info = self._env.step(command)
        self.steps += 1
        return self._obs(text, info, done or self.steps >= self.max_steps, valid)

    def fingerprint(self) -> str:
        """A digest of everything that determines an episode on this env apart from the
        commands sent: the game files (.z8 and its .json/.ni siblings, by content), the
        step limit and the goal shown (``hide_objective``, ``challenge``). Computed once."""
        if getattr(self, "_fingerprint", None) is None:
            import hashlib

            h = hashlib.blake2b(digest_size=16)
            h.update(repr((self.max_steps, self.hide_objective, self.challenge)).encode())
            for ext in (".z8", ".json", ".ni"):
                f = self.path.with_suffix(ext)
                h.update(ext.encode() + (f.read_bytes() if f.exists() else b"<absent>"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def close(self) -> None:
        """Closes the game (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._env.close()
