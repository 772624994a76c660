"""Luminate-style structured design-space generation (Suh et al., CHI 2024).

Pipeline: ``generate_dimensions`` (LLM proposes categorical/ordinal dimensions as JSON;
validated, retried, fallback to a checkable ``LIBRARY``) -> ``sample_combinations`` (random,
as released, or coverage-maximising) -> ``generate_responses`` (one prompt per value
combination; labels = assigned values) -> ``abstract_response`` (title / keywords / summary
for semantic zoom, JSON with retries and a programmatic fallback) -> ``render_html`` (an
offline page: 2-D grid by two dimensions, zoom, filters, "more like this").
Metrics: ``label_fidelity`` (programmatic checks), ``diversity`` (distinct-n, self-BLEU,
pairwise TF-IDF distance), ``coverage``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxlm.agents.luminate_page import (  # noqa: F401 - re-exported
    CHROMIUM_NAMES, find_chromium, render_html, screenshot)
from jaxlm.llm.base import GenConfig


class DimensionError(ValueError):
    """Unknown dimension or invalid dimension JSON."""


@dataclasses.dataclass(frozen=True)
class Dimension:
    """A design-space dimension.

    Attributes:
        name: e.g. "Perspective".
        kind: "categorical" or "ordinal" (values ordered low -> high).
        values: the value names.
        check: optional ``text -> value | None`` programmatic check (library dimensions).
    """

    name: str
    kind: str
    values: tuple[str, ...]
    check: Callable[[str], str | None] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in ("categorical", "ordinal"):
            raise DimensionError(f"dimension {self.name!r}: kind must be categorical|ordinal")
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise DimensionError(f"dimension {self.name!r}: needs >= 2 distinct values, "
                                 f"got {self.values!r}")


# ---------------------------------------------------------------------------- checks
_WORD = re.compile(r"[a-z']+")
_P1 = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "i'm", "i'll", "we're"}
_P2 = {"you", "your", "yours", "yourself", "you're", "you'll"}
_P3 = {"he", "she", "they", "him", "her", "them", "his", "their", "hers", "theirs", "it", "its"}
_POS = set("good great love happy joy best bright fresh fun amazing wonderful beautiful enjoy "
           "smile delight perfect win free easy better brilliant pure hope glad sweet".split())
_NEG = set("bad sad hate worst dark pain lost fear angry broken never tired sick lonely cry "
           "fail ugly terrible awful poor gloomy boring waste dead worry".split())
_SLANG = set("gonna wanna hey cool awesome yeah lol kinda stuff guys wow super totally yo dude "
             "gotta ya y'all nah okay ok".split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def check_perspective(text: str) -> str | None:
    """Grammatical person by pronoun counts (None when no pronoun or a tie)."""
    w = words(text)
    c = {"first person": sum(x in _P1 for x in w), "second person": sum(x in _P2 for x in w),
         "third person": sum(x in _P3 for x in w)}
    best = max(c.values())
    top = [k for k, v in c.items() if v == best]
    return top[0] if best > 0 and len(top) == 1 else None


def check_sentence_form(text: str) -> str | None:
    """Question / exclamation / statement by the final punctuation."""
    t = text.strip().rstrip("\"')]*").strip()
    if not t:
        return None
    return {"?": "question", "!": "exclamation"}.get(t[-1], "statement")


def check_sentiment(text: str) -> str | None:
    """Positive / negative by a small lexicon (None on a tie)."""
    w = words(text)
    p, n = sum(x in _POS for x in w), sum(x in _NEG for x in w)
    return "positive" if p > n else "negative" if n > p else None


def check_formality(text: str) -> str:
    """Casual if it has contractions, slang or '!!'; else formal."""
    w = words(text)
    casual = any("'" in x and not x.endswith("'") for x in w) or any(x in _SLANG for x in w)
    return "casual" if casual or "!!" in text else "formal"


def check_length(text: str) -> str:
    n = len(text.split())
    return "short" if n < 8 else "medium" if n <= 15 else "long"


LIBRARY: dict[str, Dimension] = {
    d.name: d for d in (
        Dimension("Perspective", "categorical", ("first person", "second person",
                                                  "third person"), check_perspective),
        Dimension("Sentence form", "categorical", ("question", "exclamation", "statement"),
                  check_sentence_form),
        Dimension("Sentiment", "categorical", ("positive", "negative"), check_sentiment),
        Dimension("Formality", "categorical", ("formal", "casual"), check_formality),
        Dimension("Length band", "ordinal", ("short", "medium", "long"), check_length),
    )
}


def library_dims(names: Sequence[str]) -> list[Dimension]:
    """Library dimensions by name (DimensionError names the known ones)."""
    out = []
    for n in names:
        if n not in LIBRARY:
            raise DimensionError(f"unknown dimension {n!r}; library has {sorted(LIBRARY)}")
        out.append(LIBRARY[n])
    return out


# ---------------------------------------------------------------------------- dimensions
def dimension_prompt(prompt: str, n_dims: int, kind: str, context: str = "") -> str:
    """Paraphrase of the released dimension requests (categorical: 6 values; ordinal: 5)."""
    ctx = f"This is the context: {context}\n---end context ---\n" if context else ""
    if kind == "categorical":
        return (ctx + "A dimension is a set of qualitative, subjective categories with no right "
                "answer, such as Tone, Setting, Style or Perspective. It must not judge writing "
                "quality (not Length, Grammar, Quality or Clarity). Dimensions should be distinct "
                f"and independent.\nList {n_dims} such dimensions, each with 6 values, by which "
                f"answers to this prompt could be grouped: \"{prompt}\"\nReply only with JSON "
                'like {"Dimension": ["value1", "value2", "value3", "value4", "value5", '
                '"value6"]}.\nJSON:')
    return (ctx + f"List {n_dims} ordinal dimensions: to what extent an answer to this prompt "
            f"shows a quality: \"{prompt}\"\nReply only with JSON like "
            '{"Dimension": ["lowest", "low", "moderate", "high", "highest"]} '
            "(5 ordered levels).\nJSON:")


DIM_STYLES = ("schema", "constrained", "fewshot", "instruction")
# one worked example per kind (a different task), shown before the real task; the reply is
# then forced to start inside the JSON object ('{"') and cut at the first '}'
_EXAMPLE_TASK = "Write a short review of wireless headphones."
_EXAMPLES = {
    "categorical": {"Tone": ["enthusiastic", "critical", "neutral", "humorous", "sarcastic",
                             "formal"],
                    "Focus": ["sound", "comfort", "price", "design", "battery", "durability"],
                    "Audience": ["gamers", "commuters", "students", "athletes", "musicians",
                                 "parents"]},
    "ordinal": {"Enthusiasm": ["indifferent", "mild", "moderate", "strong", "ecstatic"],
                "Technical detail": ["none", "little", "some", "much", "exhaustive"],
                "Formality": ["very casual", "casual", "neutral", "formal", "very formal"]},
}
FORCED_PREFIX = '{"'


def fewshot_dimension_prompt(prompt: str, n_dims: int, kind: str, context: str = "") -> str:
    """Format-forcing variant for small models: a worked example in the exact JSON layout,
    then the task, ending inside the JSON object (``FORCED_PREFIX``) so the model only has
    to continue it."""
    ctx = f"This is the context: {context}\n---end context ---\n" if context else ""
    if kind == "categorical":
        head = (f"List {n_dims} categorical dimensions with 6 values each: qualitative "
                "categories (tone, setting, style, perspective...) by which answers to the task "
                "could be grouped; no quality judgements.")
    else:
        head = (f"List {n_dims} ordinal dimensions with 5 ordered levels each, from lowest to "
                "highest: to what extent an answer to the task shows a quality.")
    ex = dict(list(_EXAMPLES[kind].items())[:n_dims])
    return (f"{head}\n\nTask: {_EXAMPLE_TASK}\nJSON: {json.dumps(ex)}\n\n{ctx}Task: {prompt}"
            f"\nJSON: {FORCED_PREFIX}")


_DIM_NAME = r"[A-Z][A-Za-z]{2,15}( [A-Za-z]{2,12})?"
_DIM_VALUE = r"[a-z]{3,15}( [a-z]{2,12})?"


def dimension_format(n_dims: int, kind: str) -> dict[str, Any]:
    """``GenConfig.response_format`` of a dimension reply: exactly ``n_dims`` entries
    ``"Name": ["value", ...]`` with 6 values (categorical) or 5 levels (ordinal), in the
    few-shot example's JSON layout; names and values are one or two words."""
    nv = 5 if kind == "ordinal" else 6
    entry = f'"{_DIM_NAME}": \\["{_DIM_VALUE}"(, "{_DIM_VALUE}"){{{nv - 1}}}\\]'
    return {"type": "regex", "regex": f"\\{{{entry}(, {entry}){{{n_dims - 1}}}\\}}"}


