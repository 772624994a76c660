"""A/B timing of batch-1 decode between two versions of the code, alternating, under load.

    python -m experiments.smollm2.decode_ab --base=HEAD~1                 # HEAD~1 vs this tree
    python -m experiments.smollm2.decode_ab --base=6b340ed --formats=q4_1,float32 --rounds=6
    python -m experiments.smollm2.decode_ab --profile=q4_1               # one tree: HLO + trace

The machine is shared, so absolute numbers drift; ratios come from alternation. A code
change such as the KV cache layout cannot live next to its predecessor in one process (every
consumer indexes the layout), so each version runs in its own persistent worker process
(``--base`` is extracted with ``git archive`` into a scratch directory, the compiled quant
kernel copied next to it) and the coordinator asks the workers for measurements in turn:
round r times A then B (B then A on odd rounds), one at a time, so load hits both alike.
Each measurement is
  * ``step``: the median over ``--steps`` (>= 50) batch-``--batch`` decode steps of the
    library's jitted ``decode_step`` (cache donated, one call per step: the ``stream`` path),
    after a 128-token prefill and a warm-up;
  * ``loop``: ``core.generate.generate`` (the one while_loop decode) for ``steps + 1`` minus
    for 1 new token, divided by ``steps`` (the decode loop without prefill).
The report gives per-round tokens/s of both and the median of the per-round ratios B/A.

``--profile=<fmt>`` (this tree only) counts the ops of the compiled decode step's optimized
HLO by kind (copies / copy fusions, custom calls, dots) and times one profiled run of
``--steps`` steps with ``jax.profiler`` (the perfetto trace), summing device-op time per
category per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROMPT = 128


# ------------------------------------------------------------------------------- worker side
def _worker():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlm
    from jaxlm.core import generate as gen
    from jaxlm.core.cache import init_cache
    from jaxlm.weights import load

    models = {}
    prefill = jax.jit(gen.prefill, static_argnames=("cfg",), donate_argnames=("cache",))
    step = jax.jit(gen.decode_step, static_argnames=("cfg",), donate_argnames=("cache",))

    def model(fmt):
        if fmt not in models:
            m = load("smollm2-135m-instruct", dtype=fmt)
            models[fmt] = (m.cfg, jax.device_put(m.params))
        return models[fmt]

    def measure(fmt, batch, steps):
        cfg, params = model(fmt)
        rng = np.random.default_rng(0)
        toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, PROMPT)), jnp.int32)
        mask = jnp.ones((batch, PROMPT), bool)
        cache = init_cache(cfg, batch, PROMPT + steps + 8)
        logits, cache = prefill(params, cfg, toks, mask, cache)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        times = []
        for i in range(steps + 4):
            t0 = time.perf_counter()
            logits, cache = step(params, cfg, tok, cache)
            logits.block_until_ready()
            if i >= 4:
                times.append(time.perf_counter() - t0)
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
        prompts = rng.integers(0, cfg.vocab_size, (batch, PROMPT)).tolist()

        def run(n):
            t0 = time.perf_counter()
            jax.block_until_ready(gen.generate(params, cfg, prompts, max_new_tokens=n))
            return time.perf_counter() - t0

        run(1), run(steps + 1)  # compiled once per (fmt, batch, steps)
        loop = (run(steps + 1) - run(1)) / steps
        return {"step_ms": 1000 * float(np.median(times)), "loop_ms": 1000 * loop,
                "file": jaxlm.__file__}

    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = measure(req["fmt"], req["batch"], req["steps"])
        except Exception as e:  # reported to the coordinator, which stops
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------ coordinator
def _extract(ref: str) -> str:
    """The tree of git ``ref`` (its jaxlm/ package) in a scratch dir, with its own kernel.

    The ref's ``csrc/`` is compiled there (``setup.py build_ext --inplace``) so that each
    version runs the kernel it shipped with (the kernel's ABI changes between versions); a ref
    without ``csrc/`` gets this tree's kernel."""
    sha = subprocess.check_output(["git", "-C", ROOT, "rev-parse", ref], text=True).strip()
    dest = f"/tmp/decode_ab/{sha[:12]}"
    if not os.path.isdir(os.path.join(dest, "jaxlm")):
        os.makedirs(dest, exist_ok=True)
        have = subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", sha], check=True,
                              capture_output=True, text=True).stdout.split()
        paths = [p for p in ("jaxlm", "csrc", "setup.py", "setup.cfg", "pyproject.toml") if p in have]
        arc = subprocess.run(["git", "-C", ROOT, "archive", sha, *paths], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=arc, check=True)
        if "csrc" in paths:
            subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dest,
                           check=True, capture_output=True)
    qdir = os.path.join(ROOT, "jaxlm", "quant")
    built = any(f.startswith("_kernel") and f.endswith(".so")
                for f in os.listdir(os.path.join(dest, "jaxlm", "quant")))
    for f in os.listdir(qdir) if not built else ():
        if f.startswith("_kernel") and f.endswith(".so"):
            subprocess.run(["cp", os.path.join(qdir, f), os.path.join(dest, "jaxlm", "quant")],
                           check=True)
    return dest


