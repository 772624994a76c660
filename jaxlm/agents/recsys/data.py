"""Sequential-recommendation data: ML-1M ``.dat`` and RecBole atomic loaders, a synthetic
ML-1M-format generator with latent structure, leave-one-out splits and candidate sets.

Data flow: ``load_ml1m(dir)`` / ``load_recbole(dir, name)`` / ``generate_synthetic(cfg)``
-> ``RecData`` (titles + per-user time-ordered item sequences) -> ``leave_one_out`` ->
``Split`` -> ``make_candidates`` (ground truth + sampled negatives, shuffled).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence

import numpy as np

ML1M_FORMATS = {
    "movies.dat": "MovieID::Title (Year)::Genre|Genre|...  (latin-1, one movie per line)",
    "ratings.dat": "UserID::MovieID::Rating::Timestamp  (integers, latin-1)",
    "users.dat": "UserID::Gender::Age::Occupation::Zip-code",
}


class DataFormatError(ValueError):
    """A dataset file is missing or does not match its expected format."""


@dataclasses.dataclass
class RecData:
    """Items and per-user interaction sequences.

    Attributes:
        name: dataset name ("ml-1m", "lastfm", "Games", "synthetic", ...).
        titles: item id -> display title (no year; "Matrix, The" -> "The Matrix").
        sequences: user id -> item ids in time order.
        times: user id -> timestamps aligned with ``sequences`` (may be empty lists).
        genres: item id -> genre names (may be empty).
        domain: prompt wording key: "movie", "music" or "game".
        world: the generator (``SyntheticWorld``) for oracle probabilities, else None.
    """

    name: str
    titles: dict[int, str]
    sequences: dict[int, list[int]]
    times: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    genres: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    domain: str = "movie"
    world: SyntheticWorld | None = None

    @property
    def items(self) -> list[int]:
        return sorted(self.titles)


def clean_title(title: str) -> tuple[str, int | None]:
    """Splits "Matrix, The (1999)" into ("The Matrix", 1999)."""
    t = title.strip()
    year = None
    m = re.match(r"^(.*)\s+\((\d{4})\)\s*$", t)
    if m:
        t, year = m.group(1).strip(), int(m.group(2))
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)$", t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return t, year


def _read_lines(path: pathlib.Path, fmt: str) -> list[str]:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found; expected a file in the format {fmt}")
    text = path.read_bytes().decode("latin-1")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataFormatError(f"{path}: file is empty; expected lines in the format {fmt}")
    return lines


def load_ml1m(root: str | pathlib.Path) -> RecData:
    """Loads MovieLens-1M raw files (``movies.dat`` and ``ratings.dat``) from ``root``.

    Raises:
        DataFormatError: naming the file, line and expected format on missing/garbled input.
    """
    root = pathlib.Path(root)
    titles, genres = {}, {}
    fmt = ML1M_FORMATS["movies.dat"]
    for n, ln in enumerate(_read_lines(root / "movies.dat", fmt), 1):
        parts = ln.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise DataFormatError(f"{root / 'movies.dat'} line {n}: {ln[:80]!r} does not match "
                                  f"the expected format {fmt}")
        iid = int(parts[0])
        titles[iid] = clean_title(parts[1])[0]
        genres[iid] = [g for g in parts[2].strip().split("|") if g]
    fmt = ML1M_FORMATS["ratings.dat"]
    rows = []
    for n, ln in enumerate(_read_lines(root / "ratings.dat", fmt), 1):
        parts = ln.split("::")
        if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise DataFormatError(f"{root / 'ratings.dat'} line {n}: {ln[:80]!r} does not match "
                                  f"the expected format {fmt}")
        u, i, _, ts = (int(p) for p in parts)
        if i not in titles:
            raise DataFormatError(f"{root / 'ratings.dat'} line {n}: movie {i} is not in "
                                  "movies.dat")
        rows.append((u, ts, n, i))
    return _from_rows("ml-1m", titles, rows, genres, "movie")


def _from_rows(name, titles, rows, genres, domain) -> RecData:
    rows.sort()
    seqs: dict[int, list[int]] = {}
    times: dict[int, list[int]] = {}
    for u, ts, _, i in rows:
        seqs.setdefault(u, []).append(i)
        times.setdefault(u, []).append(ts)
    return RecData(name, titles, seqs, times, genres, domain)


def _read_atomic(path: pathlib.Path, needed: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    fmt = ("tab-separated with a typed header, e.g. 'user_id:token<TAB>item_id:token<TAB>"
           "timestamp:float'")
    lines = _read_lines(path, fmt)
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataFormatError(f"{path}: header {lines[0]!r} lacks columns {missing}; "
                              f"expected {fmt}")
    rows = []
    for n, ln in enumerate(lines[1:], 2):
        parts = ln.split("\t")
        if len(parts) != len(header):
            raise DataFormatError(f"{path} line {n}: {len(parts)} fields, header has "
                                  f"{len(header)}; expected {fmt}")
        rows.append(parts)
    return header, rows


def load_recbole(root: str | pathlib.Path, name: str) -> RecData:
    """Loads RecBole atomic files ``<name>.inter`` + ``<name>.item`` (LastFM-2K, ML-1M as
    prepared by LLMRank) or the pre-split ``<name>.test.inter`` with ``item_id_list``
    (Amazon Games). Item ids are mapped to ints in order of first appearance."""
    root = pathlib.Path(root)
    hdr, rows = _read_atomic(root / f"{name}.item", ["item_id"])
    tcol = next((c for c in hdr if c != "item_id" and ("title" in c or "name" in c)), None)
    if tcol is None:
        raise DataFormatError(f"{root / (name + '.item')}: no title/name column in {hdr}")
    gcol = next((c for c in hdr if "genre" in c or "categor" in c), None)
    idmap: dict[str, int] = {}
    titles, genres = {}, {}
    for r in rows:
        iid = idmap.setdefault(r[0], len(idmap) + 1)
        titles[iid] = clean_title(r[hdr.index(tcol)])[0]
        genres[iid] = r[hdr.index(gcol)].split() if gcol else []
    domain = "music" if "last" in name.lower() else "game" if "game" in name.lower() else "movie"

    def iid_of(tok, path):
        if tok not in idmap:
            raise DataFormatError(f"{path}: item {tok!r} is not in {name}.item")
        return idmap[tok]

    inter = root / f"{name}.inter"
    if inter.exists():
        hdr, rows = _read_atomic(inter, ["user_id", "item_id"])
        ui, ii = hdr.index("user_id"), hdr.index("item_id")
        ti = hdr.index("timestamp") if "timestamp" in hdr else None
        umap: dict[str, int] = {}
        out = []
        for n, r in enumerate(rows):
            ts = int(float(r[ti])) if ti is not None else n
            out.append((umap.setdefault(r[ui], len(umap) + 1), ts, n, iid_of(r[ii], inter)))
        return _from_rows(name, titles, out, genres, domain)
    test = root / f"{name}.test.inter"
    if not test.exists():
        raise DataFormatError(f"{root}: neither {name}.inter nor {name}.test.inter exists; "
                              "expected RecBole atomic files")
    hdr, rows = _read_atomic(test, ["user_id", "item_id_list", "item_id"])
    seqs, times = {}, {}
    for n, r in enumerate(rows):
        seq = [iid_of(t, test) for t in r[hdr.index("item_id_list")].split()]
        seq.append(iid_of(r[hdr.index("item_id")], test))
        seqs[n + 1] = seq
        times[n + 1] = list(range(len(seq)))
    return RecData(name, titles, seqs, times, genres, domain)


# ---------------------------------------------------------------------------- synthetic world
GENRE_WORDS = {
    "Sci-Fi": "Star Galaxy Orbit Nebula Comet Rocket Lunar Solar Cosmic Planet Asteroid Android",
    "Western": "Canyon Outlaw Sheriff Saloon Desert Rider Gold Dust Frontier Cattle Ranch Mesa",
    "Romance": "Love Heart Kiss Wedding Rose Moonlight Paris Darling Promise Valentine Sweet Bride",
    "Horror": "Blood Ghost Haunted Grave Shadow Scream Curse Zombie Crypt Nightmare Skull Demon",
    "Comedy": "Crazy Silly Funny Party Goofy Wacky Prank Banana Jolly Chaos Giggle Oops",
    "War": "Battle Soldier Tank Trench Victory Platoon Siege Bomber Admiral Front General Medal",
    "Animation": "Bunny Dragon Magic Toy Kitten Puppy Fairy Bubble Rainbow Tiny Candy Robot",
    "Crime": "Heist Mob Detective Murder Gun Cartel Alibi Witness Vault Gangster Deal Mafia",
}
_NUMERALS = ["", " II", " III", " IV"]


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Synthetic ML-1M-format world (spec §3.4).

    Attributes:
        n_users, n_items: sizes; items are split evenly over the latent genres.
        min_len, max_len: interactions per user (uniform).
        alpha: Dirichlet concentration of user genre preferences.
        stay: probability the next genre equals the previous item's genre.
        sequel_frac: fraction of items that belong to sequel chains.
        p_sequel: probability of watching the next unseen sequel of the last item.
        zipf: popularity exponent within a genre.
        seed: generator seed.
    """

    n_users: int = 1000
    n_items: int = 400
    min_len: int = 20
    max_len: int = 60
    alpha: float = 0.3
    stay: float = 0.7
    sequel_frac: float = 0.2
    p_sequel: float = 0.5
    zipf: float = 1.0
    seed: int = 0