_PLACEHOLDER = re.compile(r"^(dimension|value|name|level|category|key|dim)\s*[_-]?\s*\d*$", re.I)


def parse_dimensions(obj: Any, kind: str, n_values: int | None = None) -> list[Dimension]:
    """Validates a parsed JSON object ``{name: [values]}`` into dimensions.

    Raises:
        DimensionError: not a non-empty dict of lists of >= 2 distinct short strings (or, for
        ordinal dimensions with ``n_values``, not exactly that many levels).
    """
    if not isinstance(obj, dict) or not obj:
        raise DimensionError(f"dimension JSON must be a non-empty object, got {type(obj).__name__}")
    out = []
    for name, vals in obj.items():
        if not isinstance(name, str) or not name.strip():
            raise DimensionError(f"dimension name {name!r} must be a non-empty string")
        if not isinstance(vals, list) or not all(isinstance(v, str) and v.strip() for v in vals):
            raise DimensionError(f"dimension {name!r}: values must be a list of strings")
        vals = tuple(dict.fromkeys(v.strip() for v in vals))
        if n_values is not None and kind == "ordinal" and len(vals) != n_values:
            raise DimensionError(f"ordinal dimension {name!r} needs {n_values} levels, "
                                 f"got {len(vals)}")
        if any(len(v) > 60 for v in vals):
            raise DimensionError(f"dimension {name!r}: values longer than 60 characters")
        if not re.search(r"[A-Za-z]{2}", name) or not all(re.search(r"[A-Za-z]", v)
                                                          for v in vals):
            raise DimensionError(f"dimension {name!r}: name and values must be words, got "
                                 f"{vals!r}")
        if _PLACEHOLDER.match(name.strip()) or any(_PLACEHOLDER.match(v) for v in vals):
            raise DimensionError(f"dimension {name!r}: placeholder name or values {vals!r}")
        if list(vals) == _EXAMPLES.get(kind, {}).get(name.strip()):
            raise DimensionError(f"dimension {name!r}: copied from the prompt's example")
        if kind == "categorical" and len(vals) < 3:
            raise DimensionError(f"categorical dimension {name!r} needs >= 3 values, "
                                 f"got {len(vals)}")
        out.append(Dimension(name.strip(), kind, vals))
    return out


