"""The explainability demonstration on capital facts (used by experiments/explain.py and the
``explain`` reproduction entry). Plotting uses ``matplotlib.figure.Figure`` (no pyplot state).

Prompts "The capital of <country> is" are kept only when the model's top-1 next token is
the capital with p >= ``min_p`` (measured before use). Per prompt: saliency, gradient x
input, IG (zero baseline, first token held at its real embedding, see ``sink_mask``),
occlusion, KernelSHAP and LIME (``jaxlm.interpret.surrogate``), attention rollout and a
random-ranking control; faithfulness (comprehensiveness / sufficiency at k = 1, 2, 3, AOPC,
decision flip, with a bootstrap CI of AOPC minus random's over prompts) with filler
replacement; plausibility as the fraction of |attribution| on the country (with a CI);
a study of where the gradient methods put their mass (``capital_study``); per-generated-
token attribution of short greedy continuations; the cascading model-parameter
randomization check; IG completeness; causal-tracing heat maps. Sizes: ``ExplainConfig``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from experiments.explainability.config import ExplainConfig, explain_config
from jaxlm.interpret import (attention, attribution, faithfulness, lens, sanity, surrogate,
                             tracing)
from jaxlm.utils.stats import bootstrap_ci

COUNTRIES = ("France", "Germany", "Japan", "Greece", "England", "China", "Portugal", "Italy",
             "Spain", "Russia", "Canada", "Austria", "Norway", "Ireland")
CAPITAL = {"France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Greece": "Athens",
           "England": "London", "China": "Beijing", "Portugal": "Lisbon", "Italy": "Rome",
           "Spain": "Madrid", "Russia": "Moscow", "Canada": "Ottawa", "Austria": "Vienna",
           "Norway": "Oslo", "Ireland": "Dublin"}
METHODS = ("saliency", "grad_x_input", "integrated_gradients", "occlusion", "kernel_shap", "lime",
           "rollout", "random")


def run_pretrained(quick: bool, seed: int, outdir: pathlib.Path, progress=None,
                   config: ExplainConfig | None = None) -> dict:
    """Loads SmolLM2-135M-Instruct (packaged GGUF) and runs ``run`` with ``config`` (default:
    the "quick" or "full" preset, by ``quick``; ``seed`` overrides the preset's)."""
    import dataclasses

    import jax.numpy as jnp

    from jaxlm import weights

    rc = config or explain_config("quick" if quick else "full")
    rc = dataclasses.replace(rc, seed=seed)
    m = weights.load("smollm2-135m-instruct")
    params = jax.tree.map(jnp.asarray, m.params)
    return run(params, m.cfg, m.tokenizer, rc, outdir=outdir, progress=progress)


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
        p, top = attribution.readout_batch(params, ids[None], target, 0, cfg=cfg, kind="prob")
        cap = text.index("capital")
        cap_pos = int(np.nonzero([a <= cap < b for a, b in enc.offsets])[0][0])
        lp = lens.logit_lens(params, cfg, ids)[-1]
        order = np.argsort(-lp)
        foil = int(order[1] if order[0] == target else order[0])
        if int(top[0]) == target and float(p[0]) >= min_p:
            out.append({"country": c, "ids": ids, "target": target, "foil": foil,
                        "p": float(p[0]), "key": key, "capital_pos": cap_pos,
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


def attributions(params, cfg, item, rc: ExplainConfig, *, filler_id: int, key) -> dict:
    """Every method's scores [T] for one prompt (target log p(capital)); ``_ig`` the IG
    result, ``_shap``/``_lime`` the surrogate results."""
    ids, y = item["ids"], item["target"]
    keep = sink_mask(len(ids))
    ig = attribution.integrated_gradients(params, cfg, ids, y, steps=rc.ig_steps, keep_mask=keep)
    attn = attention.attention_maps(params, cfg, ids)
    shap, shap_res = surrogate.kernel_shap(params, cfg, ids, y, n_samples=rc.shap_samples,
                                           keep_mask=keep, filler_id=filler_id, mask=rc.mask,
                                           seed=rc.seed)
    lime_s, lime_res = surrogate.lime(params, cfg, ids, y, n_samples=rc.lime_samples,
                                      sigma=rc.lime_sigma, ridge=rc.lime_ridge, keep_mask=keep,
                                      filler_id=filler_id, mask=rc.mask, seed=rc.seed)
    return {
        "saliency": attribution.saliency(params, cfg, ids, y),
        "grad_x_input": attribution.gradient_x_input(params, cfg, ids, y),
        "integrated_gradients": ig.scores,
        "occlusion": attribution.occlusion(params, cfg, ids, y, filler_id=filler_id),
        "kernel_shap": shap,
        "lime": lime_s,
        "rollout": attention.rollout(attn)[-1],
        "random": attribution.random_attribution(key, len(ids)),
        "_ig": ig, "_shap": shap_res, "_lime": lime_res,
    }


RANDOMIZED_METHODS = ("grad_x_input", "integrated_gradients", "occlusion", "kernel_shap")


def randomization_table(params, cfg, items, rc: ExplainConfig, *, filler_id: int, points,
                        key) -> tuple[list[dict], dict[str, list[float]]]:
    """Cascading model-parameter randomization (``sanity.cascading_randomization``) per
    method: mean and min/max Spearman of |scores| (trained vs randomized) over ``items``
    after each number of randomized stages in ``points``; also the per-prompt Spearman
    after the last point (for a CI)."""
    import functools

    rhos: dict[str, list[list[float]]] = {m: [] for m in RANDOMIZED_METHODS}
    stage_at: dict[int, str] = {}
    for it in items:
        ids, y = it["ids"], it["target"]
        keep = sink_mask(len(ids))
        fns = {
            "grad_x_input": functools.partial(attribution.gradient_x_input, cfg=cfg,
                                              tokens=ids, target_id=y),
            "integrated_gradients": lambda p, ids=ids, y=y, keep=keep:
                attribution.integrated_gradients(p, cfg, ids, y, steps=rc.random_ig_steps,
                                                 keep_mask=keep).scores,
            "occlusion": functools.partial(attribution.occlusion, cfg=cfg, tokens=ids,
                                           target_id=y, filler_id=filler_id),
            "kernel_shap": lambda p, ids=ids, y=y, keep=keep: surrogate.kernel_shap(
                p, cfg, ids, y, n_samples=rc.shap_samples, keep_mask=keep, filler_id=filler_id,
                mask=rc.mask, seed=rc.seed)[0],
        }
        for m, f in fns.items():
            # the held first token scores 0 for IG and KernelSHAP by construction: left out of
            # every method's correlation (a constant tie would inflate it)
            res = sanity.cascading_randomization(params, cfg, f, key, points=points,
                                                 exclude=keep)
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
    return rows, {m: [r[-1] for r in rhos[m]] for m in RANDOMIZED_METHODS}


def public(rows: list[dict]) -> list[dict]:
    """Rows without their "_"-prefixed (machine-readable) keys, for markdown tables."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _ci(values, rc: ExplainConfig) -> tuple[float, float, float]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return bootstrap_ci(v, n_boot=rc.n_boot, seed=rc.seed)


def _fmt(ci) -> str:
    return f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def capital_study(params, cfg, items, rc: ExplainConfig, *, filler_id: int) -> list[dict]:
    """Why do the gradient methods put their mass on "capital"? Mass on the country and on
    " capital" (first token held out of the denominator) for gradient variants: target
    log p(capital) vs the contrast log p(capital) - log p(foil), IG baseline zero vs the
    filler embedding, the gradient norm alone (saliency), and the embedding norm ||e_i||
    (an input-only "attribution"), with occlusion of the contrast for comparison."""
    variants: dict[str, list[tuple[float, float]]] = {}

    def add(name, scores, it):
        keep = sink_mask(len(it["ids"]))
        cap = np.zeros(len(it["ids"]), bool)
        cap[it["capital_pos"]] = True
        variants.setdefault(name, []).append(
            (faithfulness.answer_mass(scores, it["key"], keep_mask=keep),
             faithfulness.answer_mass(scores, cap, keep_mask=keep)))

    for it in items:
        ids, y, foil = it["ids"], it["target"], it["foil"]
        keep = sink_mask(len(ids))
        emb = np.asarray(attribution.token_embeddings(params, np.asarray(ids)))
        add("embedding norm ||e_i||", np.linalg.norm(emb, axis=-1), it)
        add("saliency ||grad||, log p", attribution.saliency(params, cfg, ids, y), it)
        add("grad x input, log p", attribution.gradient_x_input(params, cfg, ids, y), it)
        add("grad x input, contrast", attribution.gradient_x_input(
            params, cfg, ids, y, kind="contrast", foil_id=foil), it)
        for base, bname in (("zero", "zero"), (filler_id, "filler")):
            for kind in ("logprob", "contrast"):
                s = attribution.integrated_gradients(
                    params, cfg, ids, y, steps=rc.study_ig_steps, baseline=base, kind=kind,
                    foil_id=foil if kind == "contrast" else None, keep_mask=keep).scores
                add(f"IG {bname} baseline, {'log p' if kind == 'logprob' else 'contrast'}", s,
                    it)
        add("occlusion, log p", attribution.occlusion(params, cfg, ids, y, filler_id=filler_id),
            it)
        add("occlusion, contrast", attribution.occlusion(params, cfg, ids, y, kind="contrast",
                                                         foil_id=foil, filler_id=filler_id), it)
        add("KernelSHAP, contrast", surrogate.kernel_shap(
            params, cfg, ids, y, n_samples=rc.shap_samples, keep_mask=keep, filler_id=filler_id,
            mask=rc.mask, kind="contrast", foil_id=foil, seed=rc.seed)[0], it)
    rows = []
    for name, v in variants.items():
        a = np.array(v)
        rows.append({"variant": name, "mass on country": _fmt(_ci(a[:, 0], rc)),
                     "mass on 'capital'": _fmt(_ci(a[:, 1], rc)),
                     "_country": float(np.nanmean(a[:, 0])),
                     "_capital": float(np.nanmean(a[:, 1]))})
    return rows


def run(params, cfg, tok, rc: ExplainConfig, *, outdir: pathlib.Path,
        progress: Callable | None = None) -> dict:
    """Runs the demonstration; writes PNGs into ``outdir``; returns tables and metrics."""
    outdir.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    items = known_prompts(params, cfg, tok, min_p=rc.min_p)
    clock.lap("known_prompts")
    if not items:
        raise RuntimeError(f"no capital prompt is answered with p >= {rc.min_p}")
    items_a = items[: rc.n_attr or len(items)]
    n_trace = min(rc.n_trace, len(items))
    filler = tok.encode(rc.filler)[0]
    key = jax.random.PRNGKey(rc.seed)
    per_method = {m: [] for m in METHODS + ("reverse_ig",)}
    completeness = {16: [], 32: [], rc.ig_steps: []}
    mass = {m: [] for m in METHODS}
    chance = []
    maps = []
    shap_exact = []
    bar = progress(total=len(items_a) + n_trace + 3, desc="explain") if progress else None
    for i, it in enumerate(items_a):
        scores = attributions(params, cfg, it, rc, filler_id=filler,
                              key=jax.random.fold_in(key, i))
        keep = sink_mask(len(it["ids"]))
        completeness[rc.ig_steps].append(scores["_ig"].completeness_error)
        shap_exact.append(scores["_shap"].exact)
        if i == 0 or rc.n_attr == 0:
            for m in (16, 32):
                if m != rc.ig_steps:
                    completeness[m].append(attribution.integrated_gradients(
                        params, cfg, it["ids"], it["target"], steps=m,
                        keep_mask=keep).completeness_error)
        scores["reverse_ig"] = -scores["integrated_gradients"]
        for m in per_method:
            f = faithfulness.faithfulness(params, cfg, it["ids"], it["target"], scores[m],
                                          filler_id=filler, ks=(1, 2, 3))
            f.update(faithfulness.plausibility(scores[m], it["key"]))
            per_method[m].append(f)
        for m in METHODS:
            mass[m].append(faithfulness.answer_mass(scores[m], it["key"], keep_mask=keep))
        chance.append(it["key"].sum() / (~keep).sum())
        maps.append((it, {m: scores[m] for m in METHODS}))
        if bar:
            bar.update(1)
    clock.lap("attributions_and_faithfulness")
    table = []
    rnd_aopc = np.array([x["aopc_comp"] for x in per_method["random"]])
    for m, rows in per_method.items():
        r = {"method": m}
        for k in ("comp@1", "comp@3", "aopc_comp", "suff@1", "aopc_suff", "flip", "hit@1", "f1"):
            v = np.array([x[k] for x in rows])
            r[k] = float(v.mean())
            if k in ("aopc_comp", "aopc_suff"):
                r[k + "_std"] = float(v.std())
        d = _ci(np.array([x["aopc_comp"] for x in rows]) - rnd_aopc, rc)
        r["aopc_comp - random"], r["_aopc_vs_random_ci"] = _fmt(d), d
        table.append(r)
    plaus = []
    for m in METHODS:
        ci = _ci(mass[m], rc)
        plaus.append({"method": m, "mass on country": _fmt(ci), "_ci": ci,
                      "hit@1": float(np.mean([x["hit@1"] for x in per_method[m]]))})
    chance_mean = float(np.mean(chance))
    study = capital_study(params, cfg, items_a, rc, filler_id=filler)
    clock.lap("capital_study")
    if bar:
        bar.update(1)
    gens = []
    for it in items[: rc.n_generate]:
        ga = attribution.generation_attribution(params, cfg, it["ids"],
                                                max_new_tokens=rc.gen_tokens)
        ps = ga.prompt_scores()
        keep = sink_mask(len(it["ids"]))
        gm = [faithfulness.answer_mass(r, it["key"], keep_mask=keep) for r in ps]
        gens.append({"country": it["country"], "ga": ga,
                     "generated": [tok.token_str(int(t)) for t in ga.generated],
                     "mass_on_country": gm, "argmax_agrees": bool(ga.argmax_agrees.all())})
    clock.lap("generation_attribution")
    if bar:
        bar.update(1)
    n_stages = len(sanity.stage_names(params, cfg))
    points = sorted({min(k, n_stages) for k in rc.random_points} | {n_stages})
    rand, rho_last = randomization_table(params, cfg, items_a[: rc.n_random_prompts], rc,
                                         filler_id=filler, points=points,
                                         key=jax.random.fold_in(key, 2000))
    clock.lap("randomization")
    if bar:
        bar.update(1)
    traces = []
    for j, it in enumerate(items[:n_trace]):
        ks = np.nonzero(it["key"])[0]
        res = tracing.causal_trace(params, cfg, it["ids"], (int(ks[0]), int(ks[-1]) + 1),
                                   it["target"], n_samples=rc.trace_samples,
                                   key=jax.random.fold_in(key, 1000 + j))
        traces.append((it, res))
        if bar:
            bar.update(1)
    clock.lap("causal_tracing")
    if bar:
        bar.close()
    lens_traj = [np.exp(lens.logit_lens(params, cfg, it["ids"])[:, it["target"]])
                 for it in items[:n_trace]]
    plots = [
        plot_attributions(maps[: min(4, len(maps))], outdir / "attributions.png"),
        plot_generation(gens, tok, outdir / "generation_attribution.png"),
        plot_traces(traces, outdir / "causal_trace.png"),
        plot_lens(lens_traj, [it["country"] for it in items[:n_trace]], outdir / "logit_lens.png"),
    ]
    clock.lap("logit_lens_and_plots")
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
    rho_ci = {m: _ci(v, rc) for m, v in rho_last.items()}
    return {
        "config": dataclasses.asdict(rc),
        "n_known": len(items), "countries": [it["country"] for it in items],
        "n_attr": len(items_a),
        "p": [it["p"] for it in items], "table": table,
        "completeness": {m: (float(np.mean(v)), float(np.max(v))) for m, v in completeness.items()
                         if v},
        "ig_steps": rc.ig_steps,
        "shap_exact": bool(all(shap_exact)),
        "plausibility": plaus, "chance_mass": chance_mean, "capital_study": study,
        "generation": [{k: v for k, v in g.items() if k != "ga"} for g in gens],
        "traces": trace_summary, "plots": plots, "randomization": rand,
        "randomization_last_ci": rho_ci,
        "n_randomization_prompts": min(len(items_a), rc.n_random_prompts),
        "seconds": clock.laps,
    }


class _Clock:
    """Wall and CPU seconds per phase (``laps``: {phase: [wall, cpu]})."""

    def __init__(self):
        import time

        self._time = time
        self.laps: dict[str, list[float]] = {}
        self._t = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        t = (self._time.perf_counter(), self._time.process_time())
        self.laps[name] = [round(t[0] - self._t[0], 2), round(t[1] - self._t[1], 2)]
        self._t = t


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


def plot_generation(gens, tok, path: pathlib.Path) -> str:
    """Per-generated-token grad x input heat maps: rows = generated tokens, columns = the
    context (prompt, then earlier generated tokens), |score| row-normalised."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * max(1, len(gens)), 3.4))
    for k, g in enumerate(gens):
        ga = g["ga"]
        ax = fig.add_subplot(1, max(1, len(gens)), k + 1)
        a = np.abs(ga.scores)
        a = a / np.nanmax(a, axis=1, keepdims=True)
        ax.imshow(np.nan_to_num(a, nan=0.0), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ctx = [tok.token_str(int(t)) for t in np.concatenate([ga.prompt, ga.generated[:-1]])]
        ax.set_xticks(range(len(ctx)), [t.strip() or "_" for t in ctx], rotation=60, fontsize=7)
        ax.axvline(len(ga.prompt) - 0.5, color="w", lw=1)
        ax.set_yticks(range(len(g["generated"])), [repr(t) for t in g["generated"]], fontsize=7)
        ax.set_title(f"{g['country']}: grad x input per generated token", fontsize=8)
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
