"""Chat with a pretrained model (SmolLM2-135M-Instruct by default), streaming the answer.

    python -m experiments.chat --prompt="What is the capital of France?"
    python -m experiments.chat --prompt="Write a haiku about JAX" --temperature=0.7 --seed=3
    python -m experiments.chat --prompt="Name a colour" --regex="(red|green|blue)"
    python -m experiments.chat --prompt="Describe a cat" --json_schema=cat.schema.json

With --json_schema/--regex the answer is generated under that constraint inside the jitted
decode loop (jaxlm.structured) and printed when complete.

The answer goes to stdout as it is generated; load/compile/timing lines go to stderr.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from jaxlm.utils import cli

_PROMPT = flags.DEFINE_string("prompt", None, "The user message.", required=True)
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message (default: the model's).")
_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "Packaged model name or .gguf path.")
_DTYPE = flags.DEFINE_enum("dtype", "float32",
                           ["float32", "bfloat16", "keep", "int8", "q8_0", "q4_0", "q4_1"],
                           "Weight format: float32/bfloat16 dequantize; keep (the file's own "
                           "blocks), int8, q8_0, q4_0, q4_1 stay quantized (jaxlm.quant).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Most tokens to generate.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for sampling.")
_JSON_SCHEMA = flags.DEFINE_string("json_schema", None,
                                   "Path of a JSON schema file: the answer is JSON valid under it.")
_REGEX = flags.DEFINE_string("regex", None, "The answer must match this regular expression.")


def _constraint():
    """The --json_schema / --regex constraint (checked before the model loads), or None."""
    import json
    import pathlib

    from jaxlm.structured import ConstraintError, JsonSchema, Regex

    if _JSON_SCHEMA.value and _REGEX.value:
        sys.exit("error: give --json_schema or --regex, not both")
    try:
        if _REGEX.value:
            return Regex(_REGEX.value)
        if _JSON_SCHEMA.value:
            path = pathlib.Path(_JSON_SCHEMA.value)
            if not path.is_file():
                sys.exit(f"error: --json_schema={path}: no such file")
            try:
                schema = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                sys.exit(f"error: --json_schema={path}: not JSON ({e})")
            return JsonSchema(schema)
    except ConstraintError as e:
        sys.exit(f"error: {e}")
    return None


def _utf8_problem(flag: str, text: str | None) -> str | None:
    """A message if ``text`` (decoded from argv with surrogateescape) is not valid UTF-8."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text[e.start:e.end].encode("utf-8", "surrogateescape")
        return (f"--{flag} is not valid UTF-8 (byte 0x{raw[0]:02x} at character {e.start}); "
                "pass the text in UTF-8")
    return None


def flag_errors() -> list[str]:
    """Every problem with the flags, each one line naming the flag and the fix (no imports of
    jax or the weights: this runs before anything is loaded or compiled)."""
    import math

    errors = []
    temp, top_p = _TEMP.value, _TOP_P.value
    if not math.isfinite(temp) or temp < 0:
        errors.append(f"--temperature={temp} must be a finite number >= 0 (0 = greedy)")
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        errors.append(f"--top_p={top_p} must be in (0, 1] (1 = off)")
    if _TOP_K.value < 0:
        errors.append(f"--top_k={_TOP_K.value} must be >= 0 (0 = off)")
    if _MAX_NEW.value < 1:
        errors.append(f"--max_new_tokens={_MAX_NEW.value} must be >= 1")
    for flag, text in (("prompt", _PROMPT.value), ("system", _SYSTEM.value)):
        problem = _utf8_problem(flag, text)
        if problem:
            errors.append(problem)
    return errors


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; pass options as --flag=value")
    errors = flag_errors()
    if errors:
        sys.exit("error: " + "\nerror: ".join(errors))
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import jax

    from jaxlm.core.generate import SamplingConfig, stream
    from jaxlm.weights import WeightsError, load
    from jaxlm.weights.registry import locate

    try:
        locate(_MODEL.value)  # a missing model fails here, before anything is read
    except WeightsError as e:
        sys.exit(f"error: --model: {e}")
    try:
        sampling = SamplingConfig(_TEMP.value, _TOP_K.value, _TOP_P.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    constraint = _constraint()
    t0 = time.perf_counter()
    try:
        m = load(_MODEL.value, dtype=_DTYPE.value)
    except WeightsError as e:
        sys.exit(f"error: --model: {e}")
    if m.tokenizer is None:
        sys.exit(f"error: --model: {_MODEL.value} has no tokenizer; chat needs a GGUF file with "
                 "tokenizer metadata")
    messages = []
    if _SYSTEM.value:
        messages.append({"role": "system", "content": _SYSTEM.value})
    messages.append({"role": "user", "content": _PROMPT.value})
    tok = m.tokenizer
    try:
        ids = tok.encode_chat(messages)  # the template is untrusted: sandboxed, clear errors
    except WeightsError as e:
        sys.exit(f"error: --model: {e}")
    print(f"[loaded {m.path.name} in {time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    params = jax.device_put(m.params)
    t0 = time.perf_counter()
    if constraint is not None:
        from jaxlm.structured import ConstraintError, generate

        try:
            res = generate(params, m.cfg, [ids], constraint=constraint, tokenizer=tok,
                           max_new_tokens=_MAX_NEW.value, key=jax.random.PRNGKey(_SEED.value),
                           sampling=sampling)
        except (ConstraintError, ValueError) as e:
            sys.exit(f"error: {e}")
        n = int(res.lengths[0])
        print(tok.decode(res.tokens[0, :n].tolist()))
        print(f"[{len(ids)} prompt tokens; {n} constrained tokens in "
              f"{time.perf_counter() - t0:.1f}s (includes compile)"
              + ("; hit --max_new_tokens before the constraint was complete" if
                 n >= _MAX_NEW.value else "") + "]", file=sys.stderr)
        return
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
    cli.run(main)