@dataclasses.dataclass
class DimStats:
    """Dimension-generation bookkeeping: attempts, JSON-valid attempts, fallbacks."""

    attempts: int = 0
    valid: int = 0
    calls: int = 0
    fallbacks: int = 0
    repaired: int = 0
    entries: int = 0
    valid_entries: int = 0
    requested: int = 0
    filled: int = 0

    @property
    def valid_rate(self) -> float:
        return self.valid / max(self.attempts, 1)

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / max(self.calls, 1)

    @property
    def repaired_rate(self) -> float:
        return self.repaired / max(self.calls, 1)

    @property
    def entry_valid_rate(self) -> float:
        """Constrained decoding: valid dimension entries / entries decoded."""
        return self.valid_entries / max(self.entries, 1)

    @property
    def library_fill_rate(self) -> float:
        """Requested dimensions that came from the library instead of the LLM."""
        return self.filled / max(self.requested, 1)


_VALUE = re.compile(r'\s*"([^"\n]{1,60})"\s*([,\]])')


def read_entry(text: str, n_values: int, max_raw: int = 12) -> tuple[str, list[str]] | None:
    """Reads one dimension entry from a continuation of ``... "`` (the forced opening quote
    of a key) as a grammar with a fixed list length would let it through: the key up to the
    closing quote, ``: [``, then quoted values separated by commas, stopping at ``]``, at
    ``n_values`` distinct values, after ``max_raw`` values, or at the first token that breaks
    the grammar (the values read so far are kept).

    Returns:
        (name, values) or None when no key and list opening could be read.
    """
    m = re.match(r'([^"\n{}\[\]]{1,60})"\s*:\s*\[', text)
    if not m:
        return None
    vals: list[str] = []
    pos, raw = m.end(), 0
    while raw < max_raw and len(vals) < n_values:
        v = _VALUE.match(text, pos)
        if not v:
            break
        raw, pos = raw + 1, v.end()
        if v.group(1).strip() and v.group(1).strip() not in vals:
            vals.append(v.group(1).strip())
        if v.group(2) == "]":
            break
    return m.group(1).strip(), vals


def _constrained_dimensions(backend: Any, prompt: str, n_dims: int, kind: str, rows: int,
                            cfg: GenConfig, stats: DimStats) -> tuple[list[str], list[Dimension]]:
    """Entry-level grammar-constrained decoding, batched over ``rows`` attempts: round r
    forces the text ``{"`` (r = 0) or ``, "`` after the entries built so far, the model
    writes one key and list, ``read_entry`` cuts it where the grammar would have closed it
    (6 values, or 5 ordinal levels), and the entry is appended as well-formed JSON. The
    object is valid JSON by construction; each entry is then validated for content.

    Returns:
        (round-0 free replies as '{"...' text, for the unconstrained validity rate;
         valid dimensions in order of discovery, distinct names).
    """
    nv = 5 if kind == "ordinal" else 6
    base = fewshot_dimension_prompt(prompt, n_dims, kind)[: -len(FORCED_PREFIX)]
    built = [FORCED_PREFIX] * rows
    active = list(range(rows))
    free: list[str] = []
    found: dict[str, Dimension] = {}
    for r in range(n_dims):
        if not active:
            break
        # every row is sent each round (finished rows too) so the batch shape, and with it
        # the compiled program, stays the same; only active rows' replies are used
        outs = _complete_batch(backend, [base + b for b in built],
                               dataclasses.replace(cfg, seed=cfg.seed + 101 * r), raw=True)
        if r == 0:
            free = [FORCED_PREFIX + o for o in outs]
        nxt = []
        for i in active:
            o = outs[i]
            o = o.lstrip()
            if o.startswith(FORCED_PREFIX):  # the model re-opened the object itself
                o = o[len(FORCED_PREFIX):]
            e = read_entry(o, nv)
            if e is None:
                continue
            stats.entries += 1
            name, vals = e
            built[i] += json.dumps(name)[1:-1] + '": ' + json.dumps(vals)
            try:
                d = parse_dimensions({name: vals}, kind, 5 if kind == "ordinal" else None)[0]
                stats.valid_entries += 1
                found.setdefault(d.name, d)
            except DimensionError:
                pass
            built[i] += ', "'
            nxt.append(i)
        active = nxt
    return free, list(found.values())


_ENTRY = re.compile(r'"([^"\n]{1,60})"\s*:\s*(\[[^\[\]{}]*\])')


def repair_dimensions(text: str, kind: str, n_values: int | None = None) -> list[Dimension]:
    """Grammar-like salvage of an invalid reply: every complete ``"name": ["v", ...]``
    entry is parsed on its own and kept if it validates (truncated or garbled entries are
    dropped). Returns the valid dimensions (possibly none)."""
    out, seen = [], set()
    for m in _ENTRY.finditer(text):
        try:
            vals = json.loads(m.group(2))
            d = parse_dimensions({m.group(1): vals}, kind, n_values)[0]
        except (ValueError, DimensionError):
            continue
        if d.name not in seen:
            seen.add(d.name)
            out.append(d)
    return out


