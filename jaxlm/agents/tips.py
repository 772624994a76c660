"""Introspective Tips (Chen et al. 2023) on TextWorld: actor, tip generator, tip memory,
controls and the three scenarios.

* ``Actor`` turns (goal, tips/memory, last K steps, observation, admissible commands)
  into a chat prompt and picks a command, either by **scoring** every admissible
  command with the backend's log-probs (default for small models) or by **free
  generation** matched to an admissible command (exact / contains / fuzzy), with a
  counted fallback when nothing matches.
* ``run_episodes`` plays several games in lockstep so that one ``score_many`` call
  scores the admissible commands of every active game at once.
* ``TipGenerator`` writes <= N short, general tips from the agent's own trajectory
  (self), from an expert walkthrough next to the agent's trajectory (expert), or
  merges tip lists of several games (consolidate); ``TipMemory`` is **rewritten**
  on each update and keeps provenance (source, games, trial) and credit (episodes
  and wins while each tip was in the prompt).
* Methods (``METHODS``): ``none``; ``tips`` (the paper); ``raw`` (previous trajectory
  pasted instead of tips); ``reflexion`` (appended per-trial reflections);
  ``oracle_tips`` (template tips from the walkthrough: the ceiling of the tips
  pathway); ``random`` (random admissible command: floor); ``walkthrough`` (follows
  the walkthrough: ceiling).
* Scenarios: ``run_own_experience`` (S1), ``run_expert`` (S2), ``run_zero_shot`` (S3).
* ``EpisodeMemo``: an episode whose inputs (game, actor, guidance text, backend weights,
  and the seed for stochastic policies) equal an earlier one's is played once and reused.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxlm.llm.base import BackendError, GenConfig
from jaxlm.llm.helpers import bootstrap_ci, chat_many, match_action, rank_values, score_many

METHODS = ("none", "tips", "raw", "reflexion", "oracle_tips", "random", "walkthrough")
LLM_METHODS = ("none", "tips", "raw", "reflexion", "oracle_tips")
SYSTEM = "You are playing a text adventure game. Answer with exactly one valid action."


# --------------------------------------------------------------------------- records
@dataclasses.dataclass
class Step:
    """One env step: the command, what came back, and how the command was chosen."""

    action: str
    observation: str
    score: int
    valid: bool
    how: str  # score | choice | exact | contains | fuzzy | fallback | random | walkthrough
    raw: str = ""
    expert: str = ""  # the expert's next command from the state the action was taken in
    room: str = ""  # the room the action was taken in (last "-= Room =-" header seen)
    n_admissible: int = 0
    diag: dict[str, Any] | None = None  # ActorConfig.diag: every rule's value per command


@dataclasses.dataclass
class Trajectory:
    """One episode of one game."""

    game: str
    trial: int
    method: str
    goal: str = ""
    first_observation: str = ""
    steps: list[Step] = dataclasses.field(default_factory=list)
    score: int = 0
    max_score: int = 1
    won: bool = False
    lost: bool = False
    memory: list[str] = dataclasses.field(default_factory=list)  # tips/reflections in prompt
    error: str | None = None
    prompt_cuts: int = 0  # "append" prompts: times the history was cut (prompt re-encoded)
    reused: bool = False  # taken from an EpisodeMemo (an identical episode was played before)

    @property
    def norm_score(self) -> float:
        return self.score / max(self.max_score, 1)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def invalid_rate(self) -> float:
        return sum(not s.valid for s in self.steps) / max(len(self.steps), 1)

    @property
    def fallback_rate(self) -> float:
        return sum(s.how == "fallback" for s in self.steps) / max(len(self.steps), 1)

    @property
    def repeat_rate(self) -> float:
        """Fraction of steps that repeat a command already taken in the same room."""
        seen, rep = set(), 0
        for s in self.steps:
            rep += (s.room, s.action) in seen
            seen.add((s.room, s.action))
        return rep / max(len(self.steps), 1)

    @property
    def expert_agreement(self) -> float:
        """Fraction of steps (with a known expert command) that took the expert's command."""
        ks = [s for s in self.steps if s.expert]
        return sum(s.action == s.expert for s in ks) / max(len(ks), 1)

    def render(self, max_steps: int = 12, obs_chars: int = 160) -> str:
        """Numbered action/observation lines plus the outcome (for tip prompts)."""
        lines = []
        steps = self.steps[-max_steps:]
        off = len(self.steps) - len(steps)
        for i, s in enumerate(steps):
            obs = re.sub(r"\s+", " ", s.observation)[:obs_chars]
            lines.append(f"{off + i + 1}. > {s.action}\n   {obs}")
        outcome = "WON" if self.won else ("LOST" if self.lost else "did not finish")
        lines.append(f"Outcome: {outcome}, score {self.score}/{self.max_score} "
                     f"after {len(self.steps)} steps.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(norm_score=self.norm_score, invalid_rate=self.invalid_rate,
                 fallback_rate=self.fallback_rate, n_steps=self.n_steps,
                 repeat_rate=self.repeat_rate, expert_agreement=self.expert_agreement)
        return d


# --------------------------------------------------------------------------- memory
@dataclasses.dataclass
class Tip:
    text: str
    source: str  # self | expert | consolidate | oracle
    games: tuple[str, ...]
    trial: int
    version: int


