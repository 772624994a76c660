"""The knowledge-refresh experiment: ROME / MEMIT / FT-L / retrieval on SmolLM2 facts.

``run(cfg, workdir, bar)`` measures the facts the model knows, traces where they
are recalled (causal tracing, MLP restoration), estimates key second moments,
then scores single edits, a MEMIT batch and sequential edits with ES/PS/NS and
fluency, and returns a results dict; ``plots`` draws the figures. Used by
``experiments/refresh_knowledge.py`` and the ``refresh_knowledge`` repro entry.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxlm.editing import alphaedit, baselines, data, hooks, memit, metrics, rome
from jaxlm.editing import cov as cov_lib
from jaxlm.editing.requests import encode_prompt
from jaxlm.editing.value import ValueConfig, make_contexts
from jaxlm.utils.config import Registry
from jaxlm.utils.stats import bootstrap_ci


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Sizes and settings of the refresh-knowledge experiment.

    Attributes:
        model: packaged model name.
        layer: ROME/FT layer (-1: argmax of the MLP causal-tracing curve in the
            first half of the network, traced on the calibration facts only).
        n_calib: calibration facts (traced; the layer sweep runs on them too), split off
            before any edit is evaluated: every reported ES/PS/NS/retain is on the other,
            disjoint facts (``calibration_split``).
        memit_layers: MEMIT critical layers (empty: layer-1..layer+1).
        n_single: single edits per method (from the unedited model).
        seq_points: sequential-edit checkpoints (ROME, FT, retrieval; MEMIT as one batch
            of that size).
        trace_samples: noise samples per traced fact.
        n_contexts, context_len: ROME context prefixes.
        cov_tokens: tokens of the pydoc text sample for C; cov_shrink: alpha of shrink().
        memit_lambda: MEMIT's weight of C.
        ft_lr, ft_linf: FT-L settings.
        retrieval_threshold: scope check of the retrieval baseline (cosine).
        fluency_tokens: generated tokens per fluency prompt.
        fluency_edits: single edits per method whose fluency is measured (the first ones).
        sweep_layers: ROME (C = I) is also run at these layers on the first ``sweep_n``
            facts (ES/PS/NS by layer, next to the causal-tracing curve).
        ft_seq_max: sequential FT-L stops after this many edits (it is the slowest part
            after ROME and its curve is flat).
        mix_relations: order the edits so every prefix mixes the relations in proportion
            (False: capitals first, most confident facts first).
        methods: which of rome, rome_cov, memit, alphaedit, ft, retrieval to run.
        seq_methods: sequential comparisons (rome, ft, alphaedit one edit after another;
            memit as one batch per checkpoint; retrieval memory of that size).
        alpha_null_rtol, alpha_l2: AlphaEdit's null-space threshold (relative to the top
            eigenvalue of the un-shrunk C) and L2 weight; layers as MEMIT.
    """

    model: str = "smollm2-135m-instruct"
    layer: int = -1
    memit_layers: tuple[int, ...] = ()
    n_single: int = 10
    seq_points: tuple[int, ...] = (1, 10, 50)
    n_calib: int = 6
    trace_samples: int = 5
    n_contexts: int = 5
    context_len: int = 5
    cov_tokens: int = 8192
    cov_shrink: float = 1e-2
    memit_lambda: float = 1.0e4
    value_steps: int = 20
    ft_lr: float = 1e-3
    ft_linf: float = 5e-3
    retrieval_threshold: float = 0.0
    fluency_tokens: int = 40
    fluency_edits: int = 5
    sweep_layers: tuple[int, ...] = ()
    sweep_n: int = 5
    ft_seq_max: int = 1000
    mix_relations: bool = True
    methods: tuple[str, ...] = ("rome", "rome_cov", "memit", "alphaedit", "ft", "retrieval")
    seq_methods: tuple[str, ...] = ("rome", "ft", "memit", "alphaedit", "retrieval")
    alpha_null_rtol: float = 1e-2
    alpha_l2: float = 10.0


EXPERIMENTS: Registry[ExperimentConfig] = Registry("refresh_knowledge")
# The default run (14 edits, ~30 min on a 2-core box shared with other jobs); "smollm2_all"
# edits all 39 known facts (single and sequential), about three times that.
EXPERIMENTS.add("smollm2", ExperimentConfig(n_single=14, seq_points=(1, 5, 10, 14),
                                            fluency_edits=2, sweep_layers=(4, 7), sweep_n=4,
                                            ft_seq_max=10))