def generate_dimensions(backend: Any, prompt: str, n_dims: int = 3,
                        kinds: Sequence[str] = ("categorical", "ordinal"), retries: int = 5,
                        cfg: GenConfig = GenConfig(max_tokens=200, temperature=0.7),
                        stats: DimStats | None = None,
                        fallback: Sequence[str] = ("Perspective", "Sentence form", "Sentiment",
                                                   "Formality", "Length band"),
                        style: str = "constrained", repair: bool = True
                        ) -> tuple[list[Dimension], DimStats]:
    """Asks the LLM for dimensions of each kind; up to ``retries`` attempts per kind until the
    JSON parses and validates; else (``repair``) the valid entries salvaged from the replies
    by ``repair_dimensions``; else falls back to library dimensions of that kind.

    Args:
        style: "constrained" (the few-shot prompt with entry-level grammar-constrained
            decoding, ``_constrained_dimensions``; the round-0 replies also give the free
            JSON validity), "fewshot" (``fewshot_dimension_prompt``: worked example + reply
            forced to start inside the JSON object, raw completion) or "instruction" (the
            released request paraphrase, ``dimension_prompt``, as a chat turn).

    Returns:
        (dimensions, stats): stats.valid_rate (whole reply parses and validates, per
        attempt), entry_valid_rate (constrained), repaired_rate, fallback_rate (kinds with
        no LLM dimension) and library_fill_rate (requested dimensions from the library).
    """
    from jaxlm.llm.helpers import extract_json

    if style not in DIM_STYLES:
        raise ValueError(f"style must be one of {DIM_STYLES}, got {style!r}")
    stats = stats or DimStats()
    dims: list[Dimension] = []
    for kind in kinds:
        stats.calls += 1
        nv = 5 if kind == "ordinal" else None
        got = None
        # the retries are sampled as one batch (distinct seeds per row); the first valid reply
        # in order is used and attempts count as if they had run one after another
        llm: list[Dimension] = []
        if style == "schema":
            # the few-shot prompt ends at "JSON: "; the reply is decoded under the
            # dimension grammar (enforced in the decode loop by local backends)
            scfg = dataclasses.replace(cfg, max_tokens=max(cfg.max_tokens, 48 * n_dims + 16),
                                       response_format=dimension_format(n_dims, kind))
            base = fewshot_dimension_prompt(prompt, n_dims, kind)[: -len(FORCED_PREFIX)]
            texts = _complete_batch(backend, [base] * retries, scfg, raw=True)
        elif style == "constrained":
            texts, llm = _constrained_dimensions(backend, prompt, n_dims, kind, retries, cfg,
                                                 stats)
            texts = [t[: t.index("}") + 1] if "}" in t else t for t in texts]
        elif style == "fewshot":
            texts = _complete_batch(
                backend, [fewshot_dimension_prompt(prompt, n_dims, kind)] * retries, cfg,
                raw=True)
            # the reply continues the forced '{"'; keep it up to the first '}'
            texts = [t if t.lstrip().startswith("{") else FORCED_PREFIX + t for t in texts]
            texts = [t[: t.index("}") + 1] if "}" in t else t for t in texts]
        else:
            texts = _complete_batch(backend, [dimension_prompt(prompt, n_dims, kind)] * retries,
                                    cfg)
        for text in texts:
            stats.attempts += 1
            try:
                got = parse_dimensions(extract_json(text), kind, nv)[:n_dims]
                stats.valid += 1
                break
            except (ValueError, DimensionError):
                continue
        stats.requested += n_dims
        if got is None and llm:
            got = llm[:n_dims]
        elif got is None and repair:
            salvaged = [d for t in texts for d in repair_dimensions(t, kind, nv)]
            salvaged = list({d.name: d for d in salvaged}.values())[:n_dims]
            if salvaged:
                stats.repaired += 1
                got = salvaged
        if got is None:
            stats.fallbacks += 1
            got = []
        if len(got) < n_dims:  # fill the missing dimensions from the library
            lib = [d for d in library_dims(fallback) if d.kind == kind and d.name not in
                   {g.name for g in got}][: n_dims - len(got)]
            stats.filled += len(lib)
            got = got + lib
        dims += got
    return dims, stats


# ---------------------------------------------------------------------------- generation
def _complete_one(backend: Any, user: str, cfg: GenConfig) -> str:
    return _complete_batch(backend, [user], cfg)[0]


def _complete_batch(backend: Any, users: Sequence[str], cfg: GenConfig,
                    raw: bool = False) -> list[str]:
    """One chat turn per prompt (``raw``: plain text completion, no chat template). Local
    white-box backends run all prompts as one left-padded batch (``generate_ids`` with pad
    positions -1); text backends with ``chat_many`` / ``complete_many`` (a ``ReplayBackend``
    recording a local model) get one batched call; others loop over ``chat`` / ``complete``."""
    caps = getattr(backend, "capabilities", frozenset())
    if cfg.response_format is not None:  # constrained: the backend's own batched text tier
        if raw and hasattr(backend, "complete_many"):
            return [c[0].text.strip() for c in backend.complete_many(list(users), cfg)]
        if not raw and hasattr(backend, "chat_many"):
            return [c[0].text.strip() for c in backend.chat_many(
                [[{"role": "user", "content": u}] for u in users], cfg)]
    elif "masked_generate" in caps and hasattr(backend, "generate_ids") and len(users) > 1:
        ids = [backend.encode(u if raw else backend.apply_chat_template(
            [{"role": "user", "content": u}])) for u in users]
        t = max(len(x) for x in ids)
        pad = getattr(backend.tokenizer, "pad_id", 0)
        toks = np.full((len(ids), t), pad, np.int32)
        pos = np.full((len(ids), t), -1, np.int32)
        for i, x in enumerate(ids):
            toks[i, t - len(x):] = x
            pos[i, t - len(x):] = np.arange(len(x))
        outs = backend.generate_ids(toks, cfg=cfg, position_ids=pos)
        res = []
        for o in outs:
            text = backend.decode(o)
            for s in cfg.stop:
                text = text.split(s)[0]
            res.append(text.strip())
        return res
    many = "complete_many" if raw else "chat_many"
    if len(users) > 1 and hasattr(backend, many):  # e.g. a recording ReplayBackend: batched
        reqs = list(users) if raw else [[{"role": "user", "content": u}] for u in users]
        return [c[0].text.strip() for c in getattr(backend, many)(reqs, cfg)]
    if raw:
        return [backend.complete(u, cfg)[0].text.strip() for u in users]
    return [backend.chat([{"role": "user", "content": u}], cfg)[0].text.strip() for u in users]