def sanitize_tips(text: str, max_tips: int = 5, max_words: int = 20) -> list[str]:
    """Tip lines from model output: strips numbering/bullets, drops short or duplicate
    lines and prompt echoes, cuts each to ``max_words`` words; at most ``max_tips``."""
    out, seen = [], set()
    for ln in (text or "").splitlines():
        ln = re.sub(r"^\s*(?:tips?\s*:?\s*)?(?:\d+[.):]|[-*\u2022])?\s*", "", ln).strip()
        ln = ln.replace("**", "").strip("\"'` ")
        words = ln.split()
        if len(words) < 3 or not re.search(r"[a-zA-Z]", ln):
            continue
        low = ln.lower()
        if low.startswith(("here are", "here's", "here is", "tips:", "outcome:", "new tips",
                           "current tips")) or low.endswith(":"):
            continue
        ln = " ".join(words[:max_words])
        key = re.sub(r"\W+", " ", ln.lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(ln)
        if len(out) == max_tips:
            break
    return out


class TipMemory:
    """A bounded tip list, rewritten (not appended) on each update, with provenance.

    ``credit[text]`` counts episodes played and won while the tip was in the prompt.
    """

    def __init__(self, max_tips: int = 5):
        self.max_tips = max_tips
        self.tips: list[Tip] = []
        self.version = 0
        self.history: list[list[str]] = []
        self.credit: dict[str, dict[str, float]] = {}

    def texts(self) -> list[str]:
        return [t.text for t in self.tips]

    def rewrite(self, texts: Sequence[str], source: str, games: Sequence[str], trial: int
                ) -> None:
        old = {t.text: t for t in self.tips}
        self.version += 1
        new = []
        for x in list(dict.fromkeys(texts))[: self.max_tips]:
            # a tip kept verbatim keeps its original provenance
            new.append(old.get(x) or Tip(x, source, tuple(games), trial, self.version))
        self.tips = new
        self.history.append(self.texts())

    def record_outcome(self, traj: Trajectory) -> None:
        for t in self.texts():
            c = self.credit.setdefault(t, {"episodes": 0, "wins": 0, "score": 0.0})
            c["episodes"] += 1
            c["wins"] += int(traj.won)
            c["score"] += traj.norm_score

    def provenance(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.tips:
            c = self.credit.get(t.text, {"episodes": 0, "wins": 0, "score": 0.0})
            rows.append({"tip": t.text, "source": t.source, "games": list(t.games),
                         "trial": t.trial, "version": t.version, **c})
        return rows


def oracle_tips(walkthrough: Sequence[str]) -> list[str]:
    """Template tips from the walkthrough (the ceiling of the tips pathway)."""
    if not walkthrough:
        return []
    return ["Do exactly these actions in order: " + ", then ".join(walkthrough) + "."]


# --------------------------------------------------------------------------- tip generator
def tips_schema(max_tips: int = 5, max_chars: int = 120) -> dict[str, Any]:
    """JSON schema of a tip list: ``{"tips": [str, ...]}`` with 1..max_tips strings."""
    return {"type": "object",
            "properties": {"tips": {"type": "array", "minItems": 1, "maxItems": max_tips,
                                    "items": {"type": "string", "minLength": 8,
                                              "maxLength": max_chars}}},
            "required": ["tips"], "additionalProperties": False}


def tips_from_json(text: str) -> str | None:
    """The tip lines of a ``{"tips": [...]}`` reply joined by newlines (None if malformed)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    tips = obj.get("tips") if isinstance(obj, dict) else None
    if not isinstance(tips, list) or not all(isinstance(t, str) for t in tips):
        return None
    return "\n".join(tips)


class TipGenerator:
    """Writes tips with the backend's text tier (modes: self, expert, consolidate) and
    Reflexion-style reflections. Unusable model output leaves the tips unchanged and
    is counted in ``stats["parse_failures"]``.

    ``schema=True`` asks for the tips as JSON under ``tips_schema`` (``GenConfig.
    response_format``: enforced in the decode loop by local backends, passed to HTTP
    servers) instead of free lines; the prompts say so."""

    def __init__(self, backend: Any, max_tips: int = 5, max_words: int = 20,
                 cfg: GenConfig = GenConfig(max_tokens=96, temperature=0.0),
                 schema: bool = False):
        self.backend, self.max_tips, self.max_words, self.cfg = backend, max_tips, max_words, cfg
        self.schema, self.free_cfg = schema, cfg
        if schema:
            rf = {"type": "json_schema",
                  "json_schema": {"name": "tips", "schema": tips_schema(max_tips,
                                                                        8 * max_words)}}
            self.cfg = dataclasses.replace(cfg, response_format=rf, stop=(),
                                           max_tokens=max(cfg.max_tokens, 128))
        self.stats = {"calls": 0, "parse_failures": 0}

    def _ask(self, prompt: str) -> str:
        return self._ask_many([prompt])[0]

    def _ask_many(self, prompts: Sequence[str], tips: bool = True) -> list[str]:
        """One batched chat call (when the backend batches) for several prompts; ``tips``:
        the reply is a tip list (JSON under the schema when ``schema``)."""
        self.stats["calls"] += len(prompts)
        sys = {"role": "system", "content": "You write short, general advice for players of "
               "text adventure games."}
        if self.schema and tips:
            prompts = [p + '\nAnswer in JSON: {"tips": ["...", "..."]}' for p in prompts]
        msgs = [[sys, {"role": "user", "content": p}] for p in prompts]
        cfg = self.cfg if tips else self.free_cfg
        return [c[0].text for c in chat_many(self.backend, msgs, cfg)]

    def _parse(self, text: str, current: Sequence[str]) -> list[str]:
        if self.schema:
            text = tips_from_json(text) or ""
        tips = sanitize_tips(text, self.max_tips, self.max_words)
        if not tips:
            self.stats["parse_failures"] += 1
            return list(current)
        return tips

    def _current(self, current: Sequence[str]) -> str:
        return ("Current tips:\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(current))
                if current else "Current tips: (none)")

    def from_self(self, traj: Trajectory, current: Sequence[str]) -> list[str]:
        return self.from_self_many([traj], [current])[0]

    def from_self_many(self, trajs: Sequence[Trajectory], currents: Sequence[Sequence[str]]
                       ) -> list[list[str]]:
        """``from_self`` for several games in one batched call."""
        prompts = [
            f"Goal: {traj.goal}\nHere is what a player did:\n{traj.render()}\n\n"
            f"{self._current(current)}\n\nWrite at most {self.max_tips} tips, one per line, "
            f"each under {self.max_words} words, that would help any player win games like "
            "this. Keep correct tips, fix wrong ones, leave out details of this one game."
            for traj, current in zip(trajs, currents, strict=True)
        ]
        return [self._parse(t, c) for t, c in zip(self._ask_many(prompts), currents,
                                                   strict=True)]

    def from_expert(self, expert: Trajectory, traj: Trajectory | None,
                    current: Sequence[str]) -> list[str]:
        return self.from_expert_many([expert], [traj], [current])[0]

    def from_expert_many(self, experts: Sequence[Trajectory],
                         trajs: Sequence[Trajectory | None],
                         currents: Sequence[Sequence[str]]) -> list[list[str]]:
        """``from_expert`` for several games in one batched call."""
        prompts = []
        for expert, traj, current in zip(experts, trajs, currents, strict=True):
            mine = traj.render() if traj is not None else "(the player has not played yet)"
            prompts.append(
                f"Goal: {expert.goal}\nAn expert played this way:\n{expert.render()}\n\n"
                f"The player played this way:\n{mine}\n\n{self._current(current)}\n\n"
                f"Name what the expert did that the player did not, as at most {self.max_tips} "
                f"general tips, one per line, each under {self.max_words} words.")
        return [self._parse(t, c) for t, c in zip(self._ask_many(prompts), currents,
                                                   strict=True)]

    def consolidate(self, tip_lists: Sequence[Sequence[str]]) -> list[str]:
        blocks = "\n\n".join(f"Game {i + 1}:\n" + "\n".join(f"- {t}" for t in tl)
                             for i, tl in enumerate(tip_lists) if tl)
        if not blocks:
            return []
        prompt = (f"Tips learned in several games:\n{blocks}\n\nMerge them into at most "
                  f"{self.max_tips} general tips valid in all these games, one per line, each "
                  f"under {self.max_words} words. Remove duplicates and names of specific "
                  "rooms or objects.")
        merged = [t for tl in tip_lists for t in tl]
        return self._parse(self._ask(prompt), merged[: self.max_tips])

    def reflect(self, traj: Trajectory) -> str:
        return self.reflect_many([traj])[0]

    def reflect_many(self, trajs: Sequence[Trajectory]) -> list[str]:
        """Reflexion-style one-sentence reflections for several games in one batched call."""
        prompts = [f"Goal: {traj.goal}\nYour attempt:\n{traj.render()}\n\nIn one sentence, "
                   "say what went wrong in this attempt and what you will do next time."
                   for traj in trajs]
        out = []
        for text in self._ask_many(prompts, tips=False):
            lines = text.strip().splitlines()
            line = next((ln.strip() for ln in lines if len(ln.split()) >= 3), "")
            if not line:
                self.stats["parse_failures"] += 1
            out.append(" ".join(line.split()[:40]))
        return out


# --------------------------------------------------------------------------- actor
@dataclasses.dataclass
class ActorConfig:
    """How the actor prompts and picks.

    Attributes:
        mode: "score" (log-prob of each admissible command), "generate" (free text,
            matched to a command) or "choice" (generation constrained to the admissible
            commands: ``response_format={"type": "choice", ...}``, enforced in the decode
            loop by local backends, passed to HTTP servers).
        norm: ranking for "score": "mean" (per token), "sum", "pmi" (sum minus the
            command's log-prob after a neutral prompt listing only the valid actions) or
            "calib" (sum minus the log-prob after the same prompt with an empty
            observation and no history: contextual calibration).
        loop_penalty: subtracted from a command's value once per earlier time it was
            taken in the same room (loop breaking; 0 = off; in nats for "score"; a large
            value tries every command of a room before repeating one). "choice" mode with
            loop_penalty > 0 offers only the room's least-taken commands.
        diag: "score" mode: also score the neutral and empty-observation prompts every
            step and keep every rule's value per command in ``Step.diag`` (diagnosis).
        prompt: "append" (multi-turn chat that grows by one assistant/user turn per step,
            so a backend with prompt-prefix KV reuse encodes only the new turn; the valid
            actions are listed in the last turn only) or "window" (one user message with
            the last ``history`` steps, rebuilt every step).
        history: "window": last K (action, observation) pairs in the prompt; "append":
            steps kept after the history is cut.
        history_max: "append": when more than this many steps are in the prompt, the
            history is cut to the last ``history`` steps (the prompt is then re-encoded).
        obs_chars: characters kept from each observation.
        max_actions: admissible commands listed (and scored) at most.
        gen: decoding for "generate".
    """

    mode: str = "score"
    norm: str = "mean"
    prompt: str = "append"
    history: int = 3
    history_max: int = 8
    obs_chars: int = 500
    max_actions: int = 40
    loop_penalty: float = 0.0
    diag: bool = False
    gen: GenConfig = GenConfig(max_tokens=12, temperature=0.0, stop=("\n",))

    def __post_init__(self):
        if self.mode not in ("score", "generate", "choice"):
            raise ValueError(f"ActorConfig.mode must be score|generate|choice, got {self.mode!r}")
        if self.norm not in ("mean", "sum", "pmi", "calib"):
            raise ValueError(f"ActorConfig.norm must be mean|sum|pmi|calib, got {self.norm!r}")
        if not self.loop_penalty >= 0:
            raise ValueError(f"ActorConfig.loop_penalty must be >= 0, got {self.loop_penalty}")
        if self.prompt not in ("append", "window"):
            raise ValueError(f"ActorConfig.prompt must be append|window, got {self.prompt!r}")
        if not 0 <= self.history <= self.history_max:
            raise ValueError(f"ActorConfig: need 0 <= history ({self.history}) <= history_max "
                             f"({self.history_max})")


def _short(text: str, n: int) -> str:
    text = re.sub(r"[ \t]+", " ", text or "").strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def build_messages(goal: str, memory: Sequence[str], memory_title: str, history: Sequence[Step],
                   observation: str, admissible: Sequence[str], cfg: ActorConfig
                   ) -> list[dict[str, str]]:
    """The actor's chat prompt."""
    parts = [f"Goal: {_short(goal, 400)}"]
    if memory:
        parts.append(memory_title + "\n" + "\n".join(f"{i + 1}. {m}"
                                                     for i, m in enumerate(memory)))
    if history:
        parts.append("Recent steps:\n" + "\n".join(
            f"> {s.action}\n{_short(s.observation, 200)}" for s in history))
    parts.append("Now:\n" + _short(observation, cfg.obs_chars))
    parts.append("Valid actions: " + ", ".join(admissible))
    parts.append("Answer with exactly one valid action.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def build_chat(goal: str, memory: Sequence[str], memory_title: str, observations: Sequence[str],
               actions: Sequence[str], admissible: Sequence[str], cfg: ActorConfig,
               cut: bool = False) -> list[dict[str, str]]:
    """The actor's multi-turn prompt ("append" mode).

    Args:
        observations: [o_w, ..., o_t]: the observation before the first kept action, then
            the one after each kept action (the last is the current observation).
        actions: [a_w, ..., a_{t-1}] (one fewer than observations).
        cut: earlier steps were dropped (noted in the first turn).

    Every turn's text depends only on its own step, so the prompt of step t+1 extends
    the prompt of step t except for the last turn's "Valid actions" tail.
    """
    if len(observations) != len(actions) + 1:
        raise ValueError("build_chat: need one more observation than actions")
    head = [f"Goal: {_short(goal, 400)}"]
    if memory:
        head.append(memory_title + "\n" + "\n".join(f"{i + 1}. {m}"
                                                    for i, m in enumerate(memory)))
    head.append(("(Earlier steps omitted.)\n\n" if cut else "") + "Now:\n"
                + _short(observations[0], cfg.obs_chars))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(head)}]
    for a, o in zip(actions, observations[1:], strict=True):
        msgs.append({"role": "assistant", "content": a})
        msgs.append({"role": "user", "content": _short(o, cfg.obs_chars)})
    msgs[-1]["content"] += ("\n\nValid actions: " + ", ".join(admissible)
                            + "\n\nAnswer with exactly one valid action.")
    return msgs


def neutral_messages(admissible: Sequence[str]) -> list[dict[str, str]]:
    """The PMI baseline prompt: only the valid actions, no game state."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Valid actions: " + ", ".join(admissible)
             + "\n\nAnswer with exactly one valid action."}]


def calib_messages(goal: str, memory: Sequence[str], memory_title: str,
                   admissible: Sequence[str], cfg: ActorConfig) -> list[dict[str, str]]:
    """The "calib" baseline prompt: the actor's prompt with an empty observation and no
    history (what the model prefers with no game state at all)."""
    return build_messages(goal, memory, memory_title, [], "", admissible, cfg)


_ROOM = re.compile(r"-=\s*(.+?)\s*=-")


def room_of(observation: str, previous: str = "") -> str:
    """The last "-= Room =-" header in ``observation`` (else ``previous``)."""
    found = _ROOM.findall(observation or "")
    return found[-1] if found else previous


def actor_messages(traj: Trajectory, observation: str, admissible: Sequence[str],
                   actor: ActorConfig, memory: Sequence[str] = (), title: str = "",
                   window: int = 0) -> list[dict[str, str]]:
    """The actor's prompt for the next step of ``traj`` (its steps so far), as
    ``run_episodes`` builds it; ``window``: "append" prompts keep steps from this index
    on. Fine-tuning data (``expert_examples``) goes through the same function."""
    steps = traj.steps
    if actor.prompt == "window":
        hist = steps[-actor.history:] if actor.history else []
        return build_messages(traj.goal, memory, title, hist, observation, admissible, actor)
    seen = [traj.first_observation] + [s.observation for s in steps]
    return build_chat(traj.goal, memory, title, seen[window:],
                      [s.action for s in steps[window:]], admissible, actor, cut=window > 0)


def cut_window(n_steps: int, window: int, actor: ActorConfig) -> int:
    """"append" prompts: the first step kept in the prompt after ``n_steps`` steps (the
    history is cut to the last ``actor.history`` steps once more than ``history_max``
    are in it); "window" prompts keep ``window``."""
    if actor.prompt == "append" and n_steps - window > actor.history_max:
        return n_steps - actor.history
    return window


def expert_examples(envs: Sequence[Any], actor: ActorConfig = ActorConfig()
                    ) -> list[dict[str, Any]]:
    """(actor prompt, expert command) pairs along each game's walkthrough.

    Each env is reset and the walkthrough is played; before each walkthrough command the
    prompt the actor would see in that state (``actor_messages`` with no memory, i.e. the
    "none" method; the history holds the walkthrough's own earlier steps) is recorded
    with the admissible commands (first ``actor.max_actions``) and the command. States
    whose command is not among those admissible commands are skipped.

    Returns:
        Dicts {game, step, messages, admissible, expert}.
    """
    out = []
    for env in envs:
        o = env.reset()
        traj = Trajectory(game=env.name, trial=-1, method="walkthrough", goal=env.goal,
                          first_observation=o.text, max_score=o.max_score)
        room, window = room_of(o.text), 0
        for k, cmd in enumerate(env.walkthrough):
            if o.done:
                break
            adm = o.admissible[: actor.max_actions] or ["look"]
            window = cut_window(k, window, actor)
            if cmd in adm:
                out.append({"game": env.name, "step": k, "expert": cmd, "admissible": list(adm),
                            "messages": actor_messages(traj, o.text, adm, actor,
                                                       window=window)})
            o = env.step(cmd)
            traj.steps.append(Step(cmd, o.text, o.score, o.valid, "walkthrough", "", cmd, room,
                                   len(adm)))
            room = room_of(o.text, room)
    return out


MEMORY_TITLES = {
    "tips": "Tips from previous experience:",
    "oracle_tips": "Tips from previous experience:",
    "reflexion": "Reflections on your previous attempts:",
    "raw": "Your previous attempt:",
}


def _fallback(admissible: Sequence[str]) -> str:
    return "look" if "look" in admissible else admissible[0]


def _identity(obj: Any, pinned: dict[int, Any]) -> str:
    """``obj.fingerprint()`` when it has one (and it is not None), else the object's own
    identity (the object is kept alive in ``pinned`` so its id is never reused)."""
    f = getattr(obj, "fingerprint", None)
    fp = f() if callable(f) else None
    if fp is not None:
        return f"{type(obj).__qualname__}:{fp}"
    pinned[id(obj)] = obj
    return f"{type(obj).__qualname__}@{id(obj):x}"


class EpisodeMemo:
    """Episodes already played, reused when the same episode is asked for again.

    An episode is a function of: the game (``env.fingerprint()``: file contents, step
    limit, goal shown), the actor configuration, the guidance the actor sees (memory
    lines and their title; "none" sees nothing), the backend (``backend.fingerprint()``:
    model config, tokenizer and weights, adapter merged in) and, for stochastic policies
    only, the seed. The key holds all of them, so anything that changes an episode
    changes its key; objects with no fingerprint are keyed by their identity (never
    shared between two objects). What counts as deterministic: LLM methods with the
    scoring actor (greedy argmax over log-probs) or greedy generation (temperature 0);
    they are keyed per game. The random agent, the walkthrough (random after the
    walkthrough ends) and sampled generation share one generator across the lockstep
    batch: they are keyed by the whole batch and the seed, except sampled generation,
    which is never reused (its samples are not tied to the seed here).

    Reused trajectories are copies relabelled with the caller's method and trial and
    marked ``reused=True``; episodes that ended in a backend error are never stored.
    The memo belongs to the caller (one per experiment run); a replay check needs its
    own fresh memo so that it makes the same requests as the recording.

    ``stats``: episodes and LLM actor steps played vs reused.
    """

    def __init__(self):
        self._store: dict[str, Trajectory] = {}
        self._pinned: dict[int, Any] = {}
        self.stats = {"episodes_played": 0, "episodes_reused": 0, "actor_steps_played": 0,
                      "actor_steps_reused": 0}

    def __len__(self) -> int:
        return len(self._store)

    def keys(self, envs: Sequence[Any], method: str, backend: Any,
             memories: Sequence[Sequence[str]], actor: ActorConfig, seed: int
             ) -> list[str] | None:
        """One key per env: per game (deterministic policies), or the batch's key and the
        env's place in it (random / walkthrough); None for sampled generation."""
        import hashlib

        def digest(obj) -> str:
            text = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
            return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

        games = [_identity(e, self._pinned) for e in envs]
        if method in ("random", "walkthrough"):
            k = digest({"policy": method, "games": games, "seed": seed,
                        "max_actions": actor.max_actions})
            return [f"{k}/{i}" for i in range(len(envs))]
        if actor.mode != "score" and actor.gen.temperature != 0:
            return None
        title = MEMORY_TITLES.get(method, "")
        who = _identity(backend, self._pinned)
        conf = dataclasses.asdict(actor)
        out = []
        for g, m in zip(games, memories, strict=True):
            mem = list(m) if method != "none" else []
            out.append(digest({"policy": "llm", "game": g, "backend": who, "actor": conf,
                               "title": title if mem else "", "memory": mem,
                               "system": SYSTEM}))
        return out

    def get(self, key: str) -> Trajectory | None:
        return self._store.get(key)

    def put(self, key: str, traj: Trajectory) -> None:
        if traj.error is None:
            self._store[key] = _copy_traj(traj)


def _copy_traj(t: Trajectory, **changes) -> Trajectory:
    import copy

    return dataclasses.replace(copy.deepcopy(t), **changes)


def _llm_steps(t: Trajectory) -> int:
    return sum(s.how not in ("random", "walkthrough") for s in t.steps)


def run_episodes(
    envs: Sequence[Any],
    method: str,
    backend: Any,
    memories: Sequence[Sequence[str]] | None = None,
    *,
    trial: int = 0,
    actor: ActorConfig = ActorConfig(),
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    memo: EpisodeMemo | None = None,
) -> list[Trajectory]:
    """Plays one episode per env in lockstep; LLM actions of all active games are scored
    in one batched call per step.

    ``memo``: episodes already in it (same game, actor, guidance, backend, and seed for
    stochastic policies; see ``EpisodeMemo``) are reused instead of played; the rest are
    played together and stored.

    A ``BackendError`` ends every unfinished episode with ``error`` set (the steps so far
    are kept) and is then re-raised as ``EpisodeError`` carrying the trajectories.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    memories = memories or [[] for _ in envs]
    if len(memories) != len(envs):
        raise ValueError("run_episodes: one memory list per env")
    keys = (memo.keys(envs, method, backend, memories, actor, seed) if memo is not None
            else None)
    if keys is None:
        played = _play_lockstep(envs, method, backend, memories, trial, actor, seed, progress)
        if memo is not None:  # counted, not stored (sampled generation)
            memo.stats["episodes_played"] += len(played)
            memo.stats["actor_steps_played"] += sum(_llm_steps(t) for t in played)
        return played
    out: list[Trajectory | None] = [None] * len(envs)
    todo = []
    for i, k in enumerate(keys):
        hit = memo.get(k)
        if hit is None:
            todo.append(i)
            continue
        out[i] = _copy_traj(hit, trial=trial, method=method, memory=list(memories[i]),
                            reused=True)
        memo.stats["episodes_reused"] += 1
        memo.stats["actor_steps_reused"] += _llm_steps(hit)
    if todo:
        try:
            played = _play_lockstep([envs[i] for i in todo], method, backend,
                                    [memories[i] for i in todo], trial, actor, seed, progress)
        except EpisodeError as e:
            for i, t in zip(todo, e.trajectories, strict=True):
                out[i] = t
            raise EpisodeError(str(e), out) from e  # type: ignore[arg-type]
        for i, t in zip(todo, played, strict=True):
            out[i] = t
            memo.put(keys[i], t)
            memo.stats["episodes_played"] += 1
            memo.stats["actor_steps_played"] += _llm_steps(t)
    return out  # type: ignore[return-value]


def _play_lockstep(envs, method, backend, memories, trial, actor, seed, progress
                   ) -> list[Trajectory]:
    """``run_episodes`` without the memo: every env played, in lockstep."""
    rng = np.random.default_rng(seed)
    obs = [e.reset() for e in envs]
    trajs = [Trajectory(game=e.name, trial=trial, method=method, goal=e.goal,
                        first_observation=o.text, max_score=o.max_score,
                        memory=list(m)) for e, o, m in zip(envs, obs, memories, strict=True)]
    active = [not o.done for o in obs]
    title = MEMORY_TITLES.get(method, "")
    window = [0] * len(envs)  # "append" prompts: first step kept in the prompt
    rooms = [room_of(o.text) for o in obs]
    taken: list[dict[tuple[str, str], int]] = [{} for _ in envs]  # (room, cmd) -> times
    try:
        while any(active):
            idx = [i for i, a in enumerate(active) if a]
            picks: dict[int, tuple[str, str, str]] = {}
            llm = []
            for i in idx:
                adm = obs[i].admissible[: actor.max_actions] or ["look"]
                if method == "random":
                    picks[i] = (adm[int(rng.integers(len(adm)))], "random", "")
                elif method == "walkthrough":
                    k = len(trajs[i].steps)
                    wt = envs[i].walkthrough
                    picks[i] = ((wt[k], "walkthrough", "") if k < len(wt)
                                else (adm[int(rng.integers(len(adm)))], "random", ""))
                else:
                    mem = memories[i] if method != "none" else []
                    steps = trajs[i].steps
                    w = cut_window(len(steps), window[i], actor)
                    trajs[i].prompt_cuts += w != window[i]
                    window[i] = w
                    msgs = actor_messages(trajs[i], obs[i].text, adm, actor, mem, title,
                                          window[i])
                    llm.append((i, msgs, adm))
            diags: dict[int, dict[str, Any]] = {}
            if llm and actor.mode == "score":
                n = len(llm)
                want_neutral = actor.norm == "pmi" or actor.diag
                want_calib = actor.norm == "calib" or actor.diag
                reqs = [(m, adm) for _, m, adm in llm]
                if want_neutral:
                    reqs += [(neutral_messages(adm), adm) for _, _, adm in llm]
                if want_calib:
                    reqs += [(calib_messages(trajs[i].goal, memories[i] if method != "none"
                                             else [], title, adm, actor), adm)
                             for i, _, adm in llm]
                res = score_many(backend, reqs)
                off_c = n * (1 + want_neutral)
                for k, (i, _, adm) in enumerate(llm):
                    base = (res[n + k] if actor.norm == "pmi" else
                            res[off_c + k] if actor.norm == "calib" else None)
                    vals = rank_values(res[k], "pmi" if base is not None else actor.norm, base)
                    vals = vals - actor.loop_penalty * np.array(
                        [taken[i].get((rooms[i], c), 0) for c in adm], np.float64)
                    picks[i] = (adm[int(np.argmax(vals))], "score", "")
                    if actor.diag:
                        diags[i] = {"commands": list(adm),
                                    "tokens": [r.n_tokens for r in res[k]],
                                    "sum": [r.sum_logprob for r in res[k]],
                                    "neutral": [r.sum_logprob for r in res[n + k]],
                                    "calib": [r.sum_logprob for r in res[off_c + k]],
                                    "repeats": [taken[i].get((rooms[i], c), 0) for c in adm]}
            for i, msgs, adm in llm if actor.mode in ("generate", "choice") else []:
                cfg = actor.gen
                if actor.mode == "choice":
                    opts = list(adm)
                    if actor.loop_penalty > 0:  # loop breaking: the least-taken commands only
                        cnt = [taken[i].get((rooms[i], c), 0) for c in adm]
                        opts = [c for c, k in zip(adm, cnt, strict=True) if k == min(cnt)]
                    cfg = dataclasses.replace(cfg, stop=(), max_tokens=max(cfg.max_tokens, 24),
                                              response_format={"type": "choice",
                                                               "choice": opts})
                raw = backend.chat(msgs, cfg)[0].text
                cmd, how = match_action(raw, adm)
                if cmd and actor.mode == "choice":
                    how = "choice" if how == "exact" else how
                picks[i] = (cmd, how, raw) if cmd else (_fallback(adm), "fallback", raw)
            for i in idx:
                cmd, how, raw = picks[i]
                pol = getattr(obs[i], "policy", None)
                expert = pol[0] if pol else ""
                n_adm = len(obs[i].admissible[: actor.max_actions])
                room = rooms[i]
                taken[i][(room, cmd)] = taken[i].get((room, cmd), 0) + 1
                o = envs[i].step(cmd)
                rooms[i] = room_of(o.text, room)
                valid = o.valid and how not in ("fallback",)
                trajs[i].steps.append(Step(cmd, o.text, o.score, valid, how, raw, expert, room,
                                           n_adm, diags.get(i)))
                trajs[i].score, trajs[i].won, trajs[i].lost = o.score, o.won, o.lost
                obs[i] = o
                if o.done:
                    active[i] = False
            if progress is not None:
                progress(len(idx))
    except BackendError as e:
        for i, a in enumerate(active):
            if a:
                trajs[i].error = f"{type(e).__name__}: {e}"
        raise EpisodeError(str(e), trajs) from e
    return trajs


class EpisodeError(BackendError):
    """A backend failure during episodes; ``trajectories`` holds everything played so far."""

    def __init__(self, msg: str, trajectories: list[Trajectory]):
        super().__init__(msg)
        self.trajectories = trajectories


def expert_trajectory(env: Any) -> Trajectory:
    """Rolls out the walkthrough on ``env`` (the expert demonstration, with observations)."""
    return run_episodes([env], "walkthrough", None, trial=-1)[0]


# --------------------------------------------------------------------------- scenarios
class EpisodeLog:
    """Appends each finished trajectory to a JSONL file as soon as it exists."""

    def __init__(self, path: str | pathlib.Path | None):
        self.path = pathlib.Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def write(self, trajs: Sequence[Trajectory], **extra) -> None:
        for t in trajs:
            row = {**t.to_dict(), **extra}
            self.rows.append(row)
            if self.path:
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")


def _play(envs, method, backend, memories, trial, actor, seed, log, progress, scenario,
          memo=None):
    try:
        trajs = run_episodes(envs, method, backend, memories, trial=trial, actor=actor,
                             seed=seed + 7919 * trial, progress=progress, memo=memo)
    except EpisodeError as e:
        log.write(e.trajectories, scenario=scenario)
        raise
    log.write(trajs, scenario=scenario)
    return trajs


def run_own_experience(envs, method, backend, *, trials=3, actor=ActorConfig(),
                       tipgen: TipGenerator | None = None, seed=0, log: EpisodeLog | None = None,
                       progress=None, scenario="S1", memo: EpisodeMemo | None = None
                       ) -> dict[str, Any]:
    """S1: replay each game ``trials`` times; between trials update each game's memory from
    its own last trajectory. Returns {"trajectories": [[per game] per trial], "memories"}.
    ``memo``: identical episodes are played once (``EpisodeMemo``)."""
    log = log or EpisodeLog(None)
    mems = [TipMemory(tipgen.max_tips if tipgen else 5) for _ in envs]
    reflections: list[list[str]] = [[] for _ in envs]
    raw_prev: list[list[str]] = [[] for _ in envs]
    if method in ("tips", "reflexion") and tipgen is None:
        raise ValueError(f"method {method!r} needs a TipGenerator")
    all_trials = []
    for t in range(trials):
        if method == "oracle_tips" and t == 0:
            for e, m in zip(envs, mems, strict=True):
                e.reset()
                m.rewrite(oracle_tips(e.walkthrough), "oracle", [e.name], 0)
        memories = {"tips": [m.texts() for m in mems], "oracle_tips": [m.texts() for m in mems],
                    "reflexion": reflections, "raw": raw_prev}.get(method, [[] for _ in envs])
        trajs = _play(envs, method, backend, memories, t, actor, seed, log, progress, scenario,
                      memo)
        all_trials.append(trajs)
        for m, tr in zip(mems, trajs, strict=True):
            m.record_outcome(tr)
        if t == trials - 1:
            break
        if method == "tips":
            new = tipgen.from_self_many(trajs, [m.texts() for m in mems])
            for m, tr, tips in zip(mems, trajs, new, strict=True):
                m.rewrite(tips, "self", [tr.game], t)
        elif method == "reflexion":
            for i, r in enumerate(tipgen.reflect_many(trajs)):
                if r:
                    reflections[i] = (reflections[i] + [r])[-3:]
        elif method == "raw":
            for i, tr in enumerate(trajs):
                raw_prev[i] = [tr.render(max_steps=6, obs_chars=100)]
    return {"trajectories": all_trials, "memories": mems, "reflections": reflections}


def run_expert(envs, backend, *, trials=3, actor=ActorConfig(), tipgen: TipGenerator,
               seed=0, log: EpisodeLog | None = None, progress=None,
               memo: EpisodeMemo | None = None) -> dict[str, Any]:
    """S2: tips from the expert walkthrough (trial 0) and from expert-vs-own contrasts
    (later trials)."""
    log = log or EpisodeLog(None)
    experts = [expert_trajectory(e) for e in envs]
    mems = [TipMemory(tipgen.max_tips) for _ in envs]
    first = tipgen.from_expert_many(experts, [None] * len(envs), [[] for _ in envs])
    for m, tips, e in zip(mems, first, envs, strict=True):
        m.rewrite(tips, "expert", [e.name], -1)
    all_trials = []
    for t in range(trials):
        trajs = _play(envs, "tips", backend, [m.texts() for m in mems], t, actor, seed, log,
                      progress, "S2", memo)
        all_trials.append(trajs)
        for m, tr in zip(mems, trajs, strict=True):
            m.record_outcome(tr)
        if t < trials - 1:
            new = tipgen.from_expert_many(experts, trajs, [m.texts() for m in mems])
            for m, tr, tips in zip(mems, trajs, new, strict=True):
                m.rewrite(tips, "expert", [tr.game], t)
    return {"trajectories": all_trials, "memories": mems}


def run_zero_shot(train_envs, test_envs, backend, *, train_trials=2, actor=ActorConfig(),
                  tipgen: TipGenerator, seed=0, log: EpisodeLog | None = None,
                  progress=None, memo: EpisodeMemo | None = None) -> dict[str, Any]:
    """S3: learn tips on training games (S1), consolidate once, play unseen games once with
    the consolidated tips, and once with no tips (paired control)."""
    log = log or EpisodeLog(None)
    s1 = run_own_experience(train_envs, "tips", backend, trials=train_trials, actor=actor,
                            tipgen=tipgen, seed=seed, log=log, progress=progress,
                            scenario="S3-train", memo=memo)
    # include the last trial's lesson too
    last = s1["trajectories"][-1]
    new = tipgen.from_self_many(last, [m.texts() for m in s1["memories"]])
    for m, tr, tips in zip(s1["memories"], last, new, strict=True):
        m.rewrite(tips, "self", [tr.game], train_trials - 1)
    merged = TipMemory(tipgen.max_tips)
    merged.rewrite(tipgen.consolidate([m.texts() for m in s1["memories"]]), "consolidate",
                   [e.name for e in train_envs], train_trials)
    with_tips = _play(test_envs, "tips", backend, [merged.texts()] * len(test_envs), 0, actor,
                      seed, log, progress, "S3-test", memo)
    for tr in with_tips:
        merged.record_outcome(tr)
    no_tips = _play(test_envs, "none", backend, None, 0, actor, seed, log, progress,
                    "S3-test-none", memo)
    return {"train": s1, "tips": merged, "test_tips": with_tips, "test_none": no_tips}


# --------------------------------------------------------------------------- metrics
def summarize(trajs: Sequence[Trajectory], seed: int = 0) -> dict[str, Any]:
    """Normalised score, win rate (each with a 95% bootstrap CI over episodes), steps,
    invalid-action and fallback rates."""
    ns = [t.norm_score for t in trajs]
    wins = [float(t.won) for t in trajs]
    m, lo, hi = bootstrap_ci(ns, seed=seed)
    w, wlo, whi = bootstrap_ci(wins, seed=seed)
    return {
        "n": len(trajs), "norm_score": m, "norm_score_ci": [lo, hi], "win_rate": w,
        "win_rate_ci": [wlo, whi],
        "steps": float(np.mean([t.n_steps for t in trajs])) if trajs else float("nan"),
        "invalid_rate": float(np.mean([t.invalid_rate for t in trajs])) if trajs else 0.0,
        "fallback_rate": float(np.mean([t.fallback_rate for t in trajs])) if trajs else 0.0,
        "errors": sum(t.error is not None for t in trajs),
    }


def trials_to_first_win(per_trial: Sequence[Sequence[Trajectory]]) -> list[int | None]:
    """Per game, the first trial index it was won in (None if never)."""
    n = len(per_trial[0]) if per_trial else 0
    out: list[int | None] = []
    for g in range(n):
        out.append(next((t for t, tr in enumerate(per_trial) if tr[g].won), None))
    return out


# --------------------------------------------------------------------------- suite
def run_suite(envs, backend, *, methods=("random", "walkthrough", "none", "tips"), trials=3,
              scenarios=("S1",), actor=ActorConfig(), tipgen: TipGenerator | None = None,
              seed=0, log: EpisodeLog | None = None, progress=None,
              n_train: int | None = None, memo: EpisodeMemo | None = None) -> dict[str, Any]:
    """Runs S1 for each method (all trials), plus S2 (expert tips) and S3 (zero-shot: the
    first ``n_train`` games train, the rest test) when asked. Returns summaries per
    (scenario, method, trial), trials to first win, tip provenance, tipgen stats and
    ``memo``: episodes / actor steps played vs reused in this call.

    Every episode goes through ``memo`` (a fresh ``EpisodeMemo`` when None): an episode
    identical to one already played (e.g. trial 1 of "none", trial 0 of "tips" and
    "reflexion" before any tip exists, S3's no-tips control, and across seeds every
    episode whose inputs do not depend on the seed) is played once. Pass one memo to
    several calls (seeds) to share it."""
    import time

    out: dict[str, Any] = {"summary": [], "first_win": {}, "provenance": {}, "timing": {}}
    log = log or EpisodeLog(None)
    memo = EpisodeMemo() if memo is None else memo
    before = dict(memo.stats)

    def add(scn, method, per_trial):
        for t, trajs in enumerate(per_trial):
            out["summary"].append({"scenario": scn, "method": method, "trial": t,
                                   **summarize(trajs, seed)})
        out["first_win"][f"{scn}/{method}"] = trials_to_first_win(per_trial)

    if "S1" in scenarios:
        for m in methods:
            t0 = time.time()
            r = run_own_experience(envs, m, backend, trials=trials, actor=actor, tipgen=tipgen,
                                   seed=seed, log=log, progress=progress, memo=memo)
            add("S1", m, r["trajectories"])
            if m in ("tips", "oracle_tips"):
                out["provenance"][f"S1/{m}"] = [mem.provenance() for mem in r["memories"]]
            out["timing"][f"S1/{m}"] = time.time() - t0
    if "S2" in scenarios:
        t0 = time.time()
        r = run_expert(envs, backend, trials=trials, actor=actor, tipgen=tipgen, seed=seed,
                       log=log, progress=progress, memo=memo)
        add("S2", "expert_tips", r["trajectories"])
        out["provenance"]["S2/expert_tips"] = [mem.provenance() for mem in r["memories"]]
        out["timing"]["S2"] = time.time() - t0
    if "S3" in scenarios:
        t0 = time.time()
        k = n_train or max(1, len(envs) // 2)
        if k >= len(envs):
            raise ValueError("S3 needs at least one test game: n_train < number of games")
        r = run_zero_shot(envs[:k], envs[k:], backend, train_trials=max(1, trials - 1),
                          actor=actor, tipgen=tipgen, seed=seed, log=log, progress=progress,
                          memo=memo)
        add("S3", "consolidated_tips", [r["test_tips"]])
        add("S3", "none", [r["test_none"]])
        out["provenance"]["S3/consolidated"] = r["tips"].provenance()
        out["timing"]["S3"] = time.time() - t0
    if tipgen is not None:
        out["tipgen"] = dict(tipgen.stats)
    out["memo"] = {k: v - before[k] for k, v in memo.stats.items()}
    return out
