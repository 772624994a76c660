"""Token pipeline: corpus, tokenizers, token memmap, packing, resumable iteration."""

import numpy as np
import pytest

from jaxlm.train import data as D
from jaxlm.train.presets import DataConfig


def test_pydoc_corpus_is_bundled_and_large():
    docs = D.load_corpus("pydoc")
    assert len(docs) > 50
    assert sum(map(len, docs)) > 400_000


def test_empty_and_missing_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        D.load_corpus(str(tmp_path / "nothing*.txt"))
    (tmp_path / "a.txt").write_text("   \n")
    with pytest.raises(ValueError, match="is empty"):
        D.load_corpus(str(tmp_path / "*.txt"))


def test_token_file_joins_docs_with_eos_and_caches(tmp_path):
    docs = ["héllo", "world!"]
    tok = D.BYTE_TOKENIZER
    path = D.build_token_file(docs, tok, tmp_path)
    arr = D.open_tokens(path)
    assert isinstance(arr, np.memmap)
    want = list("héllo".encode()) + [256] + list(b"world!") + [256]
    assert arr.tolist() == want
    assert tok.decode(arr[:6]) == "héllo"
    mtime = path.stat().st_mtime_ns
    assert D.build_token_file(docs, tok, tmp_path) == path and path.stat().st_mtime_ns == mtime


def test_bpe_trained_on_corpus_round_trips(tmp_path):
    docs = D.pydoc_corpus()[:20]
    tok = D.train_bpe(docs, 400, tmp_path)
    assert tok.vocab_size <= 400 and tok.eos_id == 0
    text = docs[3][:300]
    ids = tok.encode(text)
    assert len(ids) < len(text.encode())  # merges compress
    assert tok.decode(ids) == text
    again = D.train_bpe(docs, 400, tmp_path)  # cached file
    assert again.encode(text) == ids


def _stream(n=1000, seed=0):
    return np.random.default_rng(seed).integers(0, 500, size=n).astype(np.uint16)


def test_packed_windows_and_shifted_targets():
    toks = _stream()
    it = D.PackedIterator(toks, seq_len=10, batch_size=4, seed=1)
    seen = set()
    for _ in range(it.batches_per_epoch):
        b = next(it)
        assert b["inputs"].shape == (4, 10) and b["inputs"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
        for row_in, row_t in zip(b["inputs"], b["targets"]):
            w = None
            for cand in range(it.n_windows):  # find which window this row is
                if np.array_equal(toks[cand * 10:cand * 10 + 10], row_in):
                    w = cand
                    break
            assert w is not None and row_t[-1] == toks[w * 10 + 10]
            seen.add(w)
    assert len(seen) == it.batches_per_epoch * 4  # an epoch visits distinct windows


def test_iterator_resumes_exactly_across_epochs():
    toks = _stream(700)
    a = D.PackedIterator(toks, seq_len=8, batch_size=4, seed=3)  # 87 windows, 21 batches/epoch
    ref = [next(a) for _ in range(30)]
    b = D.PackedIterator(toks, seq_len=8, batch_size=4, seed=3)
    for _ in range(18):
        next(b)
    saved = b.state()
    c = D.PackedIterator(toks, seq_len=8, batch_size=4, seed=3)
    c.set_state(saved)
    for i in range(18, 30):
        got = next(c)
        np.testing.assert_array_equal(got["inputs"], ref[i]["inputs"])
    assert c.state()["epoch"] == 1
    other = D.PackedIterator(toks, seq_len=8, batch_size=4, seed=4)
    assert not np.array_equal(next(other)["inputs"], ref[0]["inputs"])


def test_process_rows_partition_the_global_batch():
    toks = _stream()
    full = next(D.PackedIterator(toks, 10, 8, seed=2))
    parts = [next(D.PackedIterator(toks, 10, 8, seed=2, rows=slice(i * 4, i * 4 + 4)))
             for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), full["inputs"])


def test_too_short_stream_error():
    with pytest.raises(ValueError, match="fewer than batch_size"):
        D.PackedIterator(_stream(50), seq_len=10, batch_size=8)
    with pytest.raises(ValueError, match="too few"):
        D.split_tokens(_stream(50), 0.1, 10, 4)


def test_synthetic_stream_is_predictable():
    t = D.synthetic_tokens(700, 64, seed=0, period=7).reshape(-1, 7)
    d = (t[:, 1:] - t[:, :-1]) % 64
    assert (d == d[:, :1]).all()  # constant stride inside a run
    s = D.token_stream(DataConfig(corpus="synthetic", seq_len=16, batch_size=4))
    assert s.vocab_size == 64 and len(s.eval) >= 4 * 16 + 1
