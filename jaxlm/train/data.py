"""Deterministic, resumable token streams over a local text corpus.

Pipeline: documents (the bundled ``pydoc_data`` topics, ``--data=path/*.txt``
or a synthetic task) -> tokenizer (bytes, a BPE trained on the corpus and
cached, or SmolLM2's) -> one ``.npy`` token file (documents joined by EOS,
tokenized once, cached by content hash, opened as a memmap) -> a train/eval
split at a token offset -> ``PackedIterator``: fixed-length windows of
``seq_len + 1`` tokens (documents packed back to back), shuffled per epoch by
``(seed, epoch)``. Its position ``{"epoch", "index"}`` is saved with each
checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from jaxlm.train.presets import DataConfig
from jaxlm.utils.config import ConfigError
from jaxlm.weights.tokenizer import ByteTokenizer

BYTE_EOS = 256


class TextTokenizer(Protocol):
    vocab_size: int
    eos_id: int
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# --------------------------------------------------------------------------- corpus
def pydoc_corpus() -> list[str]:
    """The Python documentation topics shipped with the standard library (~490k chars)."""
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)]


def load_corpus(spec: str) -> list[str]:
    """Documents for ``spec``: "pydoc" or a glob of UTF-8 text files.

    Raises:
        ConfigError (a ValueError): no files match, or all of them are empty.
    """
    if spec == "pydoc":
        docs = pydoc_corpus()
    else:
        paths = sorted(glob.glob(spec, recursive=True))
        if not paths:
            raise ConfigError(
                f"--data={spec!r} matches no files; pass a glob like 'data/*.txt' or 'pydoc'"
            )
        docs = [pathlib.Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ConfigError(
            f"corpus {spec!r} is empty (no non-blank text); point --data at text files"
        )
    return docs


def synthetic_tokens(n: int, vocab: int, seed: int = 0, period: int = 7) -> np.ndarray:
    """A learnable stream: runs of ``t, t+s, t+2s, ...`` mod ``vocab`` with random t, s.

    Each run has length ``period``; the next token is predictable from the
    previous two inside a run, so the loss should fall far below ln(vocab).
    """
    rng = np.random.default_rng(seed)
    runs = -(-n // period)
    start = rng.integers(0, vocab, size=(runs, 1))
    stride = rng.integers(1, 5, size=(runs, 1))
    toks = (start + stride * np.arange(period)[None, :]) % vocab
    return toks.reshape(-1)[:n].astype(np.int32)


# --------------------------------------------------------------------------- tokenizers
# UTF-8 bytes (ids 0..255) plus EOS = 256: the one ``jaxlm.weights.ByteTokenizer`` with the
# EOS after the bytes, so every byte stays a token
BYTE_TOKENIZER = ByteTokenizer(vocab_size=BYTE_EOS + 1, eos_id=BYTE_EOS, pad_id=BYTE_EOS,
                               stop_ids=(BYTE_EOS,))


@dataclasses.dataclass
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (our BPE or SmolLM2's) with its EOS id."""

    hf: Any
    eos_id: int
    name: str

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