def sample_combinations(dims: Sequence[Dimension], n: int, seed: int = 0,
                        mode: str = "random") -> list[dict[str, str]]:
    """``n`` value assignments: "random" draws one value per dimension uniformly (the released
    behaviour); "cover" walks a shuffled full factorial so distinct combinations come first."""
    if not dims:
        raise DimensionError("sample_combinations: no dimensions")
    rng = np.random.default_rng(seed)
    if mode == "random":
        return [{d.name: d.values[int(rng.integers(len(d.values)))] for d in dims}
                for _ in range(n)]
    if mode != "cover":
        raise ValueError(f"mode must be random|cover, got {mode!r}")
    total = math.prod(len(d.values) for d in dims)
    if total > 100_000:
        raise ValueError(f"cover: {total} combinations are too many to enumerate")
    combos = list(itertools.product(*[d.values for d in dims]))
    out = []
    while len(out) < n:
        for j in rng.permutation(len(combos)):
            out.append(dict(zip([d.name for d in dims], combos[j], strict=True)))
            if len(out) == n:
                break
    return out


def response_prompt(prompt: str, reqs: dict[str, str] | None, word_limit: int = 30,
                    context: str = "") -> str:
    """The released request layout: limit, context, prompt, then "Requirements: dim: value"."""
    ctx = f"This is the context: {context}\n---end context ---\n" if context else ""
    body = f"Limit the response to {word_limit} words.\n####\n{ctx}Prompt: {prompt}\n####"
    if reqs:
        body += "\nRequirements:\n" + "\n".join(f"{k}: {v}" for k, v in reqs.items())
    return body


@dataclasses.dataclass
class Response:
    """A generated response with its labels and zoom-level abstractions."""

    id: int
    text: str
    labels: dict[str, str]
    title: str = ""
    keywords: list[str] = dataclasses.field(default_factory=list)
    summary: str = ""
    neighbours: list[int] = dataclasses.field(default_factory=list)


def generate_responses(backend: Any, prompt: str, combos: Sequence[dict[str, str] | None],
                       cfg: GenConfig = GenConfig(max_tokens=40, temperature=0.7),
                       word_limit: int = 30, batch: int = 20) -> list[Response]:
    """One response per combination (``None`` = unstructured baseline, no requirements);
    labels are the assigned values."""
    out = []
    for s in range(0, len(combos), batch):
        chunk = combos[s: s + batch]
        texts = _complete_batch(backend, [response_prompt(prompt, c, word_limit) for c in chunk],
                                dataclasses.replace(cfg, seed=cfg.seed + s))
        for c, t in zip(chunk, texts, strict=True):
            out.append(Response(len(out), t, dict(c or {})))
    return out


def classify(backend: Any, text: str, dim: Dimension, mode: str = "auto") -> str:
    """LLM labelling for a dimension added later.

    Args:
        mode: "score": PMI-calibrated likelihood of each value (scoring tier); "choice":
            greedy decoding under ``Choice(values)`` (the reply is always one of the values;
            for backends without the scoring tier that enforce ``response_format``);
            "auto": "score" when the backend can score, else "choice".
    """
    from jaxlm.llm.helpers import choose

    if mode not in ("auto", "score", "choice"):
        raise ValueError(f"classify: mode must be auto|score|choice, got {mode!r}")
    prefix = f"Text: {text}\nQuestion: which {dim.name} does the text have?\nAnswer:"
    if mode == "auto":
        mode = "score" if "score" in getattr(backend, "capabilities", ()) else "choice"
    if mode == "choice":
        rf = {"type": "choice", "choice": list(dim.values)}
        out = backend.complete(prefix + " ", GenConfig(max_tokens=32, temperature=0.0,
                                                        response_format=rf))[0].text.strip()
        if out not in dim.values:
            raise ValueError(f"classify: the backend ignored the Choice constraint (reply "
                             f"{out[:60]!r} is not one of {list(dim.values)}); use mode='score'")
        return out
    j, _ = choose(backend, prefix, [f" {v}" for v in dim.values], norm="pmi",
                  null_prefix=f"Question: which {dim.name}?\nAnswer:")
    return dim.values[j]


_STOP = set("the a an and or of to in on for with is are be it this that as at by from your "
            "you i we my our its their his her".split())


