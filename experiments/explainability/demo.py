"""The explainability demonstration on capital facts (used by experiments/explain.py and the
``explain`` reproduction entry). Plotting uses ``matplotlib.figure.Figure`` (no pyplot state).

Prompts "The capital of <country> is" are kept only when the model's top-1 next token is
the capital with p >= ``min_p`` (measured before use). Per prompt: saliency, gradient x
input, IG (zero baseline, m steps), occlusion, attention rollout, and a random-ranking
control; faithfulness (comprehensiveness / sufficiency at k = 1, 2, 3, AOPC, decision
flip) with filler replacement (IG: zero baseline, Gauss-Legendre, first token held at
its real embedding, see ``sink_mask``), plausibility against the country tokens (the gold
rationale), IG completeness error at m = 16 / 32 / 64, and causal-tracing heat maps.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxlm.interpret import attention, attribution, faithfulness, lens, sanity, tracing

COUNTRIES = ("France", "Germany", "Japan", "Greece", "England", "China", "Portugal", "Italy",
             "Spain", "Russia", "Canada", "Austria", "Norway", "Ireland")
CAPITAL = {"France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Greece": "Athens",
           "England": "London", "China": "Beijing", "Portugal": "Lisbon", "Italy": "Rome",
           "Spain": "Madrid", "Russia": "Moscow", "Canada": "Ottawa", "Austria": "Vienna",
           "Norway": "Oslo", "Ireland": "Dublin"}
METHODS = ("saliency", "grad_x_input", "integrated_gradients", "occlusion", "rollout", "random")


def run_pretrained(quick: bool, seed: int, outdir: pathlib.Path, progress=None) -> dict:
    """Loads SmolLM2-135M-Instruct (packaged GGUF) and runs ``run``."""
    import jax.numpy as jnp

    from jaxlm import weights

    m = weights.load("smollm2-135m-instruct")
    params = jax.tree.map(jnp.asarray, m.params)
    return run(params, m.cfg, m.tokenizer, quick=quick, seed=seed, outdir=outdir,
               progress=progress)


def known_prompts(params, cfg, tok, countries: Sequence[str] = COUNTRIES, min_p: float = 0.25):
    """Capital prompts the model answers correctly (top-1, p >= min_p), with foil and key span."""
    out = []
    for c in countries:
        text = f"The capital of {c} is"
        enc = tok.hf.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids)
        lo = text.index(c) - 1
        key = np.array([b > lo and a < lo + 1 + len(c) for a, b in enc.offsets])
        target = tok.encode(" " + CAPITAL[c])[0]
        _, top = attribution.readout_batch(params, ids[None], target, 0, cfg=cfg, kind="prob")
        p, _ = attribution.readout_batch(params, ids[None], target, 0, cfg=cfg, kind="prob")
        lp = lens.logit_lens(params, cfg, ids)[-1]
        order = np.argsort(-lp)
        foil = int(order[1] if order[0] == target else order[0])
        if int(top[0]) == target and float(p[0]) >= min_p:
            out.append({"country": c, "ids": ids, "target": target, "foil": foil,
                        "p": float(p[0]), "key": key,
                        "tokens": [tok.token_str(i) for i in ids]})
    return out


def sink_mask(t: int) -> np.ndarray:
    """Keeps the first token at its real embedding during IG.

    SmolLM2 has no BOS; its first token acts as the attention sink, and interpolating
    that embedding makes the integrand spike near the baseline (completeness error
    > 100% at m = 64 when it moves, < 1% when it is held fixed, like template tokens).
    """
    m = np.zeros(t, bool)
    m[0] = True
    return m


def attributions(params, cfg, item, *, filler_id: int, ig_steps: int, key) -> dict:
    ids, y = item["ids"], item["target"]
    ig = attribution.integrated_gradients(params, cfg, ids, y, steps=ig_steps,
                                          keep_mask=sink_mask(len(ids)))
    attn = attention.attention_maps(params, cfg, ids)
    return {
        "saliency": attribution.saliency(params, cfg, ids, y),
        "grad_x_input": attribution.gradient_x_input(params, cfg, ids, y),
        "integrated_gradients": ig.scores,
        "occlusion": attribution.occlusion(params, cfg, ids, y, filler_id=filler_id),
        "rollout": attention.rollout(attn)[-1],
        "random": attribution.random_attribution(key, len(ids)),
        "_ig": ig,
    }


RANDOMIZED_METHODS = ("grad_x_input", "integrated_gradients", "occlusion")


def randomization_table(params, cfg, items, *, filler_id: int, points, key,
                        ig_steps: int = 16) -> list[dict]:
    """Cascading model-parameter randomization (``sanity.cascading_randomization``) per
    method: mean and min/max Spearman of |scores| (trained vs randomized) over ``items``
    after each number of randomized stages in ``points``."""
    import functools

    rhos: dict[str, list[list[float]]] = {m: [] for m in RANDOMIZED_METHODS}
    stage_at: dict[int, str] = {}
    for it in items:
        ids, y = it["ids"], it["target"]
        fns = {
            "grad_x_input": functools.partial(attribution.gradient_x_input, cfg=cfg,
                                              tokens=ids, target_id=y),
            "integrated_gradients": lambda p, ids=ids, y=y: attribution.integrated_gradients(
                p, cfg, ids, y, steps=ig_steps, keep_mask=sink_mask(len(ids))).scores,
            "occlusion": functools.partial(attribution.occlusion, cfg=cfg, tokens=ids,
                                           target_id=y, filler_id=filler_id),
        }
        for m, f in fns.items():
            res = sanity.cascading_randomization(params, cfg, f, key, points=points)
            rhos[m].append([r.spearman for r in res[1:]])
            stage_at.update({r.n_randomized: r.stage for r in res[1:]})
    rows = []
    for j, k in enumerate(sorted(set(points))):
        row = {"randomized": f"top {k} (down to {stage_at[k]})"}
        for m in RANDOMIZED_METHODS:
            v = np.array([r[j] for r in rhos[m]])
            row[m] = f"{np.nanmean(v):.2f} [{np.nanmin(v):.2f}, {np.nanmax(v):.2f}]"
            row["_" + m] = float(np.nanmean(v))
        rows.append(row)
    return rows


def run(params, cfg, tok, *, quick: bool, seed: int = 0, outdir: pathlib.Path,
        progress: Callable | None = None) -> dict:
    """Runs the demonstration; writes PNGs into ``outdir``; returns tables and metrics."""
    outdir.mkdir(parents=True, exist_ok=True)
    items = known_prompts(params, cfg, tok)
    n_attr = 5 if quick else len(items)
    n_trace = 2 if quick else 6
    items_a = items[:n_attr]
    filler = tok.encode(" the")[0]
    key = jax.random.PRNGKey(seed)
    per_method = {m: [] for m in METHODS + ("reverse_ig",)}
    completeness = {16: [], 32: [], 64: []}
    maps = []
    bar = progress(total=len(items_a) + n_trace, desc="explain") if progress else None
    for i, it in enumerate(items_a):
        scores = attributions(params, cfg, it, filler_id=filler, ig_steps=64,
                              key=jax.random.fold_in(key, i))
        completeness[64].append(scores["_ig"].completeness_error)
        if i == 0 or not quick:
            for m in (16, 32):
                completeness[m].append(attribution.integrated_gradients(
                    params, cfg, it["ids"], it["target"], steps=m,
                    keep_mask=sink_mask(len(it["ids"]))).completeness_error)
        scores["reverse_ig"] = -scores["integrated_gradients"]
        for m in per_method:
            f = faithfulness.faithfulness(params, cfg, it["ids"], it["target"], scores[m],
                                          filler_id=filler, ks=(1, 2, 3))
            f.update(faithfulness.plausibility(scores[m], it["key"]))
            per_method[m].append(f)
        maps.append((it, {m: scores[m] for m in METHODS}))
        if bar:
            bar.update(1)
    table = []
    for m, rows in per_method.items():
        r = {"method": m}
        for k in ("comp@1", "comp@3", "aopc_comp", "suff@1", "aopc_suff", "flip", "hit@1", "f1"):
            v = np.array([x[k] for x in rows])
            r[k] = float(v.mean())
            if k in ("aopc_comp", "aopc_suff"):
                r[k + "_std"] = float(v.std())
        table.append(r)
    n_stages = len(sanity.stage_names(params, cfg))
    points = sorted({k for k in (1, 4, 16) if k < n_stages} | {n_stages})
    if not quick:
        points = sorted(set(points) | {k for k in (2, 8) if k < n_stages})
    rand = randomization_table(params, cfg, items_a[: 2 if quick else 5], filler_id=filler,
                               points=points, key=jax.random.fold_in(key, 2000))
    traces = []
    for j, it in enumerate(items[:n_trace]):
        ks = np.nonzero(it["key"])[0]
        res = tracing.causal_trace(params, cfg, it["ids"], (int(ks[0]), int(ks[-1]) + 1),
                                   it["target"], n_samples=3 if quick else 10,
                                   key=jax.random.fold_in(key, 1000 + j))
        traces.append((it, res))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    lens_traj = [np.exp(lens.logit_lens(params, cfg, it["ids"])[:, it["target"]])
                 for it in items[:n_trace]]
    plots = [
        plot_attributions(maps[: min(4, len(maps))], outdir / "attributions.png"),
        plot_traces(traces, outdir / "causal_trace.png"),
        plot_lens(lens_traj, [it["country"] for it in items[:n_trace]], outdir / "logit_lens.png"),
    ]
    trace_summary = []
    for it, res in traces:
        ks = np.nonzero(it["key"])[0]
        ie = res.indirect_effect
        trace_summary.append({
            "country": it["country"], "p_clean": res.p_clean, "p_corrupt": res.p_corrupt,
            "best_layer_last_subject_token": int(np.argmax(ie[:, ks[-1]])),
            "max_ie_subject": float(ie[:, ks[0]: ks[-1] + 1].max()),
            "max_ie_last_token": float(ie[:, -1].max()),
        })
    return {
        "n_known": len(items), "countries": [it["country"] for it in items],
        "p": [it["p"] for it in items], "table": table,
        "completeness": {m: (float(np.mean(v)), float(np.max(v))) for m, v in completeness.items()
                         if v},
        "traces": trace_summary, "plots": plots, "randomization": rand,
        "n_randomization_prompts": min(len(items_a), 2 if quick else 5),
    }


def plot_attributions(maps, path: pathlib.Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(maps), 3.2))
    for k, (it, scores) in enumerate(maps):
        ax = fig.add_subplot(1, len(maps), k + 1)
        mat = np.stack([np.abs(scores[m]) / (np.abs(scores[m]).max() + 1e-12) for m in METHODS])
        ax.imshow(mat, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(it["tokens"])), [t.strip() or "_" for t in it["tokens"]],
                      rotation=60, fontsize=7)
        ax.set_yticks(range(len(METHODS)), METHODS if k == 0 else [""] * len(METHODS), fontsize=7)
        ax.set_title(f"-> {CAPITAL[it['country']]} (p={it['p']:.2f})", fontsize=8)
    fig.suptitle("|attribution| per token (row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_traces(traces, path: pathlib.Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(traces), 4.0))
    for k, (it, res) in enumerate(traces):
        ax = fig.add_subplot(1, len(traces), k + 1)
        im = ax.imshow(res.probs.T, cmap="Purples", aspect="auto", origin="upper")
        ax.set_yticks(range(len(it["tokens"])),
                      [t.strip() + ("*" if s else "") for t, s in zip(it["tokens"], it["key"],
                                                                     strict=True)], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"p({CAPITAL[it['country']]}) restored\nclean {res.p_clean:.2f}, "
                     f"corrupt {res.p_corrupt:.2f}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_lens(trajs, names, path: pathlib.Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for t, n in zip(trajs, names, strict=True):
        ax.plot(t, label=f"{n} -> {CAPITAL[n]}")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("logit-lens p(answer)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