def _digest(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", errors="replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_bpe(docs: Sequence[str], vocab_size: int, cache_dir: str | pathlib.Path) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` (EOS "<|endoftext|>" = id 0) trained on ``docs``.

    Cached as ``<cache_dir>/bpe_<corpus hash>_<vocab>.json``; training on the
    pydoc corpus takes about a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = pathlib.Path(cache_dir) / f"bpe_{_digest(docs)}_{vocab_size}.json"
    if path.exists():
        hf = Tokenizer.from_file(str(path))
    else:
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        hf.train_from_iterator(docs, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        hf.save(str(tmp))
        tmp.replace(path)
    return HFTokenizer(hf=hf, eos_id=hf.token_to_id("<|endoftext|>"), name=f"bpe{vocab_size}")


def pretrained_tokenizer(name: str = "smollm2-135m-instruct") -> HFTokenizer:
    """The tokenizer stored in a packaged GGUF (read from metadata; no weights loaded)."""
    from jaxlm.weights import locate, tokenizer_from_gguf

    tok = tokenizer_from_gguf(locate(name))
    return HFTokenizer(hf=tok.hf, eos_id=tok.eos_id, name=name)


def make_tokenizer(cfg: DataConfig, docs: Sequence[str] | None = None) -> TextTokenizer:
    """The tokenizer ``cfg.tokenizer`` names (BPE needs the training ``docs``)."""
    if cfg.tokenizer == "bytes":
        return BYTE_TOKENIZER
    if cfg.tokenizer == "bpe":
        if docs is None:
            raise ConfigError("a BPE tokenizer is trained on the corpus; pass its documents")
        return train_bpe(docs, cfg.vocab_size, cfg.cache_dir)
    if cfg.tokenizer == "smollm2":
        return pretrained_tokenizer()
    raise ConfigError(f"data.tokenizer={cfg.tokenizer!r} is unknown; use bytes, bpe or smollm2")


# --------------------------------------------------------------------------- token file
def build_token_file(docs: Sequence[str], tok: TextTokenizer, cache_dir: str | pathlib.Path,
                     ) -> pathlib.Path:
    """Tokenizes ``docs`` once (EOS after each) into ``<cache_dir>/tokens_<hash>.npy``.

    Returns:
        Path of the ``.npy`` file (uint16 when the vocabulary fits, else uint32).
    """
    key = f"{_digest(docs)}_{tok.name}_{tok.vocab_size}"
    path = pathlib.Path(cache_dir) / f"tokens_{key}.npy"
    if path.exists():
        return path
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    parts = []
    for d in docs:
        parts.append(np.asarray(tok.encode(d), dtype))
        parts.append(np.asarray([tok.eos_id], dtype))
    arr = np.concatenate(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return path


def open_tokens(path: str | pathlib.Path) -> np.ndarray:
    """The token file as a read-only memmap."""
    return np.load(path, mmap_mode="r")


@dataclasses.dataclass
class TokenStream:
    """Train and eval token arrays plus the tokenizer that made them."""

    train: np.ndarray
    eval: np.ndarray
    tokenizer: TextTokenizer | None
    vocab_size: int


def split_tokens(tokens: np.ndarray, eval_fraction: float, seq_len: int, batch_size: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The last ``eval_fraction`` of the stream (at least one batch) is held out."""
    n_eval = max(int(len(tokens) * eval_fraction), batch_size * seq_len + 1)
    if len(tokens) - n_eval < batch_size * seq_len + 1:
        raise ConfigError(
            f"corpus has {len(tokens)} tokens, too few for a train and a held-out batch of "
            f"{batch_size} x {seq_len}; add text or lower data.seq_len / data.batch_size"
        )
    return tokens[:-n_eval], tokens[-n_eval:]


def token_stream(cfg: DataConfig, *, tokenizer: TextTokenizer | None = None,
                 synthetic_vocab: int = 64, seed: int = 0) -> TokenStream:
    """Loads/caches the corpus named by ``cfg`` and splits it.

    Args:
        cfg: data config.
        tokenizer: overrides ``cfg.tokenizer`` (fine-tuning uses the pretrained one).
        synthetic_vocab: vocabulary of ``corpus="synthetic"``.
        seed: seed of the synthetic stream.
    """
    if cfg.corpus == "synthetic":
        toks = synthetic_tokens(200_000, synthetic_vocab, seed)
        tr, ev = split_tokens(toks, cfg.eval_fraction, cfg.seq_len, cfg.batch_size)
        return TokenStream(tr, ev, None, synthetic_vocab)
    docs = load_corpus(cfg.corpus)
    tok = tokenizer or make_tokenizer(cfg, docs)
    toks = open_tokens(build_token_file(docs, tok, cfg.cache_dir))
    tr, ev = split_tokens(toks, cfg.eval_fraction, cfg.seq_len, cfg.batch_size)
    return TokenStream(tr, ev, tok, tok.vocab_size)


# --------------------------------------------------------------------------- iterator
class PackedIterator(Iterator[dict[str, np.ndarray]]):
    """Batches of packed windows ``{"inputs": [B, T], "targets": [B, T]}`` (int32).

    Window ``w`` covers tokens ``[w*T, w*T + T + 1)``; each epoch visits all
    windows in the order ``permutation(rng(seed, epoch))`` (or in order when
    ``shuffle`` is False), dropping the last partial batch. The position is
    ``state() == {"epoch": e, "index": i}`` (batches already taken in epoch e);
    ``set_state`` restores it, so iteration is deterministic and resumable.

    Args:
        tokens: 1-D token array (a memmap is fine: only batch rows are read).
        seq_len: T.
        batch_size: rows per batch (this process's rows: pass ``rows`` to take a
            slice of each global batch).
        seed: shuffle seed.
        shuffle: permute windows per epoch.
        rows: the slice of each global batch to return (multi-host feeding).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, rows: slice | None = None):
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rows = rows or slice(0, batch_size)
        self.n_windows = (len(tokens) - 1) // seq_len
        self.batches_per_epoch = self.n_windows // batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"token stream of {len(tokens)} tokens holds {self.n_windows} windows of "
                f"{seq_len + 1}, fewer than batch_size={batch_size}; add text or lower "
                "data.batch_size / data.seq_len"
            )
        self.epoch = 0
        self.index = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _order(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._perm = rng.permutation(self.n_windows)
            else:
                self._perm = np.arange(self.n_windows)
            self._perm_epoch = self.epoch
        return self._perm

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        b, t = self.batch_size, self.seq_len
        wins = self._order()[self.index * b:(self.index + 1) * b][self.rows]
        self.index += 1
        idx = wins[:, None] * t + np.arange(t + 1)[None, :]
        seqs = np.asarray(self.tokens[idx], dtype=np.int32)  # [b, T + 1]
        return {"inputs": seqs[:, :-1], "targets": seqs[:, 1:]}


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, n: int,
                 rows: slice | None = None) -> list[dict[str, np.ndarray]]:
    """The first ``n`` (or fewer) in-order batches of the held-out stream."""
    it = PackedIterator(tokens, seq_len, batch_size, shuffle=False, rows=rows)
    if n < 1:
        raise ConfigError(f"eval_batches={n}: must be >= 1")
    n = min(n, it.batches_per_epoch)
    return [next(it) for _ in range(n)]


def describe(stream: TokenStream) -> str:
    name = stream.tokenizer.name if stream.tokenizer is not None else "synthetic"
    return json.dumps({"tokenizer": name, "vocab": stream.vocab_size,
                       "train_tokens": len(stream.train), "eval_tokens": len(stream.eval)})
