"""Atom-style data-parallel peers vs a GPipe pipeline over really shaped links, with the cost
model's prediction for every measured point.

Each peer / stage process runs in its own network namespace; the namespaces are joined by
veth pairs through a bridge, every link shaped with ``tc tbf`` to --rates_mbit (both
directions; --delay_ms adds netem delay where the kernel has sch_netem). For each model size
(--sizes) and rate it measures

* raw TCP throughput between two namespaces (a bulk transfer),
* ``atom``: --peers hivemind local-SGD peers (``jaxlm.offload.hive``, each an Atom-style swap
  trainer, parameters averaged every --period steps),
* ``pipe_blocking``: a --peers-stage GPipe pipeline (``jaxlm.offload.pipeline``, --micro
  micro-batches) whose stages wait until each message is read (no comm/compute overlap),
* ``pipe_overlap``: the same pipeline with a sender thread (comm overlaps compute),

and predicts each from the cost model (``jaxlm.offload.netsim``) fed with that point's own
measured compute times and measured TCP throughput (no fitted constants):

* Atom: ``N b s / (t_c + T_allreduce / H)``, ``T_allreduce = 2 (N-1)/N P 4 / B_tcp`` (the
  spec's section 4.4), ``t_c`` the median step interval of the peers; hivemind's per-round
  protocol cost (matchmaking, framing) is not in the model and shows up as the error (the
  JSON keeps the measured round time next to the model's all-reduce time);
* pipeline: ``netsim.gpipe_schedule_time``, the GPipe schedule replayed from the stages'
  measured per-call forward / backward (+ gradient accumulation) / update times and ``B_tcp``
  (per-message software costs, framing and host<->device conversions, are not in the model).

Prediction error = predicted / measured - 1. The runs of one point alternate their order
from rate to rate (atom first, then the pipelines first), so that load from other jobs on the
shared machine hits both engines alike. A crossover analysis follows per size: the measured
Atom / pipeline ratios, the averaging period H* the cost model says Atom would need to match
the better pipeline at each rate (inf when the peers' compute alone is slower), and the
slow-link limit ratio ``N^2 k d / ((N-1) P)`` (square-cube law). H* comes from the point's
measured step compute and measured round time.

Needs root, iproute2 and tc (a clear error otherwise). Namespaces are always removed (also
leftovers of crashed runs, by name prefix ``jxn``)::

    python -m experiments.atom_netns --workdir=runs/atom_netns          # 2 sizes x 5 rates
    python -m experiments.atom_netns --rates_mbit=10,1000 --sizes=tiny --quick
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from experiments.atom.netns import SIZES, measure, plot, table_lines
from jaxlm.utils import cli

_RATES = flags.DEFINE_list("rates_mbit", ["10", "30", "100", "300", "1000"],
                           "Link rates (Mbit/s, tc tbf, each direction).")
_SIZES = flags.DEFINE_list("sizes", ["tiny", "wide"], f"Model sizes: {', '.join(SIZES)}.")
_DELAY = flags.DEFINE_float("delay_ms", 0.0, "One-way netem delay per egress (0: none).")
_PEERS = flags.DEFINE_integer("peers", 2, "Processes (Atom peers = pipeline stages), 2-4.")
_PERIOD = flags.DEFINE_integer("period", 4, "Atom: local steps between averaging rounds.")
_MICRO = flags.DEFINE_integer("micro", 4, "Pipeline micro-batches per step.")
_QUICK = flags.DEFINE_bool("quick", False, "Fewer steps per point.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/atom_netns", "Output folder.")


def main(argv):
    del argv
    from jaxlm.offload import netns

    try:
        netns.check_support()
    except netns.NetnsUnavailable as e:
        raise app.UsageError(f"atom_netns cannot run here: {e}") from None
    if not 2 <= _PEERS.value <= 4:
        raise app.UsageError(f"--peers must be 2..4, got {_PEERS.value}")
    try:
        rates = [float(r) for r in _RATES.value]
    except ValueError:
        raise app.UsageError(f"--rates_mbit must be numbers, got {_RATES.value}") from None
    if not rates or any(r <= 0 for r in rates):
        raise app.UsageError("--rates_mbit must be one or more numbers > 0")
    bad = [s for s in _SIZES.value if s not in SIZES]
    if bad or not _SIZES.value:
        raise app.UsageError(f"--sizes: unknown {bad}; choose from {', '.join(SIZES)}")
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    res = measure(rates, list(_SIZES.value), peers=_PEERS.value, period=_PERIOD.value,
                  micro=_MICRO.value, quick=_QUICK.value, delay_ms=_DELAY.value, workdir=out)
    (out / "atom_netns.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "atom_netns.png")
    print("\n".join(table_lines(res)))
    for size, s in res["sizes"].items():
        c = s["crossover"]
        print(f"{size}: Atom ahead of both pipelines at {c['atom_ahead_at_mbit'] or 'no rate'}; "
              f"period needed per rate: "
              + ", ".join(f"{o['rate_mbit']:g}: " + (f"{o['period_needed']:.1f}" if o['period_needed'] is not None else "never") for o in c["rows"])
              + f"; slow-link limit ratio {c['bandwidth_bound_ratio']:.2f}")
    print(f"wall {res['wall_s']:.0f} s, load {res['loadavg_start']} -> {res['loadavg_end']}")


if __name__ == "__main__":
    cli.run(main)