EXPERIMENTS.add("smollm2_all", ExperimentConfig(n_single=39, seq_points=(1, 10, 50),
                                                fluency_edits=3, sweep_layers=(2, 4, 7, 10),
                                                sweep_n=4))
EXPERIMENTS.add("smollm2_test", ExperimentConfig(
    n_single=2, seq_points=(1, 3), n_calib=2, trace_samples=3, cov_tokens=2048,
    fluency_tokens=24, fluency_edits=1,
    seq_methods=("rome", "memit", "alphaedit", "retrieval"),
    mix_relations=False,
))

FLUENCY_PROMPTS = ("France is", "The city of", "My favourite country")


def _mean(rows, k):
    v = [r[k] for r in rows if not np.isnan(r[k])]
    return float(np.mean(v)) if v else float("nan")


def mix_relations(cases):
    """Interleaves the relations in proportion (stable within a relation), so the first k
    edits sample every relation and the whole confidence range."""
    rank: dict[str, int] = {}
    total: dict[str, int] = {}
    for c in cases:
        total[c.relation] = total.get(c.relation, 0) + 1
    keys = []
    for c in cases:
        r = rank.get(c.relation, 0)
        rank[c.relation] = r + 1
        keys.append((r + 0.5) / total[c.relation])
    return [c for _, c in sorted(zip(keys, cases, strict=True), key=lambda x: x[0])]


def calibration_split(cases, n_calib: int):
    """(calibration facts, evaluation facts): ``n_calib`` facts spread evenly over the
    (relation-mixed) list, so they cover every relation and the confidence range; the
    evaluation facts are the rest, in order. Disjoint by construction."""
    if not 0 < n_calib < len(cases):
        raise ValueError(f"n_calib={n_calib}: need 0 < n_calib < {len(cases)} known facts")
    step = len(cases) / n_calib
    pick = {int(i * step + step / 2) for i in range(n_calib)}
    return ([c for i, c in enumerate(cases) if i in pick],
            [c for i, c in enumerate(cases) if i not in pick])


def trace_layers(params, cfg, tok, cases, n: int, samples: int, seed: int,
                 window: int = 5) -> np.ndarray:
    """Normalised indirect effect of restoring each layer's MLP output (a window of
    ``window`` layers) at the subject's last token, averaged over ``n`` facts: [L].

    Causal tracing (Meng et al.) with ``jaxlm.interpret.tracing``'s building blocks, but
    only the subject's last token is swept (L restore masks instead of L x T).
    """
    from jaxlm.interpret.tracing import (embedding_noise_std, layer_window_masks,
                                         restore_sweep, run_with_cache)

    std = 3.0 * embedding_noise_std(params)
    n_l = cfg.n_layers
    curves = []
    for i, c in enumerate(cases[:n]):
        r = c.request
        e = encode_prompt(tok, r.template, r.subject)
        head = tok.encode(r.template[: r.template.index("{}")].rstrip())
        s0 = len(head) if list(e.ids[: len(head)]) == head else 0
        tid = tok.encode(r.text + r.target_true)[len(e.ids)]
        ids = np.asarray(e.ids, np.int32)[None]
        t = ids.shape[1]
        logits, acts = run_with_cache(params, cfg, ids, ("mlp_out",))
        p_clean = float(jax.nn.softmax(logits[0, -1])[tid])
        span = np.zeros((t,), np.float32)
        span[s0 : e.subject_last + 1] = 1.0
        eps = jax.random.normal(jax.random.PRNGKey(seed + i), (samples, t, cfg.d_model))
        delta = std * eps * span[None, :, None]
        masks = layer_window_masks(n_l, t, window).reshape(n_l, t, n_l, t)[:, e.subject_last]
        masks = np.concatenate([np.zeros((1, n_l, t), bool), masks])  # row 0: restore nothing
        probs = np.asarray(restore_sweep(params, np.repeat(ids, samples, 0), delta,
                                         acts["mlp_out"][:, 0], masks, int(tid), cfg=cfg,
                                         site="mlp_out"))
        curves.append((probs[1:] - probs[0]) / (p_clean - probs[0]))
    return np.mean(curves, axis=0)


