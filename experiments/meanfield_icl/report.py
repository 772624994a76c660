"""Turns E1-E6 results into claim verdicts C1-C6 and report tables (used by the repro entry)."""

from __future__ import annotations

import numpy as np


def _fmt(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x:.3g}"


def summarize(e1: dict, e3: dict, e4: dict, e5: dict, e6: dict, e7: dict | None = None) -> dict:
    """Computes the headline numbers and a verdict per claim from the results.

    Returns:
        {"rows": [table rows], "metrics": {...}, "claims": {Ci: (verdict, note)}}.
    """
    m: dict = {}
    rows = []
    # ---- E1: reach below L(mu_0), floor vs N, seeds converged
    for kind, r in e1.items():
        for n in (k for k in r if k != "baselines"):
            met = r[n]["metrics"]
            ratio = met["loss"][:, -1] / met["loss"][:, 0]
            evr = r[n]["eval_loss"] / r[n]["eval_loss0"]
            m[f"e1_{kind}_N{n}_median_train_ratio"] = float(np.median(ratio))
            m[f"e1_{kind}_N{n}_median_eval_loss"] = float(np.median(r[n]["eval_loss"]))
            m[f"e1_{kind}_N{n}_frac_2orders"] = float(np.mean(ratio < 1e-2))
            rows.append({
                "exp": "E1", "setting": f"{kind} N={n}",
                "result": f"train L_T/L_0 median {_fmt(np.median(ratio))}; eval L median "
                          f"{_fmt(np.median(r[n]['eval_loss']))} (eval L/L_0 {_fmt(np.median(evr))}); "
                          f"{int(np.sum(ratio < 1e-2))}/{len(ratio)} seeds >= 2 orders; "
                          f"sum rho^2 {np.median(r[n]['eval_cca'].sum(1)):.3f}; "
                          f"G~L^p fit p={r[n]['power_law']['p']:.2f} (r2 {r[n]['power_law']['r2']:.2f})",
            })
    kind0 = next(iter(e1))
    r0 = e1[kind0]
    ns = [k for k in r0 if k != "baselines"]
    floors = [float(np.median(r0[n]["eval_loss"])) for n in ns]
    frac2 = np.mean([m[f"e1_{kind0}_N{n}_frac_2orders"] for n in ns])
    train_floors = [float(np.median(r0[n]["metrics"]["loss"][:, -1])) for n in ns]
    m["e1_floor_shrinks_with_N"] = bool(all(a >= b for a, b in zip(floors, floors[1:], strict=False)))
    m["e1_train_floor_shrinks_with_N"] = bool(
        all(a >= b for a, b in zip(train_floors, train_floors[1:], strict=False)))
    rows.append({"exp": "E1", "setting": f"{kind0} floor vs N",
                 "result": "median final loss on the training batch: "
                           + ", ".join(f"N={n}: {v:.2g}" for n, v in zip(ns, train_floors, strict=True))
                           + "; on fresh x: "
                           + ", ".join(f"N={n}: {v:.2g}" for n, v in zip(ns, floors, strict=True))
                           + " (the fresh-x floor is set by the fixed batch M, not by N)"})
    # ---- E2 at n = 256 (T2 if present)
    kind2 = "t2" if "t2" in e1 else kind0
    r2 = e1[kind2]
    base = r2["baselines"]
    i256 = base["n"].index(256) if 256 in base["n"] else len(base["n"]) - 2
    n_big = max(k for k in r2 if k != "baselines")
    trained = float(np.median(r2[n_big]["icl"][:, i256]))
    true_f, lsa = base["true_feats"][i256], base["lsa_x1"][i256]
    frozen = float(np.median(r2[n_big]["icl_frozen"][:, i256]))
    m.update({"e2_trained_icl_n256": trained, "e2_true_feats_n256": true_f,
              "e2_lsa_n256": lsa, "e2_frozen_n256": frozen})
    rows.append({"exp": "E2", "setting": f"{kind2} n={base['n'][i256]}, N={n_big}",
                 "result": f"trained MLP+LSA {trained:.4f} | true feats {true_f:.4f} | "
                           f"LSA(x,1) {lsa:.4f} | frozen random MLP {frozen:.4f}"})
    # ---- E3
    from experiments.meanfield_icl.experiment import e3_gap

    info = e3.get("info", {})
    runs = {k: v for k, v in e3.items() if k not in ("static", "info")}
    static_final = float(e3["static"]["loss_tf"][-1])
    gaps = {}
    for name, met in runs.items():
        gaps[name] = e3_gap(e3["static"], met) if np.all(np.isfinite(met["loss_tf"])) else np.nan
        m[f"e3_{name}_max_log_gap"] = gaps[name]
        m[f"e3_{name}_final_gamma_err"] = float(met["gamma_err"][-1])
        m[f"e3_{name}_t_end"] = float(met["time"][-1])
    m.update({f"e3_{k}": v for k, v in info.items() if not isinstance(v, dict)})
    rows.append({"exp": "E3", "setting": "joint GD vs static (Newton Gamma flow, adaptive eta)",
                 "result": f"lambda_max(N Hess_mu): L_TF {info.get('lambda_max_joint', np.nan):.3g}"
                           f" vs L {info.get('lambda_max_static', np.nan):.3g} (eta_spec*lambda = "
                           f"{info.get('eta_spec_times_lambda', np.nan):.3g} > 2: diverges); "
                           f"eta_0={info.get('eta0', np.nan):.2g}; static L at t="
                           f"{e3['static']['time'][-1]:.2g}: {static_final:.3g}; max |log L_joint - "
                           "log L_static| on the common t-range: "
                           + ", ".join(f"{k}: {v:.3f}" for k, v in gaps.items())
                           + "; final |Gamma-Gamma_mu|/|Gamma_mu|: "
                           + ", ".join(f"{k}: {float(v['gamma_err'][-1]):.2g}"
                                       for k, v in runs.items())})
    # ---- E4
    j = e4["n"].index(256) if 256 in e4["n"] else -1
    mj = e4.get("metrics_joint", {})
    joint_finite = bool(mj) and bool(np.all(np.isfinite(mj["loss_tf"])))
    m.update({"e4_learned_n256": e4["learned_gamma"][j], "e4_refit_n256": e4["refit_gamma"][j],
              "e4_refit_init_n256": e4.get("refit_gamma_init", [np.nan] * len(e4["n"]))[j],
              "e4_true_n256": e4["true_feats"][j], "e4_lsa_n256": e4["lsa_x1"][j],
              "e4_joint_finite": joint_finite})
    rows.append({"exp": "E4", "setting": f"prompt SGD n_train={e4['train_n']}, Gamma=Gamma*_n(mu)",
                 "result": "ICL risk (learned / refit Gamma / refit at init / true feats / LSA) at n="
                           + "; ".join(f"{n}: {a:.3f}/{b:.3f}/{c:.3f}/{d:.3f}/{e:.3f}"
                                       for n, a, b, c, d, e in
                                       zip(e4["n"], e4["learned_gamma"], e4["refit_gamma"],
                                           e4.get("refit_gamma_init", e4["refit_gamma"]),
                                           e4["true_feats"], e4["lsa_x1"], strict=True))
                           + (f". Joint-Gamma SGD arm (kappa=10, adaptive eta_0="
                              f"{e4.get('joint_eta0', np.nan):.2g}): finite={joint_finite}, R_n "
                              f"{mj['loss_tf'][0]:.3f} -> {mj['loss_tf'][-1]:.3f} over t="
                              f"{mj['time'][-1]:.2g}" if mj else "")})
    # ---- E5
    fit, pred = e5["fit"], e5["predicted_slope"]
    slope_ratio = fit["slope"] / pred if np.isfinite(pred) and np.isfinite(fit["slope"]) else np.nan
    m.update({"e5_L_S": e5["L_S"], "e5_grad_sq_S": e5["grad_sq_S"],
              "e5_grad_norm_S": e5.get("grad_norm_S", np.nan),
              "e5_lambda_min": e5["lambda_min"], "e5_lambda_u": e5["lambda_u"],
              "e5_lambda_max": e5["lambda_max"],
              "e5_slope": fit["slope"], "e5_pred_slope": pred, "e5_slope_ratio": slope_ratio,
              "e5_pred_slope_discrete": e5.get("predicted_slope_discrete", np.nan),
              "e5_t_eps0": e5["t_escape_eps0"], "e5_t_armB": e5["t_escape_armB"],
              "e5_t_generic_batch": e5["t_escape_generic_batch"],
              "e5_t_float32": e5["t_escape_float32"],
              "e5_min_homotopy_curv": float(np.min(e5["homotopy_curv"]))})
    rows.append({"exp": "E5", "setting": "exact support-restricted saddle (T2, float64, crossed "
                                         "antithetic batch)",
                 "result": f"L_S={e5['L_S']:.4f}, |grad|={e5.get('grad_norm_S', np.nan):.1e} "
                           f"(G={e5['grad_sq_S']:.1e}), lambda_min(N Hess, Lanczos)="
                           f"{e5['lambda_min']:.4g} (= transport block lambda_u "
                           f"{e5['lambda_u']:.4g}), lambda_max={e5['lambda_max']:.3g}; "
                           f"T(eps) at eps={[float(e) for e in e5['eps']]}: "
                           f"{[_fmt(t) for t in e5['t_escape']]}; fitted slope "
                           f"{_fmt(fit['slope'])} (eps <= 1e-3, {fit['n_points']} points) vs "
                           f"1/|lambda_min| {_fmt(pred)} (Euler map, eta={e5.get('eta', np.nan)}: "
                           f"{_fmt(e5.get('predicted_slope_discrete', np.nan))}); eps=0: "
                           f"T={_fmt(e5['t_escape_eps0'])}, arm B: {_fmt(e5['t_escape_armB'])}, "
                           f"generic batch: {_fmt(e5['t_escape_generic_batch'])}, float32: "
                           f"{_fmt(e5['t_escape_float32'])} (run to t={e5.get('t_max', np.nan):.0f});"
                           f" min mixture curvature {np.min(e5['homotopy_curv']):.3g}"})
    # ---- E6
    e6r = e6["rows"]
    rows.append({"exp": "E6", "setting": "lambda_min/max along a T2 run",
                 "result": "; ".join(f"t={r['time']:.0f}: L={r['loss']:.2g} lmin={r['lambda_min']:.2g}"
                                     f" lmax={r['lambda_max']:.2g}" for r in e6r[:: max(1, len(e6r) // 4)])})
    m["e6_final_lambda_min"] = e6r[-1]["lambda_min"]
    m["e6_final_lambda_max"] = e6r[-1]["lambda_max"]
    m["e6_min_lambda_min"] = min(r["lambda_min"] for r in e6r)

    # ---- E7 (optional)
    if e7 is not None:
        arms = e7["arms"]
        for name, arm in arms.items():
            m[f"e7_{name}_t_escape"] = arm["t_escape"]
            m[f"e7_{name}_final_loss"] = arm["final_loss"]
        rows.append({"exp": "E7", "setting": f"perturbations from the E5 saddle (sigma={e7['sigma']:g})",
                     "result": "; ".join(f"{k}: T={_fmt(v['t_escape'])}, final L={v['final_loss']:.2g}"
                                         for k, v in arms.items())})

    # ---- verdicts
    claims = {}
    saddle_strict = e5["lambda_min"] < 0 and e5["lambda_u"] < 0
    mix_neg = m["e5_min_homotopy_curv"] < 0
    tol = 1e-3 * abs(m["e6_final_lambda_max"])
    conv_ok = m["e6_final_lambda_min"] >= -tol
    v1 = "reproduced" if (saddle_strict and mix_neg and conv_ok) else (
        "partially reproduced" if (mix_neg or saddle_strict) else "not reproduced")
    claims["C1"] = (v1, f"constructed non-global critical point: lambda_min={e5['lambda_min']:.3g}, "
                        f"transport lambda_u={e5['lambda_u']:.3g}, mixture curvature min "
                        f"{m['e5_min_homotopy_curv']:.3g}; end of E6 run lambda_min="
                        f"{m['e6_final_lambda_min']:.2g} (tol {tol:.1g}). One saddle, not all.")
    esc_all = bool(np.all(np.isfinite(e5["t_escape"])))
    t_e = np.asarray(e5["t_escape"], float)
    # eps = 0 "stays" if it outlasts every kicked run (round-off ~1e-16 escapes eventually)
    stays = bool(not np.isfinite(e5["t_escape_eps0"]) or e5["t_escape_eps0"] > np.nanmax(t_e))
    kick_driven = bool(esc_all and np.ptp(t_e) > 0.2 * np.nanmean(t_e))
    generic_esc = all(np.isfinite(e5[k]) for k in
                      ("t_escape_armB", "t_escape_generic_batch", "t_escape_float32"))
    v2 = "reproduced" if (frac2 >= 0.8 and kick_driven and stays and generic_esc) else (
        "partially reproduced" if frac2 >= 0.5 else "not reproduced")
    claims["C2"] = (v2, f"{frac2:.0%} of generic E1 runs went >= 2 orders below L(mu_0); E5: "
                        f"every eps>0 run crossed L_S/2: {esc_all}, with T depending on eps: "
                        f"{kick_driven}; the exact-symmetric eps=0 run outlasts them: {stays} "
                        f"(T={_fmt(e5['t_escape_eps0'])}; float64 round-off ~1e-16 is itself a "
                        "kick); escape times (inf = stayed up to the end of the run) on a "
                        "generic batch / in float32 / with 5% generic particles: T="
                        f"{_fmt(e5['t_escape_generic_batch'])} / {_fmt(e5['t_escape_float32'])}"
                        f" / {_fmt(e5['t_escape_armB'])}.")
    ok_slope = np.isfinite(slope_ratio) and abs(slope_ratio - 1) <= 0.2
    p_fits = [e1[k][n]["power_law"]["p"] for k in e1 for n in e1[k] if n != "baselines"]
    near = np.isfinite(slope_ratio) and 0.5 <= slope_ratio <= 2.0
    r2s = [e1[k][n]["power_law"]["r2"] for k in e1 for n in e1[k] if n != "baselines"]
    away = bool(np.nanmin(r2s) >= 0.7)
    v3 = "reproduced" if (ok_slope and away) else (
        "partially reproduced" if (near or away) else "not reproduced")
    claims["C3"] = (v3, f"escape slope / (1/|lambda_min|) = {_fmt(slope_ratio)} (target within 20%)"
                        f" at an exact saddle (|grad| {e5.get('grad_norm_S', np.nan):.0e}); "
                        f"Lojasiewicz-type fits G ~ L^p: p in "
                        f"[{np.nanmin(p_fits):.2f}, {np.nanmax(p_fits):.2f}], r2 >= "
                        f"{np.nanmin(r2s):.2f} (a fit, not the paper's constants).")
    k10 = gaps.get("kappa=10", np.nan)
    kap = sorted((float(k.split("=")[1]), v) for k, v in gaps.items() if "GD" not in k)
    ordered = all(a[1] >= b[1] for a, b in zip(kap, kap[1:], strict=False))
    st_l = e3["static"]["loss_tf"]
    t_common = min(float(v["time"][-1]) for v in runs.values()) if runs else 0.0
    drop = float(st_l[0] / np.interp(t_common, e3["static"]["time"], st_l))
    m["e3_static_drop_on_window"] = drop
    v4 = ("reproduced" if (k10 < 0.1 and ordered and drop >= 2.0) else
          "partially reproduced" if np.isfinite(k10) and k10 < 1.0 else "not reproduced")
    claims["C4"] = (v4, f"joint (mu, Gamma) GD at kappa=10 stays within a factor exp({k10:.3f}) of "
                        "the static two-timescale curve; gaps shrink with kappa: "
                        f"{ordered} ({', '.join(f'{k:g}: {v:.3f}' for k, v in kap)}). Needs the "
                        "curvature-limited step (L_TF is ~100-1000x stiffer in mu than L) and a "
                        "Newton-preconditioned Gamma flow; plain GD on Gamma (kappa=10, "
                        f"trace-normalised) gap {gaps.get('kappa=10 (GD)', np.nan):.3f}, since "
                        "S_fh is nearly rank one at init and Gamma's slow directions do not track."
                        f" Window t <= {t_common:.2g}, over which static L drops only {drop:.2f}x "
                        "(the curvature-limited step is ~1e-3; full credit needs a window "
                        "covering a 2x drop).")
    e4_ok = abs(m["e4_refit_n256"] / m["e4_true_n256"] - 1) <= 0.2
    e4_better = (m["e4_refit_n256"] < m["e4_refit_init_n256"]) and joint_finite
    v5 = "reproduced" if e4_ok else ("partially reproduced" if e4_better else "not reproduced")
    claims["C5"] = (v5, f"finite-prompt SGD (Gamma = Gamma*_n(mu)): ICL risk at n=256 "
                        f"{m['e4_refit_init_n256']:.4f} at init -> {m['e4_refit_n256']:.4f} (refit"
                        f" Gamma; {m['e4_learned_n256']:.4f} with the batch-estimated Gamma) vs "
                        f"true feats {m['e4_true_n256']:.4f} and LSA {m['e4_lsa_n256']:.4f}; "
                        f"stable and decreasing, joint-Gamma arm finite: {joint_finite}; the "
                        "SGD run is far from converged at this budget, so trapping is untested.")
    c6_ok = abs(trained / true_f - 1) <= 0.2 and lsa > 5 * trained
    v6 = "reproduced" if c6_ok else ("partially reproduced" if trained < 0.5 * lsa
                                     else "not reproduced")
    claims["C6"] = (v6, f"{kind2} n=256: trained MLP+LSA {trained:.4f} vs true-features optimum "
                        f"{true_f:.4f} (target within 20%) and linear attention alone {lsa:.4f}.")
    m["claims"] = {k: v[0] for k, v in claims.items()}
    return {"rows": rows, "metrics": m, "claims": claims}