class _Worker:
    def __init__(self, root: str):
        env = {**os.environ, "PYTHONPATH": root}
        self.root = root
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                  cwd=root, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        out = json.loads(self.p.stdout.readline())
        if "error" in out:
            raise RuntimeError(f"worker {self.root}: {out['error']}")
        return out

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def ab(base: str, formats, rounds: int, steps: int, batch: int) -> dict:
    if steps < 50:
        raise SystemExit(f"--steps must be >= 50 (a median over fewer is noise), got {steps}")
    a, b = _Worker(_extract(base)), _Worker(ROOT)
    res = {}
    try:
        for fmt in formats:
            for w in (a, b):  # warm-up: load, compile, first timings discarded
                w.ask(fmt=fmt, batch=batch, steps=steps)
            rows = []
            for r in range(rounds):
                order = (a, b) if r % 2 == 0 else (b, a)
                got = {id(w): w.ask(fmt=fmt, batch=batch, steps=steps) for w in order}
                ra, rb = got[id(a)], got[id(b)]
                rows.append({k: (ra[k], rb[k]) for k in ("step_ms", "loop_ms")})
                print(f"{fmt} round {r}: step A {ra['step_ms']:.2f} ms B {rb['step_ms']:.2f} ms | "
                      f"loop A {ra['loop_ms']:.2f} ms B {rb['loop_ms']:.2f} ms", flush=True)
            summ = {}
            for k in ("step_ms", "loop_ms"):
                ratios = sorted(x[0] / x[1] for x in (row[k] for row in rows))
                ms_a = sorted(row[k][0] for row in rows)
                ms_b = sorted(row[k][1] for row in rows)
                summ[k] = {"A_tok_s": 1000 * batch / ms_a[len(ms_a) // 2],
                           "B_tok_s": 1000 * batch / ms_b[len(ms_b) // 2],
                           "speedup_B_over_A": ratios[len(ratios) // 2]}
            res[fmt] = summ
            print(fmt, json.dumps(summ), flush=True)
    finally:
        a.close(), b.close()
    return res


# -------------------------------------------------------------------------------- profile
def profile(fmt: str, steps: int, batch: int = 1) -> dict:
    """Op counts of the compiled decode step and per-category device time per step."""
    import collections
    import glob
    import gzip
    import re
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.core import generate as gen
    from jaxlm.core.cache import init_cache
    from jaxlm.weights import load

    import dataclasses

    bits = 8 if fmt.endswith("-a8") else 16  # "q4_1-a8": int8 activations (llama.cpp's q8_1)
    m = load("smollm2-135m-instruct", dtype=fmt.removesuffix("-a8"))
    cfg = dataclasses.replace(m.cfg, quant_act_bits=bits)
    params = jax.device_put(m.params)
    # the step the library runs: compiled under its XLA:CPU policy (gen.library_fusion)
    opts = gen.LIBRARY_FUSION_OPTIONS[gen.library_fusion(params, cfg, batch)]
    step = jax.jit(gen.decode_step, static_argnames=("cfg",), donate_argnames=("cache",),
                   compiler_options=opts)
    prefill = jax.jit(gen.prefill, static_argnames=("cfg",), donate_argnames=("cache",))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, PROMPT)),
                       jnp.int32)
    cache = init_cache(cfg, batch, PROMPT + steps + 8)
    logits, cache = prefill(params, cfg, toks, jnp.ones((batch, PROMPT), bool), cache)
    tok = jnp.argmax(logits, -1).astype(jnp.int32)
    hlo = step.lower(params, cfg, tok, cache).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]  # top-level ops only (not the fused computations)
    ops = collections.Counter()
    for line in entry.splitlines()[1:]:
        mm = re.match(r"\s*(?:ROOT )?%([\w-]+?)(?:\.\d+)? = ", line)
        if mm and "parameter(" not in line and "get-tuple-element(" not in line:
            ops[mm.group(1)] += 1
    for _ in range(5):
        logits, cache = step(params, cfg, tok, cache)
    logits.block_until_ready()
    d = tempfile.mkdtemp(prefix="decode_ab_trace_")
    with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
            logits, cache = step(params, cfg, tok, cache)
            logits.block_until_ready()
    f = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
    ev = json.load(gzip.open(f))
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    # device ops run on the XLA threads; their names are the HLO op names (numbers cut)
    threads = {(e.get("pid"), e.get("tid")) for e in ev if e.get("ph") == "M"
               and e.get("name") == "thread_name" and "XLA" in e["args"]["name"]}
    cat = collections.defaultdict(float)
    cnt = collections.Counter()
    for e in ev:
        if (e.get("ph") != "X" or (e.get("pid"), e.get("tid")) not in threads
                or e["name"].startswith(("end:", "ThunkExecutor", "SlinkyThreadPool"))):
            continue
        c = re.sub(r"[.\d]+$", "", e["name"])
        cat[c] += e["dur"] / 1000 / steps
        cnt[c] += 1 / steps
    top = sorted(cat, key=cat.get, reverse=True)
    return {"format": fmt, "library_fusion": opts is None, "hlo_ops": dict(ops.most_common()),
            "ms_per_step": {k: round(cat[k], 3) for k in top},
            "calls_per_step": {k: round(cnt[k], 1) for k in top}, "trace": f}



def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", default="HEAD", help="git ref of version A (B = this tree)")
    ap.add_argument("--formats", default="q4_1,float32")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profile", default="", help="format to profile in this tree (no A/B)")
    args = ap.parse_args()
    if args.worker:
        return _worker()
    if args.profile:
        print(json.dumps(profile(args.profile, args.steps, args.batch), indent=1))
        return
    ab(args.base, [f.strip() for f in args.formats.split(",") if f.strip()], args.rounds,
       args.steps, args.batch)


if __name__ == "__main__":
    main()
