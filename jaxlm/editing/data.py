"""A tiny CounterFact-style edit set built offline from facts the model knows.

Nothing is downloaded: candidate facts are listed here, the model is *measured*
on each, and only facts it gets right (top-1 = the true single-token object)
become edits. Each edit gets a counterfactual single-token target from
``NEW_TARGETS`` (never a true object of any kept subject), paraphrase prompts
(kept only if correct before the edit) and neighbourhood prompts (other known
subjects of the same relation, which must not change).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxlm.core import ModelConfig
from jaxlm.editing import hooks
from jaxlm.editing.requests import EditRequest, TokenizerLike, encode_target

Params = dict[str, Any]

# relation -> (rewrite template, paraphrase templates, {subject: true object})
RELATIONS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "capital": (
        "The capital of {} is",
        ("The capital city of {} is", "The capital of the country {} is",
         "{} has its capital in the city of"),
        {
            "France": " Paris", "Germany": " Berlin", "Japan": " Tokyo", "Greece": " Athens",
            "England": " London", "China": " Beijing", "Portugal": " Lisbon", "Italy": " Rome",
            "Spain": " Madrid", "Russia": " Moscow", "Canada": " Ottawa", "Egypt": " Cairo",
            "Poland": " Warsaw", "Sweden": " Stockholm", "Finland": " Helsinki",
            "Denmark": " Copenhagen", "Hungary": " Budapest", "Belgium": " Brussels",
            "Netherlands": " Amsterdam", "Turkey": " Ankara", "India": " Delhi",
            "Thailand": " Bangkok", "Kenya": " Nairobi", "Peru": " Lima", "Cuba": " Havana",
            "Chile": " Santiago", "Scotland": " Edinburgh", "Wales": " Cardiff",
            "Ukraine": " Kyiv", "Romania": " Bucharest", "Iran": " Tehran", "Iraq": " Baghdad",
            "Syria": " Damascus", "Lebanon": " Beirut", "Israel": " Jerusalem",
            "Mexico": " Mexico", "Argentina": " Buenos", "Indonesia": " Jakarta",
            "Vietnam": " Hanoi", "Philippines": " Manila", "Malaysia": " Kuala",
            "Australia": " Canberra", "Switzerland": " Bern", "Bulgaria": " Sofia",
            "Serbia": " Belgrade", "Croatia": " Zagreb", "Afghanistan": " Kabul",
            "Pakistan": " Islamabad", "Nepal": " Kathmandu", "Korea": " Seoul",
        },
    ),
    "language": (
        "The official language of {} is",
        ("The main language spoken in {} is", "People in {} mostly speak"),
        {
            "France": " French", "Germany": " German", "Japan": " Japanese", "Italy": " Italian",
            "Spain": " Spanish", "Russia": " Russian", "China": " Chinese", "Greece": " Greek",
            "Portugal": " Portuguese", "Brazil": " Portuguese", "Poland": " Polish",
            "Sweden": " Swedish", "Turkey": " Turkish", "Netherlands": " Dutch",
            "Finland": " Finnish", "Hungary": " Hungarian", "Mexico": " Spanish",
            "Korea": " Korean", "Thailand": " Thai", "Vietnam": " Vietnamese",
            "Egypt": " Arabic", "Iran": " Persian", "Denmark": " Danish", "Norway": " Norwegian",
        },
    ),
}
# Counterfactual objects per relation (single tokens; never a kept truth of that relation).
NEW_TARGETS = {
    "capital": (" Vienna", " Dublin", " Prague", " Oslo"),
    "language": (" Swahili", " Latin", " Hebrew", " Icelandic"),
}


@dataclasses.dataclass(frozen=True)
class EditCase:
    """One edit with its evaluation prompts (all strings; targets with leading space).

    Attributes:
        request: the edit (prompt template, subject, target_new, target_true).
        relation: relation name.
        p_true_pre: P(target_true) on the rewrite prompt before any edit.
        paraphrases: paraphrase prompts (full text) correct before the edit.
        neighbours: (prompt, true object) of other subjects, same relation, correct before.
    """

    request: EditRequest
    relation: str
    p_true_pre: float
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> EditCase:
        return EditCase(
            request=EditRequest(**d["request"]), relation=d["relation"],
            p_true_pre=d["p_true_pre"], paraphrases=tuple(d["paraphrases"]),
            neighbours=tuple(tuple(x) for x in d["neighbours"]),
        )


def _single(tok: TokenizerLike, prompt: str, obj: str) -> int | None:
    ids = encode_target(tok, prompt, obj)
    return ids[0] if len(ids) == 1 else None


def measure_facts(
    params: Params, cfg: ModelConfig, tok: TokenizerLike, prompts: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Top-1 and P(object) for each (prompt, object) pair (objects must be single tokens)."""
    lp = hooks.next_token_logprobs(params, cfg, [tok.encode(p) for p, _ in prompts])
    out = []
    for (p, o), row in zip(prompts, lp, strict=True):
        tid = _single(tok, p, o)
        top = int(np.argmax(row))
        out.append({"prompt": p, "object": o, "single": tid is not None,
                    "p": float(np.exp(row[tid])) if tid is not None else 0.0,
                    "top1": tok.decode([top]), "correct": tid is not None and top == tid})
    return out


def build_cases(
    params: Params,
    cfg: ModelConfig,
    tok: TokenizerLike,
    *,
    relations: Sequence[str] = ("capital", "language"),
    n_neighbours: int = 5,
    cache_path: str | pathlib.Path | None = None,
) -> tuple[list[EditCase], dict[str, Any]]:
    """Measures the candidate facts and builds the gated edit set.

    Returns:
        (cases ordered capital-first by decreasing P(true), a measurement report).
    """
    if cache_path is not None and pathlib.Path(cache_path).exists():
        d = json.loads(pathlib.Path(cache_path).read_text())
        return [EditCase.from_json(c) for c in d["cases"]], d["report"]
    cases: list[EditCase] = []
    report: dict[str, Any] = {}
    for rel in relations:
        template, paras, facts = RELATIONS[rel]
        rows = measure_facts(params, cfg, tok, [(template.format(s), o) for s, o in facts.items()])
        known = [(s, r) for s, r in zip(facts, rows, strict=True) if r["correct"]]
        known.sort(key=lambda x: -x[1]["p"])
        report[rel] = {"candidates": len(facts), "known": len(known),
                       "measured": {s: (r["top1"], round(r["p"], 3)) for s, r in zip(facts, rows,
                                                                                     strict=True)}}
        truths = {facts[s] for s, _ in known}
        targets = [t for t in NEW_TARGETS[rel] if t not in truths]
        para_prompts = [(p.format(s), facts[s]) for s, _ in known for p in paras]
        para_ok = {r["prompt"] for r in measure_facts(params, cfg, tok, para_prompts)
                   if r["correct"]}
        for i, (s, r) in enumerate(known):
            new = targets[i % len(targets)]
            others = [(template.format(o), facts[o]) for o, _ in known if o != s]
            rng = np.random.default_rng(i)
            pick = rng.permutation(len(others))[:n_neighbours]
            cases.append(EditCase(
                request=EditRequest(template, s, new, facts[s]), relation=rel,
                p_true_pre=r["p"],
                paraphrases=tuple(p.format(s) for p in paras if p.format(s) in para_ok),
                neighbours=tuple(others[j] for j in sorted(pick)),
            ))
    if cache_path is not None:
        pathlib.Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(cache_path).write_text(json.dumps(
            {"cases": [c.to_json() for c in cases], "report": report}, indent=1))
    return cases, report