class SyntheticWorld:
    """Latent genres, sequel chains and popularity; gives true next-item probabilities."""

    def __init__(self, cfg: SynthConfig):
        if cfg.n_items < 8 * 6 or cfg.n_users < 2 or cfg.min_len < 3 or cfg.max_len < cfg.min_len:
            raise ValueError(f"SynthConfig {cfg}: need n_items >= 48, n_users >= 2 and "
                             "3 <= min_len <= max_len")
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.genre_names = list(GENRE_WORDS)
        g = len(self.genre_names)
        self.item_genre = np.arange(cfg.n_items) % g  # item index -> genre
        self.titles: list[str] = [""] * cfg.n_items
        self.years = rng.integers(1950, 2001, cfg.n_items)
        self.next_sequel = np.full(cfg.n_items, -1)
        used: set[str] = set()
        for gi, gname in enumerate(self.genre_names):
            words = GENRE_WORDS[gname].split()
            idx = list(np.flatnonzero(self.item_genre == gi))
            n_seq = int(round(cfg.sequel_frac * len(idx)))
            pos = 0
            while pos < len(idx):
                while True:
                    a, b = rng.choice(len(words), 2, replace=False)
                    base = f"{words[a]} {words[b]}"
                    if base not in used:
                        used.add(base)
                        break
                chain = 1
                if n_seq > 1 and pos < n_seq:
                    chain = min(int(rng.integers(2, 4)), n_seq - pos, len(idx) - pos)
                for c in range(chain):
                    it = idx[pos + c]
                    self.titles[it] = base + _NUMERALS[c]
                    if c > 0:
                        self.next_sequel[idx[pos + c - 1]] = it
                        self.years[it] = min(2000, self.years[idx[pos + c - 1]] + 2)
                pos += max(chain, 1)
        # popularity: Zipf over a random order within each genre
        self.pop = np.zeros(cfg.n_items)
        for gi in range(g):
            idx = rng.permutation(np.flatnonzero(self.item_genre == gi))
            self.pop[idx] = 1.0 / (np.arange(len(idx)) + 1.0) ** cfg.zipf
        self.user_pref = rng.dirichlet(np.full(g, cfg.alpha), cfg.n_users)

    def next_probs(self, user: int, history: Sequence[int]) -> np.ndarray:
        """True next-item distribution over item indices (0-based) given ``history``."""
        cfg, g = self.cfg, len(self.genre_names)
        seen = np.zeros(cfg.n_items, bool)
        seen[list(history)] = True
        pref = self.user_pref[user]
        gp = pref.copy() if not history else (1 - cfg.stay) * pref + cfg.stay * np.eye(g)[
            self.item_genre[history[-1]]]
        w = np.where(seen, 0.0, self.pop)
        per_genre = np.bincount(self.item_genre, weights=w, minlength=g)
        gp = np.where(per_genre > 0, gp, 0.0)
        gp = gp / gp.sum() if gp.sum() > 0 else np.full(g, 1.0 / g)
        probs = gp[self.item_genre] * w / np.maximum(per_genre[self.item_genre], 1e-12)
        if history:
            s = self.next_sequel[history[-1]]
            if s >= 0 and not seen[s]:
                probs = (1 - cfg.p_sequel) * probs
                probs[s] += cfg.p_sequel
        return probs / probs.sum()


