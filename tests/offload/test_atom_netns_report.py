"""experiments.atom.netns: predictions, errors and the crossover analysis of measured rows."""

import pytest

from experiments.atom import netns as an
from jaxlm.offload import netsim as ns


def _row(rate, tcp, atom_tps, pipe_tps, t_c=0.03):
    pipe = {"fwd_s": [0.004, 0.0], "bwd_s": [0.009, 0.012], "update_s": [0.002, 0.002],
            "act_bytes": 4 * 32 * 64 * 4, "micro": 4, "batch": 4, "seq": 32}
    return {"rate_mbit": rate, "tcp_mbit": tcp,
            "atom": {"tokens_per_s": atom_tps, "compute_s_per_step": t_c, "batch": 8,
                     "seq": 32, "round_s": 0.4, "window_s": 2.0, "sync_fraction": 0.5,
                     "n_rounds_per_peer": 2.0},
            "pipe_blocking": {**pipe, "comm": "blocking", "tokens_per_s": pipe_tps},
            "pipe_overlap": {**pipe, "comm": "overlap", "tokens_per_s": pipe_tps * 1.1}}


def test_predict_uses_measured_compute_and_tcp():
    n_par, peers, period = 99840, 2, 4
    row = _row(10, 9.5, 2000.0, 2400.0)
    an.predict(row, n_par, peers, period)
    b = 9.5e6 / 8
    t_ar = 2 * (peers - 1) / peers * n_par * 4 / b
    want = peers * 8 * 32 / (0.03 + t_ar / period)  # spec 4.4: no protocol term
    assert row["pred_tokens_per_s"]["atom"] == pytest.approx(want, rel=1e-9)
    assert row["atom_protocol_s"] == pytest.approx(0.4 - t_ar, rel=1e-9)
    assert row["pred_error"]["atom"] == pytest.approx(want / 2000.0 - 1, rel=1e-9)
    p = row["pipe_overlap"]
    t = ns.gpipe_schedule_time(p["fwd_s"], p["bwd_s"], p["act_bytes"], 4, b, comm="overlap",
                               update=p["update_s"])
    assert row["pred_tokens_per_s"]["pipe_overlap"] == pytest.approx(4 * 4 * 32 / t, rel=1e-9)
    # the overlapped pipeline is never predicted slower than the blocking one
    assert row["pred_tokens_per_s"]["pipe_overlap"] >= row["pred_tokens_per_s"]["pipe_blocking"]


def test_crossover_and_table():
    n_par, d, peers, period = 99840, 64, 2, 4
    rows = [_row(10, 9.5, 3000.0, 2400.0), _row(1000, 900.0, 5000.0, 20000.0)]
    for r in rows:
        an.predict(r, n_par, peers, period)
    c = an.crossover(rows, n_par, d, peers, period)
    assert c["atom_ahead_at_mbit"] == [10]  # 3000 > 2400 * 1.1, 5000 < 20000
    fast = c["rows"][1]
    # steps alone: 5000 tok/s measured with half the window in rounds -> 10000 < 22000:
    # no averaging period suffices
    assert fast["period_needed"] is None
    slow = c["rows"][0]
    # effective times over the window: 3000 tok/s * 2 s / 512 = 11.7 steps per peer in 1 s,
    # 2 rounds in 1 s; they reproduce the measured rate at the configured H = 4
    steps = 3000.0 * 2.0 / 512
    t_s, t_r = 1.0 / steps, 0.5
    assert slow["atom_step_s"] == pytest.approx(t_s) and slow["atom_round_s"] == pytest.approx(t_r)
    x = 2400.0 * 1.1
    assert slow["period_needed"] == pytest.approx(x * t_r / (2 * 256 - x * t_s), rel=1e-9)
    # at H*, N k H / (H t_s + t_r) equals the pipeline's rate
    h = slow["period_needed"]
    assert 2 * 256 * h / (h * t_s + t_r) == pytest.approx(x, rel=1e-9)
    k = 8 * 32 * period
    assert c["bandwidth_bound_ratio"] == pytest.approx(peers**2 * k * d / ((peers - 1) * n_par))
    assert c["tokens_per_round_break_even"] == pytest.approx(k / c["bandwidth_bound_ratio"])
    res = {"sizes": {"tiny": {"rows": rows}}}
    lines = an.table_lines(res)
    assert len(lines) == 2 + 2 * 3 and lines[2].startswith("| tiny | 10 | 10 | atom |")
