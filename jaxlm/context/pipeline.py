"""The TACS experiment on capital facts: knowledge gate, probes, selection, TA/UR/DA.

``run(params, cfg, tokenizer, ...)`` does everything and returns plain dicts/arrays;
the paper package ``experiments/tacs/`` (presets, SmolLM2 driver, plots) and
``experiments/repro_tacs.py`` only configure, format and plot.

Steps:
 1. closed-book answer of every fact (no context); known = greedy next token is the
    capital's first token.
 2. known facts are split by country into probe-train / validation / test; unknown
    facts are test-only (they are what TA is measured on).
 3. one forward per prompt (truthful, untruthful, mixed contexts) captures the
    per-layer attn_out features and the no-selection answer.
 4. probes per layer (token and sentence level), top layers by validation accuracy.
 5. each test prompt is answered again with the TACS-T, TACS-S, oracle and
    drop-everything masks (identical masks are computed once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxlm.context import data as D
from jaxlm.context import detect, metrics, select
from jaxlm.interpret import probes

METHODS = ("no_selection", "tacs_token", "tacs_sentence", "oracle", "drop_all")
CONDITIONS = ("truthful", "untruthful", "mixed")


@dataclasses.dataclass(frozen=True)
class TacsConfig:
    """Sizes and settings of one TACS run.

    Attributes:
        n_train, n_val, n_test_known, n_test_unknown: countries per split (caps).
        batch: forward batch size.
        position_mode: "keep" or "compress" (see ``jaxlm.context.select``).
        detector: probe / vote settings.
        seed: shuffles, splits and foils.
    """

    n_train: int = 40
    n_val: int = 12
    n_test_known: int = 30
    n_test_unknown: int = 40
    batch: int = 16
    position_mode: str = "keep"
    detector: detect.DetectorConfig = detect.DetectorConfig()
    seed: int = 0


class Runner:
    """Batched, fixed-shape forward passes over prompts (one compilation per shape)."""

    def __init__(self, params, cfg, length: int, batch: int, progress: Callable | None = None):
        self.params, self.cfg, self.length, self.batch = params, cfg, length, batch
        self.progress = progress

    def run(self, prompts: Sequence[D.Prompt], drops: Sequence[np.ndarray] | None = None, *,
            capture: bool = False, mode: str = "keep", desc: str = ""):
        """Greedy next-token ids [N] and (with capture) context features per prompt."""
        n = len(prompts)
        answers = np.zeros(n, np.int64)
        feats: list[np.ndarray | None] = [None] * n
        bar = self.progress(total=n, desc=desc) if self.progress else None
        for s in range(0, n, self.batch):
            chunk = list(prompts[s : s + self.batch])
            real = len(chunk)
            chunk += [chunk[-1]] * (self.batch - real)
            toks, pos, pads = select.left_pad([p.ids for p in chunk], self.length)
            dr = np.zeros_like(toks, bool)
            if drops is not None:
                for i in range(real):
                    dr[i, pads[i]:] = drops[s + i]
            pos, bias = select.masked_inputs(pos, dr, mode)
            if bias is None:
                bias = np.zeros((self.batch, 1, 1, self.length), np.float32)
            logits, f = select.forward(self.params, self.cfg, toks, pos, bias, capture=capture)
            answers[s : s + real] = np.asarray(logits.argmax(-1))[:real]
            if capture:
                f = np.asarray(f)
                for i in range(real):
                    p = chunk[i]
                    end = max((e for _, e in p.sent_spans), default=0)
                    feats[s + i] = f[:, i, pads[i] : pads[i] + end].copy()  # [L, ctx, D]
            if bar is not None:
                bar.update(real)
        if bar is not None:
            bar.close()
        return answers, feats


def bag_of_words_features(prompts: Sequence[D.Prompt], dim: int = 512) -> np.ndarray:
    """Hashed bag-of-token-ids per sentence [1, S, dim] (a lexical control probe's input)."""
    rows = []
    for p in prompts:
        for s, e in p.sent_spans:
            v = np.zeros(dim, np.float32)
            for t in p.ids[s:e]:
                v[(t * 2654435761) % dim] += 1.0
            rows.append(v)
    return np.stack(rows)[None]


def _layer_acc_ci(probe, x, y, owner, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer accuracy with a bootstrap CI that resamples prompts (not tokens)."""
    correct = (np.asarray(probes.predict_logit(probe, x)) > 0) == (y[None] > 0.5)  # [L, N]
    groups = np.unique(owner)
    per = np.stack([correct[:, owner == g].mean(1) for g in groups], 1)  # [L, G]
    w = np.array([(owner == g).sum() for g in groups], np.float64)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(1000):
        i = rng.integers(0, len(groups), len(groups))
        boots.append((per[:, i] * w[i]).sum(1) / w[i].sum())
    boots = np.stack(boots)
    return correct.mean(1), np.quantile(boots, 0.025, 0), np.quantile(boots, 0.975, 0)


def run(params, cfg, tokenizer, tcfg: TacsConfig = TacsConfig(),
        progress: Callable | None = None) -> dict:
    """Runs the whole TACS experiment (see module doc). Returns a results dict."""
    rng = np.random.default_rng(tcfg.seed)
    facts = D.build_facts(tokenizer, tcfg.seed)
    closed = [D.make_prompt(tokenizer, f) for f in facts]
    # prompt lengths: the longest has two context sentences
    probe_len = max(len(D.make_prompt(tokenizer, f, D.contexts(f, rng)["mixed"]).ids)
                    for f in facts)
    length = -(-probe_len // 8) * 8
    runner = Runner(params, cfg, length, tcfg.batch, progress)
    short = Runner(params, cfg, -(-max(len(p.ids) for p in closed) // 8) * 8, tcfg.batch, progress)
    ans, _ = short.run(closed, desc="closed book")
    known = np.array([a == f.answer_id for a, f in zip(ans, facts, strict=True)])
    kf = [f for f, k in zip(facts, known, strict=True) if k]
    uf = [f for f, k in zip(facts, known, strict=True) if not k]
    n_k = len(kf)
    n_tr = min(tcfg.n_train, int(0.5 * n_k))
    n_va = min(tcfg.n_val, int(0.2 * n_k))
    perm = rng.permutation(n_k)
    tr = [kf[i] for i in perm[:n_tr]]
    va = [kf[i] for i in perm[n_tr : n_tr + n_va]]
    te_k = [kf[i] for i in perm[n_tr + n_va :]][: tcfg.n_test_known]
    te_u = [uf[i] for i in rng.permutation(len(uf))][: tcfg.n_test_unknown]

    def prompts_for(fs):
        out = []
        for f in fs:
            ctx = D.contexts(f, rng)
            out += [D.make_prompt(tokenizer, f, ctx[c]) for c in CONDITIONS]
        return out

    p_tr, p_va = prompts_for(tr), prompts_for(va)
    _, f_tr = runner.run(p_tr, capture=True, desc="probe features (train)")
    _, f_va = runner.run(p_va, capture=True, desc="probe features (val)")
    det = detect.train(f_tr, p_tr, f_va, p_va, tcfg.detector)

    p_te = prompts_for(te_k) + prompts_for(te_u)
    origin = np.array([True] * 3 * len(te_k) + [False] * 3 * len(te_u))
    cond = np.array(list(CONDITIONS) * (len(te_k) + len(te_u)))
    a_none, f_te = runner.run(p_te, capture=True, desc="test (no selection)")
    drops = {
        "tacs_token": [detect.drop_mask(det, f, p, "token")
                       for f, p in zip(f_te, p_te, strict=True)],
        "tacs_sentence": [detect.drop_mask(det, f, p, "sentence")
                          for f, p in zip(f_te, p_te, strict=True)],
        "oracle": [detect.oracle_drop(p) for p in p_te],
        "drop_all": [detect.all_drop(p) for p in p_te],
    }
    answers = {"no_selection": a_none}
    memo: dict[tuple[int, bytes], int] = {}
    todo: list[tuple[int, np.ndarray]] = []
    for m in drops:
        for i, d in enumerate(drops[m]):
            k = (i, d.tobytes())
            if d.any() and k not in memo:
                memo[k] = len(todo)
                todo.append((i, d))
    a_more, _ = runner.run([p_te[i] for i, _ in todo], [d for _, d in todo],
                           mode=tcfg.position_mode, desc="test (masked)")
    for m in drops:
        answers[m] = np.array([
            a_more[memo[(i, d.tobytes())]] if d.any() else a_none[i]
            for i, d in enumerate(drops[m])
        ])
    gold = np.array([p.fact.answer_id for p in p_te])
    foil = np.array([p.fact.foil_id for p in p_te])

    table = []
    for m in METHODS:
        c = answers[m] == gold
        row = {"method": m}
        single = (cond == "truthful") & ~origin | (cond == "untruthful") & origin
        s = metrics.ta_ur_da(origin[single], c[single], seed=tcfg.seed)
        mx = metrics.ta_ur_da(origin[cond == "mixed"], c[cond == "mixed"], seed=tcfg.seed)
        row.update({k: s[k] for k in ("TA", "TA_lo", "TA_hi", "UR", "UR_lo", "UR_hi", "DA",
                                      "DA_lo", "DA_hi", "n_ta", "n_ur")})
        row.update({"mixed_" + k: mx[k] for k in ("TA", "UR", "DA", "DA_lo", "DA_hi")})
        row["foil_rate_untruthful"] = float(np.mean(answers[m][(cond == "untruthful")]
                                                    == foil[cond == "untruthful"]))
        if m in drops:
            untr = [detect.oracle_drop(p) for p in p_te]
            ctx = [detect.all_drop(p) for p in p_te]
            d = np.concatenate([drops[m][i][ctx[i]] for i in range(len(p_te))])
            u = np.concatenate([untr[i][ctx[i]] for i in range(len(p_te))])
            row.update({"mask_" + k: v for k, v in metrics.mask_precision_recall(d, u).items()})
        table.append(row)
    no_ctx = metrics.ta_ur_da(origin[cond == "truthful"],
                              np.asarray(origin[cond == "truthful"]), seed=tcfg.seed)
    table.insert(0, {"method": "no_context", "TA": no_ctx["TA"], "UR": no_ctx["UR"],
                     "DA": no_ctx["DA"], "n_ta": no_ctx["n_ta"], "n_ur": no_ctx["n_ur"]})

    # probe accuracy per layer on held-out known countries, and on unknown facts
    kp = [p for p, o in zip(p_te, origin, strict=True) if o]
    kfe = [f for f, o in zip(f_te, origin, strict=True) if o]
    up = [p for p, o in zip(p_te, origin, strict=True) if not o]
    ufe = [f for f, o in zip(f_te, origin, strict=True) if not o]
    layer_acc = {}
    for level in detect.LEVELS:
        for name, ps, fs in (("known", kp, kfe), ("unknown", up, ufe)):
            if not ps:
                continue
            if level == "token":
                x, y, own = detect.token_dataset(fs, ps, tcfg.detector.label_from)
            else:
                x, y, own = detect.sentence_dataset(fs, ps)
            acc, lo, hi = _layer_acc_ci(det.probes[level], x, y, own, tcfg.seed)
            chance = max(y.mean(), 1 - y.mean())
            layer_acc[f"{level}_{name}"] = {"acc": acc, "lo": lo, "hi": hi,
                                            "chance": float(chance)}
    # bag-of-words control (sentence level): trained on the same train prompts
    bow = probes.fit_logistic_layers(bag_of_words_features(p_tr), detect.sentence_dataset(
        f_tr, p_tr)[1], l2=tcfg.detector.l2)
    _, yk, _ = detect.sentence_dataset(kfe, kp)
    bow_acc = float(detect.layer_accuracy(bow, bag_of_words_features(kp), yk)[0])

    examples = []
    for i in range(min(3, len(p_te))):
        examples.append({"prompt": tokenizer.decode(p_te[i].ids), "condition": str(cond[i]),
                         **{m: tokenizer.token_str(int(answers[m][i])) for m in METHODS}})
    return {
        "n_facts": len(facts), "n_known": int(known.sum()), "n_unknown": int((~known).sum()),
        "splits": {"train": len(tr), "val": len(va), "test_known": len(te_k),
                   "test_unknown": len(te_u)},
        "known_countries": [f.country for f in kf],
        "table": table, "layer_acc": layer_acc, "val_acc": det.val_acc,
        "layers": {k: v.tolist() for k, v in det.layers.items()},
        "bow_sentence_acc": bow_acc, "examples": examples, "detector": det,
        "test_prompts": p_te, "test_drops": drops, "position_mode": tcfg.position_mode,
    }