def generate_synthetic(cfg: SynthConfig = SynthConfig()) -> RecData:
    """Samples users from a ``SyntheticWorld``. Item ids are 1-based (ML-1M style);
    user ids are 1-based and ``world.next_probs`` takes 0-based user/item indices."""
    world = SyntheticWorld(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    seqs, times = {}, {}
    t0 = 956_703_932  # ML-1M's first timestamp (2000-04-25)
    for u in range(cfg.n_users):
        n = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        hist: list[int] = []
        for _ in range(n):
            hist.append(int(rng.choice(cfg.n_items, p=world.next_probs(u, hist))))
        seqs[u + 1] = [i + 1 for i in hist]
        start = t0 + int(rng.integers(0, 30_000_000))
        times[u + 1] = list(start + np.cumsum(rng.integers(60, 86_400, n)).astype(int))
    titles = {i + 1: world.titles[i] for i in range(cfg.n_items)}
    genres = {i + 1: [world.genre_names[world.item_genre[i]]] for i in range(cfg.n_items)}
    return RecData("synthetic", titles, seqs, times, genres, "movie", world)


def scramble_titles(data: RecData, seed: int = 0) -> RecData:
    """Control: the same interactions with random pseudo-word titles (same word count).

    Words are two random consonant-vowel syllables ("Kato Rimu"): meaningless, but they
    tokenize into few tokens, so prompts stay about as long as with real titles."""
    rng = np.random.default_rng(seed)
    cons, vows = list("bdfgklmnprstvz"), list("aeiou")
    new, used = {}, set()
    for i, t in data.titles.items():
        while True:
            w = [("".join(rng.choice(cons) + rng.choice(vows) for _ in range(2))).capitalize()
                 for _ in t.split()]
            if " ".join(w) not in used:
                break
        used.add(" ".join(w))
        new[i] = " ".join(w)
    return dataclasses.replace(data, name=data.name + "-scrambled", titles=new)


def write_ml1m(data: RecData, root: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Writes ``movies.dat``, ``ratings.dat`` and ``users.dat`` (ML-1M raw format, latin-1)."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    years = data.world.years if data.world is not None else None
    lines = []
    for i in data.items:
        y = int(years[i - 1]) if years is not None else 2000
        lines.append(f"{i}::{data.titles[i]} ({y})::{'|'.join(data.genres.get(i, [])) or 'Drama'}")
    (root / "movies.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    lines, users = [], []
    for u, seq in sorted(data.sequences.items()):
        ts = data.times.get(u) or list(range(len(seq)))
        lines += [f"{u}::{i}::{int(rng.integers(3, 6))}::{t}" for i, t in zip(seq, ts, strict=True)]
        users.append(f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::"
                     f"{10000 + u:05d}")
    (root / "ratings.dat").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "users.dat").write_bytes(("\n".join(users) + "\n").encode("latin-1"))
    return root


# ---------------------------------------------------------------------------- splits
@dataclasses.dataclass
class Split:
    """Leave-one-out split: last item = test target, second-to-last = validation target.

    Attributes:
        train: user -> items before the validation target (demo-pool history).
        valid: user -> validation target.
        test_hist: user -> all items before the test target.
        test: user -> test target.
        users: users with >= 3 interactions (the only ones split).
    """

    train: dict[int, list[int]]
    valid: dict[int, int]
    test_hist: dict[int, list[int]]
    test: dict[int, int]
    users: list[int]


def leave_one_out(data: RecData) -> Split:
    """Temporal leave-one-out (RecBole ``LS: valid_and_test``)."""
    train, valid, hist, test, users = {}, {}, {}, {}, []
    for u, seq in sorted(data.sequences.items()):
        if len(seq) < 3:
            continue
        users.append(u)
        train[u], valid[u], hist[u], test[u] = seq[:-2], seq[-2], seq[:-1], seq[-1]
    if not users:
        raise ValueError(f"leave_one_out: no user of {data.name!r} has >= 3 interactions")
    return Split(train, valid, hist, test, users)


def sample_negatives(items: Sequence[int], exclude: set[int], n: int,
                     rng: np.random.Generator) -> list[int]:
    """``n`` distinct random items outside ``exclude``."""
    pool = [i for i in items if i not in exclude]
    if len(pool) < n:
        raise ValueError(f"candidate set: need {n} negatives but only {len(pool)} items are "
                         "outside the user's history; lower n_candidates")
    return [int(x) for x in rng.choice(pool, n, replace=False)]


def make_candidates(data: RecData, target: int, seen: Sequence[int], n_candidates: int = 20,
                    rng: np.random.Generator | None = None) -> tuple[list[int], int]:
    """Ground truth + ``n_candidates - 1`` random unseen negatives, shuffled.

    Returns:
        (candidates, index of the ground truth in candidates).
    """
    if n_candidates < 2:
        raise ValueError("n_candidates must be >= 2 (ground truth + negatives), got "
                         f"{n_candidates}")
    rng = rng or np.random.default_rng(0)
    negs = sample_negatives(data.items, set(seen) | {target}, n_candidates - 1, rng)
    cands = negs + [target]
    order = rng.permutation(len(cands))
    cands = [cands[j] for j in order]
    return cands, cands.index(target)