def run(ecfg: ExperimentConfig, workdir: str | pathlib.Path, *, seed: int = 0,
        bar: Callable[..., Any] | None = None, log: Callable[[str], None] = print) -> dict:
    """Runs the experiment; returns a JSON-able results dict (also written to workdir)."""
    import jaxlm.weights as weights

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    m = weights.load(ecfg.model)
    cfg, tok = m.cfg, m.tokenizer
    params = hooks.as_jax(m.params)
    out: dict[str, Any] = {"config": dataclasses.asdict(ecfg), "timings": {}}
    out["timings"]["load"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    cases, report = data.build_cases(params, cfg, tok, cache_path=workdir / "cases.json")
    if ecfg.mix_relations:
        cases = mix_relations(cases)
    calib, cases = calibration_split(cases, ecfg.n_calib)
    out["calib_cases"] = [dataclasses.asdict(c.request) for c in calib]
    out["facts"] = {k: {"candidates": v["candidates"], "known": v["known"]}
                    for k, v in report.items()}
    log(f"known facts: {out['facts']} -> {len(cases)} edit cases")
    ctx_path = workdir / f"contexts_{seed}.json"
    if ctx_path.exists():
        contexts = json.loads(ctx_path.read_text())
    else:
        contexts = make_contexts(params, cfg, tok, n=ecfg.n_contexts, length=ecfg.context_len,
                                 seed=seed)
        ctx_path.write_text(json.dumps(contexts))
    out["contexts"] = contexts
    out["timings"]["facts_contexts"] = time.perf_counter() - t0

    # causal tracing over the calibration facts (never edited or evaluated) -> edit layer
    t0 = time.perf_counter()
    curve = trace_layers(params, cfg, tok, calib, len(calib), ecfg.trace_samples, seed)
    # first half, skipping windows that contain block 0 (its MLP acts as a detokeniser:
    # restoring it undoes the whole embedding corruption of a one-token subject)
    lo, half = 3, cfg.n_layers // 2
    traced = lo + int(np.argmax(curve[lo:half]))
    layer = traced if ecfg.layer < 0 else ecfg.layer
    out["timings"]["trace"] = time.perf_counter() - t0
    out["trace"] = {"curve": curve.tolist(), "argmax_first_half": traced, "layer_used": layer,
                    "seconds": time.perf_counter() - t0}
    log(f"tracing argmax (first half) = {traced}; editing layer {layer}")
    mlayers = ecfg.memit_layers or tuple(range(max(0, layer - 1), min(cfg.n_layers, layer + 2)))
    vcfg = ValueConfig(steps=ecfg.value_steps)
    t0 = time.perf_counter()
    raw_covs = cov_lib.key_second_moments(params, cfg, tok, sorted({layer, *mlayers}),
                                          n_tokens=ecfg.cov_tokens, cache_dir=workdir / "cache")
    covs = {k: cov_lib.shrink(v, ecfg.cov_shrink) for k, v in raw_covs.items()}
    alpha_hp = alphaedit.AlphaEditConfig(mlayers, vcfg, ecfg.alpha_null_rtol, ecfg.alpha_l2)
    alpha0 = alphaedit.init_state(raw_covs, alpha_hp)
    out["alpha_null_dims"] = {str(k): v[1] for k, v in alpha0.proj.items()}
    out["timings"]["cov"] = time.perf_counter() - t0

    n = min(ecfg.n_single, len(cases))
    single = cases[:n]
    t0 = time.perf_counter()
    pre = metrics.evaluate_cases(params, cfg, tok, single)
    out["pre"] = metrics.summarize(pre)
    out["timings"]["pre_eval"] = time.perf_counter() - t0
    rome_hp = rome.RomeConfig(layer, vcfg)
    rome_cov_hp = rome.RomeConfig(layer, vcfg, use_cov=True)
    ft_hp = baselines.FTConfig(layer, lr=ecfg.ft_lr, linf=ecfg.ft_linf)
    memit_hp = memit.MemitConfig(mlayers, vcfg, ecfg.memit_lambda, use_cov=True)
    memit_cache: dict = {}  # request -> delta at the top MEMIT layer (batch-independent)
    methods = {
        "rome": lambda p, r: rome.rome_edit(p, cfg, tok, r, rome_hp, contexts=contexts),
        "ft": baselines.make_ft_editor(cfg, tok, ft_hp),
    }
    active = [k for k in ("rome", "rome_cov", "memit", "alphaedit", "ft") if k in ecfg.methods]
    n_seq = min(max(ecfg.seq_points, default=0), len(cases)) * sum(
        k in ecfg.seq_methods for k in ("rome", "ft", "alphaedit"))
    pbar = bar(total=n * len(active) + n_seq, desc="edits") if bar else None
    single_rows: dict[str, list[dict]] = {k: [] for k in active}
    edit_seconds: dict[str, list[float]] = {k: [] for k in active}
    single_flu: dict[str, list[float]] = {k: [] for k in active}
    t_m = {k: 0.0 for k in active}

    def record(name, i, c, newp, secs):
        t1 = time.perf_counter()
        single_rows[name].append(metrics.evaluate_cases(newp, cfg, tok, [c])[0])
        if i < ecfg.fluency_edits:
            single_flu[name].append(metrics.fluency(newp, cfg, tok, FLUENCY_PROMPTS,
                                                    max_new_tokens=ecfg.fluency_tokens)[0])
        edit_seconds[name].append(secs)
        t_m[name] += secs + time.perf_counter() - t1
        if pbar:
            pbar.update(1)

    for i, c in enumerate(single):
        value = None
        if "rome" in active or "rome_cov" in active:
            t0 = time.perf_counter()
            newp, info = rome.rome_edit(params, cfg, tok, c.request, rome_hp, contexts=contexts)
            t_rome, value = time.perf_counter() - t0, info.value
            if "rome" in active:
                record("rome", i, c, newp, t_rome)
        if "rome_cov" in active:
            # k* and v* do not depend on C: reuse the optimisation, time only the update
            t0 = time.perf_counter()
            newp, info = rome.rome_edit(params, cfg, tok, c.request, rome_cov_hp,
                                        contexts=contexts, cov=covs[layer], value=value)
            record("rome_cov", i, c, newp, t_rome + time.perf_counter() - t0)
        if "memit" in active:
            t0 = time.perf_counter()
            newp, _ = memit.memit_edit(params, cfg, tok, [c.request], memit_hp,
                                       contexts=contexts, covs=covs, value_cache=memit_cache)
            record("memit", i, c, newp, time.perf_counter() - t0)
        if "alphaedit" in active:
            # same deltas as MEMIT (same layers, unedited model): the cache is shared
            t0 = time.perf_counter()
            newp, _, _ = alphaedit.alphaedit_edit(params, cfg, tok, [c.request], alpha_hp,
                                                  alpha0, contexts=contexts,
                                                  value_cache=memit_cache)
            record("alphaedit", i, c, newp, time.perf_counter() - t0)
        if "ft" in active:
            t0 = time.perf_counter()
            newp, _ = methods["ft"](params, c.request)
            record("ft", i, c, newp, time.perf_counter() - t0)
    for name in active:
        out["timings"][name] = t_m[name]
        log(f"{name}: {metrics.summarize(single_rows[name])} "
            f"({np.median(edit_seconds[name]):.1f} s/edit)")
    if "retrieval" in ecfg.methods:
        single_rows["retrieval"] = _retrieval_rows(params, cfg, tok, single,
                                                   ecfg.retrieval_threshold)
        edit_seconds["retrieval"] = [0.0]
    out["single"] = {k: metrics.summarize(v) for k, v in single_rows.items()}
    for k, v in single_flu.items():
        if v:
            out["single"][k]["fluency"] = float(np.mean(v))
    out["single_rows"] = {k: v for k, v in single_rows.items()}
    out["edit_seconds"] = {k: {"median": float(np.median(v)), "first": float(v[0]),
                               "all": v} for k, v in edit_seconds.items()}
    out["cases"] = [dataclasses.asdict(c.request) for c in single]
    out["cases_all"] = [dataclasses.asdict(c.request) for c in cases]

    (workdir / "results_partial.json").write_text(json.dumps(out, indent=1, default=float))

    # ROME efficacy / generalisation / specificity by edit layer (a check of the tracing),
    # on the calibration facts: selection evidence, never the reported scores
    t0 = time.perf_counter()
    sweep = {}
    for lay in ecfg.sweep_layers:
        hp = rome.RomeConfig(lay, vcfg)
        rows = [metrics.evaluate_cases(rome.rome_edit(params, cfg, tok, c.request, hp,
                                                      contexts=contexts)[0], cfg, tok, [c])[0]
                for c in calib[: ecfg.sweep_n]]
        sweep[str(lay)] = metrics.summarize(rows)
        log(f"layer {lay}: {sweep[str(lay)]}")
    out["layer_sweep"] = sweep
    out["timings"]["layer_sweep"] = time.perf_counter() - t0

    # sequential edits
    t0 = time.perf_counter()
    out["fluency_pre"] = metrics.fluency(params, cfg, tok, FLUENCY_PROMPTS,
                                         max_new_tokens=ecfg.fluency_tokens)[0]
    methods["alphaedit"] = _alpha_seq_editor(cfg, tok, alpha_hp, alpha0, contexts, memit_cache)
    out["sequential"] = _sequential(params, cfg, tok, cases, ecfg, methods, layer, memit_hp,
                                    contexts, covs, memit_cache, pbar)
    out["timings"]["sequential"] = time.perf_counter() - t0
    if pbar:
        pbar.close()
    out["timings"]["total"] = time.perf_counter() - t_start
    (workdir / "results.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def _alpha_seq_editor(cfg, tok, hp, state0, contexts, memit_cache):
    """Sequential AlphaEdit as ``edit(params, request) -> (params, info)``: the state (the
    keys edited so far) is carried from call to call; the first call (on the unedited model)
    reuses MEMIT's cached delta."""
    box = {"state": state0}

    def edit(p, request):
        first = box["state"].n_edits == 0
        new, box["state"], info = alphaedit.alphaedit_edit(
            p, cfg, tok, [request], hp, box["state"], contexts=contexts,
            value_cache=memit_cache if first else None)
        return new, info

    return edit


def _retrieval_rows(params, cfg, tok, cases, threshold):
    mem = baselines.build_memory(params, cfg, tok, [c.request for c in cases])
    prompts = sorted({p for c in cases for p in
                      [c.request.text, *c.paraphrases, *(q for q, _ in c.neighbours)]})
    aug = dict(zip(prompts, baselines.augment(mem, params, cfg, tok, prompts,
                                              threshold=threshold), strict=True))
    return metrics.evaluate_cases(params, cfg, tok, cases, rewrite=lambda p, c: aug[p])


def _without_edited_neighbours(cases, k):
    """The first ``k`` cases, each keeping only neighbour prompts whose subject is not among
    the first ``k`` edits (an edited neighbour's old answer is *meant* to change)."""
    edited = {c.request.text for c in cases[:k]}
    return [dataclasses.replace(c, neighbours=tuple(nb for nb in c.neighbours
                                                    if nb[0] not in edited))
            for c in cases[:k]]


def _seq_summary(p, cfg, tok, cases, k, rows=None, retain=True):
    """ES/PS/NS over the first ``k`` edits (NS on unedited neighbours only; NaN once every
    neighbour is edited) and ``retain``: top-1 accuracy of the known facts not edited yet."""
    s = metrics.summarize(rows if rows is not None else metrics.evaluate_cases(
        p, cfg, tok, _without_edited_neighbours(cases, k)))
    s["edits"] = k
    rest = cases[k:]
    if rest and retain:
        got = data.measure_facts(p, cfg, tok, [(c.request.text, c.request.target_true)
                                               for c in rest])
        correct = [float(g["correct"]) for g in got]
        s["retain"], s["retain_lo"], s["retain_hi"] = bootstrap_ci(correct)
        s["retain_correct"] = correct
        s["n_retain"] = len(rest)
    else:
        s["retain"] = float("nan")
    return s


def _sequential(params, cfg, tok, cases, ecfg, methods, layer, memit_hp, contexts, covs,
                memit_cache, pbar):
    points = sorted(p for p in ecfg.seq_points if p <= len(cases))
    if ecfg.seq_points and max(ecfg.seq_points) > len(cases):
        points.append(len(cases))  # as many as the model knows
    res: dict[str, list[dict]] = {}
    for name in ("rome", "ft", "alphaedit"):
        if name not in ecfg.seq_methods or not points:
            continue
        p = params
        rows = []
        last = points[-1] if name != "ft" else max(
            [k for k in points if k <= ecfg.ft_seq_max] or points[:1])
        for i in range(last):
            p, info = methods[name](p, cases[i].request)
            if pbar:
                pbar.update(1)
            if i + 1 in points:
                s = _seq_summary(p, cfg, tok, cases, i + 1)
                s["fluency"] = metrics.fluency(p, cfg, tok, FLUENCY_PROMPTS,
                                               max_new_tokens=ecfg.fluency_tokens)[0]
                s["rel_w_change"] = float(np.linalg.norm(
                    np.asarray(p["layers"][layer]["mlp"]["w_down"]) -
                    np.asarray(params["layers"][layer]["mlp"]["w_down"])) / np.linalg.norm(
                    np.asarray(params["layers"][layer]["mlp"]["w_down"])))
                rows.append(s)
        res[name] = rows
    if "memit" in ecfg.seq_methods:
        rows = []
        for k in points:
            p, _ = memit.memit_edit(params, cfg, tok, [c.request for c in cases[:k]], memit_hp,
                                    contexts=contexts, covs=covs, value_cache=memit_cache)
            s = _seq_summary(p, cfg, tok, cases, k)
            s["fluency"] = metrics.fluency(p, cfg, tok, FLUENCY_PROMPTS,
                                           max_new_tokens=ecfg.fluency_tokens)[0]
            rows.append(s)
        res["memit_batch"] = rows
    if "retrieval" in ecfg.seq_methods:
        rows = []
        for k in points:
            # (retain is not measured: the weights are unchanged, retrieval only edits prompts)
            s = _seq_summary(params, cfg, tok, cases, k, retain=False, rows=_retrieval_rows(
                params, cfg, tok, _without_edited_neighbours(cases, k),
                ecfg.retrieval_threshold))
            rows.append(s)
        res["retrieval"] = rows
    return res


def plots(out: dict, outdir: str | pathlib.Path) -> list[str]:
    """Causal-tracing curve and the sequential degradation curves (PNG paths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = pathlib.Path(outdir)
    paths = []
    curve = np.asarray(out["trace"]["curve"])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(np.arange(len(curve)), curve, color="tab:blue", alpha=0.6)
    ax.axvline(out["trace"]["layer_used"], color="tab:red", ls="--", label="edit layer")
    ax.set_xlabel("layer (MLP output restored, window 5, subject's last token)")
    ax.set_ylabel("normalised indirect effect")
    ax.axvline(out["trace"]["argmax_first_half"], color="tab:green", ls=":",
               label="argmax, layers 3..L/2")
    ax.set_title(f"Causal tracing, mean over {out['config']['n_calib']} calibration facts")
    ax.legend(fontsize=7)
    sweep = out.get("layer_sweep") or {}
    if sweep:
        ax2 = ax.twinx()
        lays = sorted(int(k) for k in sweep)
        for k, mk in (("es", "o"), ("ps", "s"), ("ns", "^")):
            ax2.plot(lays, [sweep[str(x)][k] for x in lays], mk + "-", lw=1, ms=4,
                     label=f"ROME {k.upper()} ({out['config']['sweep_n']} calibration facts)")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_ylabel("score after a ROME edit at that layer")
        ax2.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    p = outdir / "causal_trace_mlp.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    seq = out.get("sequential", {})
    if seq:
        fig, axes = plt.subplots(1, 5, figsize=(17, 3.2))
        styles = ("o-", "s--", "^:", "D-.")
        for j, (name, rows) in enumerate(seq.items()):
            xs = [r["edits"] for r in rows]
            for ax, k in zip(axes, ("es", "ps", "ns", "retain", "fluency"), strict=True):
                if all(k in r for r in rows) and not all(np.isnan(r[k]) for r in rows):
                    ax.plot(xs, [r[k] for r in rows], styles[j % len(styles)], label=name,
                            alpha=0.8, ms=5)
                    ax.set_title({"fluency": "fluency (n-gram entropy)",
                                  "ns": "NS (unedited neighbours)",
                                  "retain": "unedited facts still top-1"}.get(k, k.upper()))
                    ax.set_xscale("log")
                    ax.set_xlabel("edits")
        axes[-1].axhline(out["fluency_pre"], color="gray", ls=":", label="unedited")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        p = outdir / "sequential_edits.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths
