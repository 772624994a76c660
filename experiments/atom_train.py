"""Atom-style training: swap-scheduled single peer, lock-step multi-peer, resident anchor.

    # one peer, sub-models planned under a device memory cap (forces several sub-models)
    python -m experiments.atom_train --config=tiny --override=n_layers=4 \
        --override=memory_cap_mb=1.5 --override=steps=30 --workdir=/tmp/atom
    python -m experiments.atom_train --override=n_layers=4 --memory_cap_mb=1.6   # flag shorthand
    # all-resident anchor (same data, same optimizer)
    python -m experiments.atom_train --config=tiny --override=mode=resident
    # N lock-step peers over jax.distributed (gloo on loopback), gradient averaging
    python -m experiments.atom_train --mode=peers --peers=2 --steps=10
    python -m experiments.atom_train --config=tiny_test --workdir=/tmp/atom_test   # smoke test
    python -m experiments.atom_train --list_configs

Presets: ``experiments.atom.config.ATOM_TRAIN`` (``tiny`` and its ``tiny_test`` twin) of
``AtomTrainConfig``; ``--override=field=value`` sets a run field (mode, steps, batch, seq, lr,
memory_cap_mb, prefetch, opt_mode, host_memory, peers, sync, period, stages, micro,
link_mbps, kill_at, target_loss, seed, model) and ``--override=n_layers=4`` (or
``model.n_layers=4``) a field of the model preset. The per-field flags below are shorthands
for the same overrides and win over ``--override`` when given.

``prefetch=thread`` uses the copy-engine threads and records per-phase telemetry (load,
compute, gradient offload, host update, stalls per sub-model; ``atom_timeline.png``).
Reports tokens/s, the plan (sub-models, predicted overlap), loss, time to target_loss, and
writes <workdir>/atom_metrics.json. ``mode=pipeline`` runs the GPipe baseline (stage
processes over loopback TCP, ``link_mbps`` emulates a slow link). The asynchronous hivemind
mode (``mode=hive``, experimental: local SGD + hivemind parameter averaging every ``period``
steps; ``kill_at=50`` SIGKILLs the last peer mid-run) needs the ``decentralized`` extra::

    python -m experiments.atom_train --mode=hive --peers=4 --kill_at=50 --steps=60 --period=10 \
        --override=n_layers=2 --batch=4 --seq=16
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import flags

from jaxlm.utils import cli

from experiments.atom.config import config_from_flags, define_preset_flags

define_preset_flags("atom_train", "tiny")  # --config, --override, --list_configs
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/atom_train", "Output folder.")
# shorthands for --override=<field>=<value> (applied after --override when given)
flags.DEFINE_enum("mode", "swap", ["swap", "resident", "peers", "pipeline", "hive"],
                  "What to run.")
flags.DEFINE_integer("kill_at", 0, "mode=hive: SIGKILL the last peer after this many of its "
                     "steps (0: no kill).")
flags.DEFINE_float("memory_cap_mb", 0.0, "Device memory cap for the planner (0: 1 GB).")
flags.DEFINE_integer("steps", 30, "Training steps.")
flags.DEFINE_integer("batch", 4, "Sequences per step (per peer).")
flags.DEFINE_integer("seq", 32, "Sequence length.")
flags.DEFINE_float("lr", 3e-3, "AdamW learning rate.")
flags.DEFINE_integer("peers", 2, "Peers (mode=peers, mode=hive).")
flags.DEFINE_enum("sync", "collab_epoch", ["collab_epoch", "local_sgd"], "Peer sync mode.")
flags.DEFINE_integer("period", 4, "local_sgd / hive averaging period.")
flags.DEFINE_integer("stages", 2, "Pipeline stages (mode=pipeline).")
flags.DEFINE_integer("micro", 2, "Pipeline micro-batches per step (mode=pipeline).")
flags.DEFINE_float("link_mbps", 0.0, "Emulated pipeline link bandwidth (0: raw loopback).")
flags.DEFINE_float("target_loss", 3.0, "Report the first step/time below this loss.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_enum("prefetch", "dispatch", ["dispatch", "thread", "none"],
                  "mode=swap: how loads overlap compute (thread: copy-engine threads, real "
                  "overlap on CPU; per-phase telemetry + timeline).")
flags.DEFINE_enum("opt_mode", "host-eager", ["host-eager", "host-at-sync", "device-per-submodel"],
                  "mode=swap: optimizer placement (device-per-submodel streams the optimizer "
                  "state with the params and updates on the device, the GPU-friendly choice).")
flags.DEFINE_enum("host_memory", "auto", ["auto", "pinned_host", "cpu"],
                  "mode=swap: host placement (auto: pinned_host on a GPU).")
def main(argv):
    del argv
    rc = config_from_flags("atom_train")
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    import optax

    from jaxlm.core import MODELS, init
    from jaxlm.offload import peers, planner, profile, stages, swap
    from jaxlm.train.data import synthetic_tokens
    from jaxlm.utils.config import apply_overrides

    cfg = apply_overrides(MODELS.get(rc.model), rc.model_overrides)
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    stages.check_model(cfg)
    b, t = rc.batch, rc.seq
    metrics: dict = {"mode": rc.mode, "config": flags.FLAGS.config, "run": dataclasses.asdict(rc)}
    if rc.mode == "hive":
        from jaxlm.offload import hive

        base = hive.HivePeerSpec(0, str(out / "rendezvous.json"), rc.model,
                                 rc.model_overrides, (cfg.n_layers // 2 + 1,), rc.steps,
                                 rc.period, b, t, rc.lr, rc.seed,
                                 group_size=rc.peers)
        kill = rc.peers - 1 if rc.kill_at > 0 else None
        res = hive.launch_hive(base, rc.peers, kill_peer=kill, kill_at=rc.kill_at,
                               workdir=str(out))
        metrics.update({"peers": rc.peers, "killed_peer": kill, "kill_at": rc.kill_at,
                        "survivors": [{k: r[k] for k in ("peer", "rounds", "group_sizes",
                                                         "sync_s")} |
                                      {"final_loss": r["losses"][-1],
                                       "mean_last5": float(np.mean(r["losses"][-5:]))}
                                      for r in res]})
        metrics["mean_final_loss"] = float(np.mean([r["losses"][-1] for r in res]))
        print(json.dumps(metrics, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    if rc.mode == "pipeline":
        from jaxlm.offload import pipeline

        n = cfg.n_layers + 2
        s_n = max(2, min(rc.stages, n))
        cuts = tuple(round(n * i / s_n) for i in range(1, s_n))
        spec = pipeline.StageSpec((), 0, cuts, rc.model, rc.model_overrides,
                                  rc.steps, rc.micro, max(b // rc.micro, 1), t,
                                  rc.lr, rc.seed, rc.link_mbps)
        res = pipeline.launch_pipeline(spec, timeout=590)
        wall = max(r["wall_s"] for r in res)
        step_s = max(r["median_step_s"] for r in res)  # steady state (after compile)
        metrics.update({"stage_cuts": cuts, "losses": res[-1]["losses"], "wall_s": wall,
                        "median_step_s": step_s,
                        "tokens_per_s": rc.micro * spec.batch * t / step_s,
                        "link_mbps": rc.link_mbps,
                        "comm_fraction": max(r["comm_s"] for r in res) / wall})
        print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    if rc.mode == "peers":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        plan_cuts = (cfg.n_layers // 2 + 1,)
        spec = peers.PeerSpec(f"127.0.0.1:{port}", rc.peers, 0, rc.model,
                              rc.model_overrides, plan_cuts, rc.steps, b, t, rc.lr,
                              rc.seed, rc.sync, rc.period)
        res = peers.launch_lockstep(spec, timeout=590)
        wall = max(r["wall_s"] for r in res)
        metrics.update({"losses": res[0]["losses"], "wall_s": wall,
                        "tokens_per_s": rc.peers * b * t * rc.steps / wall,
                        "sync_bytes_per_peer": res[0]["sync_bytes"]})
        print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    toks = synthetic_tokens(rc.steps * b * (t + 1), cfg.vocab_size, rc.seed)
    toks = toks.reshape(rc.steps, b, t + 1)
    batches = [{"inputs": x[:, :-1], "targets": x[:, 1:]} for x in toks]
    params = init(jax.random.key(rc.seed), cfg)
    tx = optax.adamw(rc.lr, weight_decay=0.1)
    if rc.mode == "swap":
        prof = profile.profile_model(cfg, b, t, tx=tx)
        cap = rc.memory_cap_mb * 2**20 if rc.memory_cap_mb > 0 else 2**30
        try:
            plan = planner.plan(prof, cap)
        except ValueError as e:  # PlanError / ProfileError: one clear message
            raise cli.UserError(str(e)) from None
        print(plan.describe())
        metrics["plan"] = {"cuts": plan.cuts, "predicted_overlap": plan.overlap,
                           "peak_mem_mb": plan.peak_mem / 2**20}
        tr = swap.SwapTrainer(cfg, params, tx, plan.cuts, prefetch=rc.prefetch,
                              host_memory=rc.host_memory, opt_mode=rc.opt_mode)
        metrics["host_memory"] = tr.hostmem.note
        metrics["opt_mode"] = rc.opt_mode
        last: dict = {}

        def step(bt):
            st = tr.step(bt)
            last["st"] = st
            return st.loss
    else:
        rs = swap.make_resident_step(cfg, tx)
        state = {"p": params, "s": tx.init(params)}

        def step(bt):
            state["p"], state["s"], loss = rs(state["p"], state["s"], bt)
            return float(loss)

    from tqdm import tqdm

    run = swap.run_steps(step, tqdm(batches, desc=rc.mode), target_loss=rc.target_loss)
    metrics.update({"losses": run["losses"], "median_step_s": run["median_step_s"],
                    "tokens_per_s": b * t / run["median_step_s"],
                    "time_to_target": run["time_to_target"], "final_loss": run["final_loss"]})
    if rc.mode == "swap" and last["st"].phases is not None:
        from experiments.atom import plots

        ph = last["st"].phases
        metrics["phases_last_step"] = {k: v for k, v in ph.items() if k != "per_submodel"}
        metrics["phases_per_submodel"] = ph["per_submodel"]
        metrics["timeline"] = plots.plot_timeline(
            last["st"].events, str(out / "atom_timeline.png"),
            f"last step, prefetch={rc.prefetch}, {tr.num_submodels} sub-models")
        tr.close()
    print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
    (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    cli.run(main)