def fallback_abstraction(text: str) -> dict[str, Any]:
    """Programmatic title / keywords / summary when the LLM's JSON is invalid."""
    w = [x for x in words(text) if x not in _STOP and len(x) > 2]
    kw = [k for k, _ in Counter(w).most_common(5)]
    tw = text.split()
    return {"Title": " ".join(tw[:5]), "Key Words": kw, "Summary": " ".join(tw[:20])}


def _valid_abstraction(text: str) -> dict[str, Any] | None:
    from jaxlm.llm.helpers import extract_json

    try:
        o = extract_json(text)
    except ValueError:
        return None
    if (isinstance(o, dict) and isinstance(o.get("Title"), str)
            and isinstance(o.get("Key Words"), list) and isinstance(o.get("Summary"), str)):
        o["Key Words"] = [str(k) for k in o["Key Words"]][:5]
        return o
    return None


def abstract_responses(backend: Any, texts: Sequence[str], retries: int = 2,
                       cfg: GenConfig = GenConfig(max_tokens=80, temperature=0.7)
                       ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Title (<= 5 words), Key Words (<= 5), Summary (<= 20 words) as JSON from the LLM, in
    batches; invalid replies are retried up to ``retries`` rounds, then
    ``fallback_abstraction`` is used (marked "fallback": True).

    Returns:
        (abstractions, {"attempts", "valid", "valid_rate", "fallback_rate"}).
    """
    req = ("Text: {}\nDescribe the text as JSON with keys \"Title\" (at most 5 words), "
           "\"Key Words\" (a list of at most 5 words) and \"Summary\" (at most 20 words).\nJSON:")
    out: list[dict[str, Any] | None] = [None] * len(texts)
    attempts = valid = 0
    for a in range(retries):
        todo = [i for i, o in enumerate(out) if o is None]
        if not todo:
            break
        batch = [req.format(texts[i]) for i in todo]
        # padded to the first round's size: one batch shape, one compiled program
        batch += batch[:1] * (len(texts) - len(batch))
        replies = _complete_batch(backend, batch, dataclasses.replace(cfg, seed=cfg.seed + a))
        replies = replies[: len(todo)]
        for i, rep in zip(todo, replies, strict=True):
            attempts += 1
            o = _valid_abstraction(rep)
            if o is not None:
                valid += 1
                out[i] = o
    fb = 0
    for i, o in enumerate(out):
        if o is None:
            fb += 1
            out[i] = dict(fallback_abstraction(texts[i]), fallback=True)
    return out, {"attempts": attempts, "valid": valid,
                 "valid_rate": valid / max(attempts, 1), "fallback_rate": fb / max(len(texts), 1)}


# ---------------------------------------------------------------------------- metrics
def label_fidelity(responses: Sequence[Response], dims: Sequence[Dimension]
                   ) -> dict[str, dict[str, float]]:
    """Per checkable dimension: agreement of the check with the assigned value, and chance."""
    out = {}
    for d in dims:
        if d.check is None:
            continue
        rs = [r for r in responses if d.name in r.labels]
        if not rs:
            continue
        agree = [d.check(r.text) == r.labels[d.name] for r in rs]
        out[d.name] = {"fidelity": float(np.mean(agree)), "chance": 1.0 / len(d.values),
                       "n": len(rs)}
    return out


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all texts."""
    grams = [tuple(w[i: i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def bleu(hyp: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU with add-one smoothing for n > 1 and the brevity penalty."""
    if not hyp:
        return 0.0
    logp = 0.0
    for n in range(1, max_n + 1):
        h = Counter(tuple(hyp[i: i + n]) for i in range(len(hyp) - n + 1))
        maxref: Counter = Counter()
        for r in refs:
            for g, c in Counter(tuple(r[i: i + n]) for i in range(len(r) - n + 1)).items():
                maxref[g] = max(maxref[g], c)
        match = sum(min(c, maxref[g]) for g, c in h.items())
        tot = max(sum(h.values()), 0)
        add = 0 if n == 1 else 1
        if match + add == 0:
            return 0.0
        logp += math.log((match + add) / (tot + add)) / max_n
    rl = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1] if refs else len(hyp)
    bp = 1.0 if len(hyp) > rl else math.exp(1 - rl / max(len(hyp), 1))
    return bp * math.exp(logp)


def self_bleu(texts: Sequence[str]) -> float:
    """Mean BLEU of each text against all others (lower = more diverse)."""
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return float("nan")
    return float(np.mean([bleu(h, toks[:i] + toks[i + 1:]) for i, h in enumerate(toks)]))


def tfidf_matrix(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised TF-IDF rows [N, V] (numpy; smooth idf)."""
    toks = [words(t) for t in texts]
    vocab = sorted({w for t in toks for w in t})
    if not vocab:
        return np.zeros((len(texts), 1))
    idx = {w: j for j, w in enumerate(vocab)}
    tf = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(toks):
        for w in t:
            tf[i, idx[w]] += 1
    df = (tf > 0).sum(0)
    x = tf * (np.log((1 + len(texts)) / (1 + df)) + 1)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def diversity(texts: Sequence[str]) -> dict[str, float]:
    """distinct-1/2, self-BLEU and mean pairwise TF-IDF cosine distance."""
    x = tfidf_matrix(texts)
    sim = x @ x.T
    iu = np.triu_indices(len(texts), 1)
    return {"distinct-1": distinct_n(texts, 1), "distinct-2": distinct_n(texts, 2),
            "self-BLEU": self_bleu(texts),
            "pairwise distance": float(np.mean(1 - sim[iu])) if len(iu[0]) else float("nan"),
            "unique texts": float(len(set(texts)) / max(len(texts), 1))}


def coverage(combos: Sequence[dict[str, str]], dims: Sequence[Dimension]) -> float:
    """Distinct value combinations used / min(N, all combinations)."""
    total = math.prod(len(d.values) for d in dims)
    seen = {tuple(c[d.name] for d in dims) for c in combos}
    return len(seen) / max(min(len(combos), total), 1)


def add_neighbours(responses: Sequence[Response], k: int = 5) -> None:
    """Precomputes "more like this": the k nearest responses by TF-IDF cosine."""
    x = tfidf_matrix([r.text for r in responses])
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    for i, r in enumerate(responses):
        r.neighbours = [int(j) for j in np.argsort(-sim[i], kind="stable")[:k]]


# ---------------------------------------------------------------------------- experiment
@dataclasses.dataclass(frozen=True)
class LuminateConfig:
    """Luminate demo settings.

    Attributes:
        prompt: the writing task.
        n: responses (structured and unstructured baseline each).
        dims: library dimensions used to condition responses (checkable).
        x_dim, y_dim: grid axes of the page.
        sampler: "cover" (factorial coverage) or "random" (released behaviour).
        llm_dims: also ask the LLM for dimensions (measures JSON validity / fallback).
        dim_style: "schema" (few-shot prompt, reply decoded under ``dimension_format``:
            exact JSON layout enforced token by token in the decode loop), "constrained"
            (few-shot prompt + entry-level grammar emulation by cutting free replies), "fewshot" (example + forced JSON start, free decoding) or
            "instruction" (the released request paraphrase).
        dim_retries: attempts per dimension kind.
        dim_max_tokens: token budget of a dimension-JSON reply.
        n_abstract: responses abstracted by the LLM (the rest use the fallback).
        abstract_max_tokens: token budget of an abstraction-JSON reply.
        max_tokens, temperature, word_limit: response decoding (same for the baseline).
        seed: sampling seed.
        use_llm_dims: build the design space from the LLM's own dimensions (the first 3
            it generated, the first two as page axes; labels checked by ``classify``) when
            it produced at least 2; else the library dimensions ``dims``.
        n_label: responses per set whose labels ``classify`` checks (LLM dimensions).
    """

    prompt: str = "Write a one-sentence slogan for a reusable water bottle."
    n: int = 40
    dims: tuple[str, ...] = ("Perspective", "Sentence form", "Sentiment", "Formality")
    x_dim: str = "Sentence form"
    y_dim: str = "Perspective"
    sampler: str = "cover"
    llm_dims: bool = True
    dim_style: str = "constrained"
    dim_retries: int = 5
    dim_max_tokens: int = 120
    n_abstract: int = 40
    abstract_max_tokens: int = 80
    max_tokens: int = 32
    temperature: float = 0.7
    word_limit: int = 20
    seed: int = 0
    use_llm_dims: bool = False
    n_label: int = 16

    def __post_init__(self):
        """Refuses settings that would run and write an empty or meaningless page."""
        for f in ("n", "dim_retries", "dim_max_tokens", "abstract_max_tokens", "max_tokens",
                  "word_limit"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LuminateConfig.{f} must be an integer >= 1, got {v!r} "
                                 f"(e.g. --override={f}=8)")
        if isinstance(self.n_abstract, bool) or not isinstance(self.n_abstract, int) \
                or self.n_abstract < 0:
            raise ValueError(f"LuminateConfig.n_abstract must be an integer >= 0, got "
                             f"{self.n_abstract!r}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"LuminateConfig.temperature must be a finite number >= 0, got "
                             f"{self.temperature!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("LuminateConfig.prompt must be a non-empty string")
        if self.sampler not in ("cover", "random"):
            raise ValueError(f"LuminateConfig.sampler must be cover|random, got "
                             f"{self.sampler!r}")
        if self.dim_style not in DIM_STYLES:
            raise ValueError(f"LuminateConfig.dim_style must be one of {DIM_STYLES}, got "
                             f"{self.dim_style!r}")
        unknown = [d for d in self.dims if d not in LIBRARY]
        if unknown:
            raise DimensionError(f"LuminateConfig.dims: unknown dimensions {unknown}; the library "
                             f"has {sorted(LIBRARY)}")
        for a in ("x_dim", "y_dim"):
            if getattr(self, a) not in self.dims:
                raise DimensionError(f"LuminateConfig.{a}={getattr(self, a)!r} is not among dims "
                                 f"{self.dims}")


def presets():
    """Named ``LuminateConfig`` presets (a ``jaxlm.utils.config.Registry``): default, quick
    (the ~2-minute reproduction) and their tiny ``*_test`` twins."""
    from jaxlm.utils.config import Registry

    reg: Registry = Registry("luminate")
    own = dict(dim_style="schema", use_llm_dims=True)  # the model's dimensions, schema-decoded
    reg.add("default", LuminateConfig(**own))
    # schema-decoded dimension replies get 48 tokens per dimension (+16) whatever the budget
    reg.add("quick", LuminateConfig(n=40, dim_retries=2, dim_max_tokens=64, n_abstract=8,
                                    abstract_max_tokens=64, max_tokens=24, **own))
    tiny = LuminateConfig(n=8, dim_retries=2, n_abstract=4, max_tokens=8)
    reg.add("default_test", tiny)
    reg.add("quick_test", tiny)
    return reg


def scripted_backend() -> Any:
    """Canned replies that honour the requirements (for a model-free run of the pipeline)."""
    from jaxlm.llm import ScriptedBackend

    def reply(t: str) -> str:
        if "Describe the text" in t:
            return '{"Title": "Bottle", "Key Words": ["water"], "Summary": "About water."}'
        if "JSON" in t:
            return '{"Tone": ["warm", "cool", "dry", "bold", "calm", "wry"]}'
        person = {"first": "I love my bottle", "second": "You love your bottle",
                  "third": "She loves her bottle"}
        p = next((v for k, v in person.items() if f"{k} person" in t), "Bottles")
        end = "?" if "question" in t else "!" if "exclamation" in t else "."
        return p + end

    return ScriptedBackend(rules=[(".", reply)])


def run_luminate(backend: Any, cfg: LuminateConfig, outdir: Any = None) -> dict[str, Any]:
    """Runs the pipeline and the unstructured baseline; writes luminate.html and
    luminate.json under ``outdir`` when given.

    Returns:
        {"metrics": {...}, "responses": [...], "html": path or None}.
    """
    import pathlib
    import time

    dims = library_dims(cfg.dims)
    for a in (cfg.x_dim, cfg.y_dim):
        if a not in cfg.dims:
            raise DimensionError(f"axis {a!r} is not among the chosen dimensions {cfg.dims}")
    t0 = time.time()
    timing = {}
    metrics: dict[str, Any] = {}
    if cfg.llm_dims:
        llm_dims, st = generate_dimensions(
            backend, cfg.prompt, 3, retries=cfg.dim_retries,
            cfg=GenConfig(max_tokens=cfg.dim_max_tokens, temperature=0.7, seed=cfg.seed),
            style=cfg.dim_style)
        metrics["dimension_json"] = {"style": cfg.dim_style, "valid_rate": st.valid_rate,
                                     "attempts": st.attempts, "valid": st.valid,
                                     "repaired_rate": st.repaired_rate,
                                     "entries": st.entries,
                                     "entry_valid_rate": st.entry_valid_rate,
                                     "library_fill_rate": st.library_fill_rate,
                                     "fallback_rate": st.fallback_rate,
                                     "dims": [(d.name, d.kind, list(d.values)) for d in llm_dims]}
        timing["dimensions_s"] = time.time() - t0
    x_dim, y_dim, n_label, source = cfg.x_dim, cfg.y_dim, cfg.n, "library"
    own = [d for d in llm_dims if d.check is None][:3] if cfg.llm_dims else []
    if cfg.use_llm_dims and len(own) >= 2:
        import functools

        # the model's own dimensions; their labels are checked by the LLM (PMI choice)
        dims = [dataclasses.replace(d, check=functools.partial(classify, backend, dim=d))
                for d in own]
        x_dim, y_dim, n_label = dims[0].name, dims[1].name, min(cfg.n_label, cfg.n)
        source = "llm"
    metrics["dims_source"] = source
    metrics["dims_used"] = [(d.name, d.kind, list(d.values)) for d in dims]
    combos = sample_combinations(dims, cfg.n, cfg.seed, cfg.sampler)
    gcfg = GenConfig(max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed,
                     stop=("\n\n",))
    t1 = time.time()
    resp = generate_responses(backend, cfg.prompt, combos, gcfg, cfg.word_limit)
    base = generate_responses(backend, cfg.prompt, [None] * cfg.n, gcfg, cfg.word_limit)
    timing["generation_s"] = time.time() - t1
    t1 = time.time()
    k = min(cfg.n_abstract, len(resp))
    abst, ast = abstract_responses(
        backend, [r.text or "(empty)" for r in resp[:k]],
        cfg=GenConfig(max_tokens=cfg.abstract_max_tokens, temperature=0.7, seed=cfg.seed))
    abst += [dict(fallback_abstraction(r.text), fallback=True) for r in resp[k:]]
    for r, a in zip(resp, abst, strict=True):
        r.title, r.keywords, r.summary = a["Title"], a["Key Words"], a["Summary"]
    timing["abstraction_s"] = time.time() - t1
    add_neighbours(resp)
    metrics["abstraction_json"] = ast | {"n_llm": k}
    metrics["label_fidelity"] = label_fidelity(resp[:n_label], dims)
    # the baseline's "fidelity" to the same combinations: how often the checks agree by chance
    for r, c in zip(base, combos, strict=True):
        r.labels = dict(c)
    metrics["baseline_fidelity"] = label_fidelity(base[:n_label], dims)
    metrics["diversity_structured"] = diversity([r.text for r in resp])
    metrics["diversity_unstructured"] = diversity([r.text for r in base])
    metrics["coverage"] = coverage(combos, dims)
    metrics["coverage_random_sampler"] = coverage(
        sample_combinations(dims, cfg.n, cfg.seed, "random"), dims)
    metrics["n"] = cfg.n
    metrics["timing"] = timing
    for r in base:
        r.labels = {}
    path = None
    if outdir is not None:
        outdir = pathlib.Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / "luminate.html"
        path.write_text(render_html(cfg.prompt, resp, dims, x_dim, y_dim,
                                    metrics=metrics), encoding="utf-8")
        (outdir / "luminate.json").write_text(json.dumps(
            {"metrics": metrics, "responses": [dataclasses.asdict(r) for r in resp],
             "baseline": [r.text for r in base]}, indent=1, default=str))
    return {"metrics": metrics, "responses": resp, "baseline": base, "dims": dims,
            "html": str(path) if path else None}
