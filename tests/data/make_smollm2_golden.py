"""Writes tests/data/smollm2_golden.npz: reference logits of SmolLM2-135M-Instruct (Q4_1 GGUF)
computed by HF transformers loading the same GGUF (an independent implementation).

Run with the `reference` extra installed:
    .venv/bin/python tests/data/make_smollm2_golden.py

To keep the file small it stores, for every prompt and position, the logits of a fixed
vocabulary subset: 384 random ids plus each position's reference top-16.
"""

import pathlib

import numpy as np

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "Hello! 12345 apples, 3.14 pies and",
    "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n",
]


def main():
    import torch
    from transformers import AutoModelForCausalLM

    from jaxlm.weights import load, locate

    path = locate("smollm2-135m-instruct")
    tok = load("smollm2-135m-instruct").tokenizer
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    rng = np.random.default_rng(0)
    subset = set(rng.choice(hf.config.vocab_size, 384, replace=False).tolist())
    all_ids, logits_rows = [], []
    for text in PROMPTS:
        ids = tok.encode(text)
        with torch.no_grad():
            lg = hf(torch.tensor([ids])).logits[0].numpy()
        for row in lg:
            subset.update(np.argsort(row)[-16:].tolist())
        all_ids.append(ids)
        logits_rows.append(lg)
    vocab_ids = np.array(sorted(subset), np.int32)
    t = max(len(i) for i in all_ids)
    tokens = np.zeros((len(PROMPTS), t), np.int32)
    lengths = np.array([len(i) for i in all_ids], np.int32)
    logits = np.zeros((len(PROMPTS), t, len(vocab_ids)), np.float32)
    argmax = np.zeros((len(PROMPTS), t), np.int32)
    for i, (ids, lg) in enumerate(zip(all_ids, logits_rows)):
        tokens[i, : len(ids)] = ids
        logits[i, : len(ids)] = lg[:, vocab_ids]
        argmax[i, : len(ids)] = lg.argmax(-1)
    out = pathlib.Path(__file__).with_name("smollm2_golden.npz")
    np.savez_compressed(out, tokens=tokens, lengths=lengths, vocab_ids=vocab_ids, logits=logits,
                        argmax=argmax, prompts=np.array(PROMPTS))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
