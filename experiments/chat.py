"""Chat with a pretrained model (SmolLM2-135M-Instruct by default), streaming the answer.

    python -m experiments.chat --prompt="What is the capital of France?"
    python -m experiments.chat --prompt="Write a haiku about JAX" --temperature=0.7 --seed=3

The answer goes to stdout as it is generated; load/compile/timing lines go to stderr.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

_PROMPT = flags.DEFINE_string("prompt", None, "The user message.", required=True)
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message (default: the model's).")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Packaged model name or .gguf path.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Most tokens to generate.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for sampling.")


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import jax

    from jaxlm.core.generate import SamplingConfig, stream
    from jaxlm.weights import WeightsError, load

    try:
        sampling = SamplingConfig(_TEMP.value, _TOP_K.value, _TOP_P.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    t0 = time.perf_counter()
    try:
        m = load(_MODEL.value)
    except WeightsError as e:
        sys.exit(f"error: {e}")
    if m.tokenizer is None:
        sys.exit(f"error: {_MODEL.value} has no tokenizer (chat needs a GGUF with tokenizer metadata)")
    print(f"[loaded {m.path.name} in {time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    messages = []
    if _SYSTEM.value:
        messages.append({"role": "system", "content": _SYSTEM.value})
    messages.append({"role": "user", "content": _PROMPT.value})
    tok = m.tokenizer
    ids = tok.encode_chat(messages)
    params = jax.device_put(m.params)
    t0 = time.perf_counter()
    out: list[int] = []
    printed = ""
    first_at = None
    stamps: list[float] = []
    try:
        for t in stream(params, m.cfg, ids, max_new_tokens=_MAX_NEW.value,
                        key=jax.random.PRNGKey(_SEED.value), sampling=sampling,
                        stop_ids=tok.stop_ids):
            if first_at is None:
                first_at = time.perf_counter()
            out.append(t)
            stamps.append(time.perf_counter())
            text = tok.decode(out)
            if not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
    except ValueError as e:
        sys.exit(f"error: {e}")
    sys.stdout.write(tok.decode(out)[len(printed):] + "\n")
    end = time.perf_counter()
    n = len(out)
    # the decode step compiles between tokens 1 and 2: the rate counts tokens 3.. only
    rate = (n - 2) / (stamps[-1] - stamps[1]) if n > 2 else float("nan")
    print(f"[{len(ids)} prompt tokens; first token after {(first_at or end) - t0:.1f}s "
          f"(includes compile); {n} tokens, decode {rate:.1f} tok/s after compile]",
          file=sys.stderr)


if __name__ == "__main__":
    app.run(__import__("jaxlm.utils.cli", fromlist=["guard"]).guard(main))
