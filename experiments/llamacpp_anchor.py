"""The llama.cpp speed anchor: ``llama-cpp-python`` on the same GGUF file, same thread count.

Optional at import: :func:`available` says whether ``llama_cpp`` is installed (the ``bench``
extra builds it from source for AVX2/FMA, without ``-march=native``):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        pip install --no-binary llama-cpp-python llama-cpp-python

Measures, on a :class:`LlamaCppAnchor` kept open so its timings can be interleaved with
jaxlm's in one process:

* decode tok/s at batch 1: a ``prompt_len``-token prompt evaluated once, then ``new_tokens``
  single-token evaluations, each appended to the context (the token's identity does not change
  the work; greedy argmax is taken from the logits so the sequence is a real continuation);
  timed from the first single-token call, prefill excluded;
* prompt processing (prefill) tok/s at ``prompt_len`` tokens on a fresh context.

Lives with the benchmarks, not in the library.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time

import numpy as np


def available() -> bool:
    """True when ``llama_cpp`` (llama-cpp-python) is importable."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppAnchor:
    """One llama.cpp model on ``gguf_path`` with ``n_threads`` threads (decode and batch)."""

    def __init__(self, gguf_path: str | os.PathLike, n_threads: int, n_ctx: int = 2048,
                 n_batch: int = 512):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.n_threads = int(n_threads)
        self.model = llama_cpp.Llama(
            model_path=str(gguf_path), n_threads=self.n_threads, n_threads_batch=self.n_threads,
            n_ctx=n_ctx, n_batch=n_batch, verbose=False, seed=0)
        self.vocab = int(self.model.n_vocab())

    def info(self) -> dict:
        """Version, build flags (llama.cpp's system info line) and settings."""
        lc = self._llama_cpp
        try:
            sysinfo = lc.llama_print_system_info()
            sysinfo = sysinfo.decode() if isinstance(sysinfo, bytes) else str(sysinfo)
        except Exception as e:  # an old binding without it
            sysinfo = f"unavailable ({e})"
        try:
            version = importlib.metadata.version("llama_cpp_python")
        except importlib.metadata.PackageNotFoundError:
            version = getattr(lc, "__version__", "unknown")
        return {"name": "llama.cpp (llama-cpp-python)", "version": version,
                "system_info": sysinfo.strip(), "n_threads": self.n_threads,
                "build_hint": os.environ.get("CMAKE_ARGS", "")}

    def _tokens(self, n: int, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(t) for t in rng.integers(100, min(self.vocab, 40000), n)]

    def _next_token(self) -> int:
        """Greedy next token from the last position's logits (llama.cpp keeps only those)."""
        m = self.model
        try:
            logits = np.ctypeslib.as_array(m._ctx.get_logits(), shape=(self.vocab,))
        except Exception:  # a binding without the context accessor: the cached scores row
            logits = m.scores[min(m.n_tokens, m.scores.shape[0]) - 1]
        return int(np.argmax(logits))

    def decode_tok_s(self, prompt_len: int = 128, new_tokens: int = 128, seed: int = 0) -> float:
        """Batch-1 greedy decode rate (tokens/s), prefill excluded."""
        m = self.model
        m.reset()
        m.eval(self._tokens(prompt_len, seed))
        tok = self._next_token()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            m.eval([tok])
            tok = self._next_token()
        return new_tokens / (time.perf_counter() - t0)

    def prefill_tok_s(self, prompt_len: int = 1024, seed: int = 1) -> float:
        """Prompt processing rate (tokens/s) of ``prompt_len`` tokens on an empty context."""
        m = self.model
        m.reset()
        toks = self._tokens(prompt_len, seed)
        t0 = time.perf_counter()
        m.eval(toks)
        return prompt_len / (time.perf_counter() - t0)

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if close is not None:
            close()
