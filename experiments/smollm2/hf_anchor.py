"""The HF transformers speed anchor for SmolLM2 (needs the ``reference`` extra: torch +
transformers + accelerate). Lives with the benchmark, not in the library."""

from __future__ import annotations

import pathlib
import time

import numpy as np


def hf_decode_tok_s(gguf_path, n_new: int = 33, prompt_len: int = 128) -> float:
    """HF transformers greedy decode rate of the same GGUF on CPU (needs the reference extra).

    Rate = (n_new - 1) / (t(n_new) - t(1)), i.e. decode only, prefill excluded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = pathlib.Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    model.eval()
    ids = torch.tensor(np.random.default_rng(0).integers(100, 40000, (1, prompt_len)))

    def run(n):
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           attention_mask=torch.ones_like(ids), pad_token_id=2)
            return time.perf_counter() - t0

    run(2)
    t1 = float(np.median([run(1) for _ in range(3)]))
    tn = float(np.median([run(n_new) for _ in range(2)]))
    return (n_new - 1) / (tn - t1)
