"""Capital-city facts, TACS prompts with character-offset spans, and entity splits.

Everything here is generated offline from the hand-written ``CAPITALS`` table.
A fact's *untruthful* statement swaps in another country's real capital, so every
city appears in both true and false statements (no lexical shortcut for a probe).

Prompt layout (raw text, no chat template)::

    Information: <sentence 1> <sentence 2>\n
    Question: What is the capital of <country>?\n
    Answer: The capital of <country> is

The answer is the model's next token, compared with the first token of
" <capital>". Sentence spans are located by character offsets mapped to tokens
(never by searching token strings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Greece", "Athens"),
    ("England", "London"), ("China", "Beijing"), ("Portugal", "Lisbon"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Russia", "Moscow"), ("Canada", "Ottawa"), ("Egypt", "Cairo"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
    ("Czech Republic", "Prague"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Hungary", "Budapest"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Israel", "Jerusalem"), ("Saudi Arabia", "Riyadh"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"), ("Bangladesh", "Dhaka"),
    ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("South Korea", "Seoul"), ("North Korea", "Pyongyang"), ("Mongolia", "Ulaanbaatar"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("United States", "Washington"),
    ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Ecuador", "Quito"),
    ("Bolivia", "La Paz"), ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"),
    ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"),
    ("Libya", "Tripoli"), ("Sudan", "Khartoum"), ("Senegal", "Dakar"), ("Uganda", "Kampala"),
    ("Tanzania", "Dodoma"), ("Zimbabwe", "Harare"), ("Zambia", "Lusaka"),
    ("Angola", "Luanda"), ("South Africa", "Pretoria"), ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"), ("Iceland", "Reykjavik"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Belarus", "Minsk"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Albania", "Tirana"),
    ("Georgia", "Tbilisi"), ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"),
    ("Kazakhstan", "Astana"), ("Uzbekistan", "Tashkent"), ("Qatar", "Doha"),
    ("Kuwait", "Kuwait City"), ("Oman", "Muscat"), ("Yemen", "Sanaa"),
    ("Sri Lanka", "Colombo"), ("Myanmar", "Naypyidaw"), ("Cambodia", "Phnom Penh"),
    ("Laos", "Vientiane"), ("Taiwan", "Taipei"), ("Singapore", "Singapore"),
    ("Jamaica", "Kingston"), ("Haiti", "Port-au-Prince"), ("Panama", "Panama City"),
    ("Costa Rica", "San Jose"), ("Nicaragua", "Managua"), ("Honduras", "Tegucigalpa"),
    ("Guatemala", "Guatemala City"), ("Cyprus", "Nicosia"), ("Malta", "Valletta"),
    ("Luxembourg", "Luxembourg"), ("Monaco", "Monaco"), ("Mali", "Bamako"),
    ("Niger", "Niamey"), ("Chad", "N'Djamena"), ("Somalia", "Mogadishu"),
    ("Rwanda", "Kigali"), ("Madagascar", "Antananarivo"), ("Mozambique", "Maputo"),
    ("Namibia", "Windhoek"), ("Botswana", "Gaborone"),
)

TRUE, FALSE = 1, 0


def statement(country: str, city: str) -> str:
    return f"The capital of {country} is {city}."


def question(country: str) -> str:
    return f"Question: What is the capital of {country}?\nAnswer: The capital of {country} is"


@dataclasses.dataclass(frozen=True)
class Fact:
    """A country with its capital and a counterfactual capital (another country's).

    Attributes:
        country, capital, foil: names; foil is the untruthful capital.
        answer_id, foil_id: first token ids of " capital" / " foil".
    """

    country: str
    capital: str
    foil: str
    answer_id: int
    foil_id: int


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A tokenised TACS prompt.

    Attributes:
        ids: token ids [T].
        sent_spans: per context sentence, (start, end) token indices (end exclusive).
        sent_labels: per sentence, 1 truthful / 0 untruthful.
        object_starts: per sentence, the token index where the object (the city) starts.
        fact: the fact asked about.
    """

    ids: tuple[int, ...]
    sent_spans: tuple[tuple[int, int], ...]
    sent_labels: tuple[int, ...]
    object_starts: tuple[int, ...]
    fact: Fact

    def token_labels(self, label_from: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """(labels [T], weight [T]): sentence labels on its tokens; weight 0 off-context.

        label_from "object": only tokens from the object onwards carry a label.
        """
        t = len(self.ids)
        lab, w = np.zeros(t, np.float32), np.zeros(t, np.float32)
        for (s, e), y, o in zip(self.sent_spans, self.sent_labels, self.object_starts,
                                strict=True):
            s0 = o if label_from == "object" else s
            lab[s0:e], w[s0:e] = y, 1.0
        return lab, w


def _char_to_token(offsets: Sequence[tuple[int, int]], lo: int, hi: int) -> tuple[int, int]:
    """Token range [i, j) of the tokens overlapping characters [lo, hi)."""
    idx = [k for k, (a, b) in enumerate(offsets) if b > lo and a < hi]
    if not idx:
        raise ValueError(f"no token overlaps characters [{lo}, {hi})")
    return idx[0], idx[-1] + 1


def make_prompt(tokenizer, fact: Fact, sentences: Sequence[tuple[str, int]] = ()) -> Prompt:
    """Builds the prompt with context ``sentences`` [(city, label), ...] (may be empty)."""
    text, spans_c, obj_c = "", [], []
    if sentences:
        text = "Information:"
        for city, _ in sentences:
            s = statement(fact.country, city)
            start = len(text) + 1
            text += " " + s
            spans_c.append((start, start + len(s)))
            obj_c.append(start + s.rindex(city) - 1)  # include the leading space of " city"
        text += "\n"
    text += question(fact.country)
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    spans = tuple(_char_to_token(enc.offsets, a, b) for a, b in spans_c)
    objs = tuple(_char_to_token(enc.offsets, o, o + 2)[0] for o in obj_c)
    return Prompt(tuple(enc.ids), spans, tuple(lab for _, lab in sentences), objs, fact)


def first_token(tokenizer, city: str) -> int:
    return tokenizer.encode(" " + city)[0]


def build_facts(tokenizer, seed: int = 0, table=CAPITALS) -> list[Fact]:
    """Facts with unique first answer tokens and a foil (another capital, different first token).

    Countries whose capital's first token collides with another capital's are dropped,
    so "answer token == first token of the capital" identifies one city.
    """
    firsts = [first_token(tokenizer, c) for _, c in table]
    counts = {f: firsts.count(f) for f in firsts}
    rows = [(co, ca, f) for (co, ca), f in zip(table, firsts, strict=True) if counts[f] == 1]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rows))
    facts = []
    for i, (co, ca, f) in enumerate(rows):
        j = perm[i] if perm[i] != i else perm[(i + 1) % len(rows)]
        if j == i:
            j = (i + 1) % len(rows)
        facts.append(Fact(co, ca, rows[j][1], f, rows[j][2]))
    return facts


def entity_split(items: Sequence, fractions=(0.5, 0.2, 0.3), seed: int = 0) -> tuple[list, ...]:
    """Shuffles entities and splits them into disjoint groups (e.g. train / val / test)."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    idx = np.random.default_rng(seed).permutation(len(items))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(items)).astype(int)
    return tuple([items[i] for i in part] for part in np.split(idx, cuts))


def contexts(fact: Fact, rng: np.random.Generator) -> dict[str, list[tuple[str, int]]]:
    """The four context conditions of a fact: none, truthful, untruthful, mixed (random order)."""
    mixed = [(fact.capital, TRUE), (fact.foil, FALSE)]
    if rng.random() < 0.5:
        mixed = mixed[::-1]
    return {"none": [], "truthful": [(fact.capital, TRUE)], "untruthful": [(fact.foil, FALSE)],
            "mixed": mixed}
