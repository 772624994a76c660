"""Atom-style training: swap-scheduled single peer, lock-step multi-peer, resident anchor.

    # one peer, sub-models planned under a device memory cap (forces several sub-models)
    python -m experiments.atom_train --config=gptj-tiny_test --override=n_layers=4 \
        --memory_cap_mb=1.5 --steps=30 --workdir=/tmp/atom
    # all-resident anchor (same data, same optimizer)
    python -m experiments.atom_train --mode=resident --config=gptj-tiny_test --steps=30
    # N lock-step peers over jax.distributed (gloo on loopback), gradient averaging
    python -m experiments.atom_train --mode=peers --peers=2 --config=gptj-tiny_test --steps=10

``--prefetch=thread`` uses the copy-engine threads and records per-phase telemetry (load,
compute, gradient offload, host update, stalls per sub-model; ``atom_timeline.png``).
Reports tokens/s, the plan (sub-models, predicted overlap), loss, time to --target_loss, and
writes <workdir>/atom_metrics.json. ``--mode=pipeline`` runs the GPipe baseline (stage
processes over loopback TCP, ``--link_mbps`` emulates a slow link). The asynchronous hivemind
mode (``--mode=hive``, experimental: local SGD + hivemind parameter averaging every --period
steps; ``--kill_at=50`` SIGKILLs the last peer mid-run) needs the ``decentralized`` extra::

    python -m experiments.atom_train --mode=hive --peers=4 --kill_at=50 --steps=60 --period=10 \
        --override=n_layers=2 --batch=4 --seq=16
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "gptj-tiny_test", "Model preset (untied embeddings).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "field=value model overrides.")
_MODE = flags.DEFINE_enum("mode", "swap", ["swap", "resident", "peers", "pipeline", "hive"],
                          "What to run.")
_KILL_AT = flags.DEFINE_integer("kill_at", 0, "--mode=hive: SIGKILL the last peer after this "
                                "many of its steps (0: no kill).")
_CAP = flags.DEFINE_float("memory_cap_mb", 0.0, "Device memory cap for the planner (0: no cap, "
                          "one sub-model per layer group chosen by the planner at 1 GB).")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps.")
_BATCH = flags.DEFINE_integer("batch", 4, "Sequences per step (per peer).")
_SEQ = flags.DEFINE_integer("seq", 32, "Sequence length.")
_LR = flags.DEFINE_float("lr", 3e-3, "AdamW learning rate.")
_PEERS = flags.DEFINE_integer("peers", 2, "Lock-step peers (--mode=peers).")
_SYNC = flags.DEFINE_enum("sync", "collab_epoch", ["collab_epoch", "local_sgd"], "Peer sync mode.")
_PERIOD = flags.DEFINE_integer("period", 4, "local_sgd averaging period.")
_STAGES = flags.DEFINE_integer("stages", 2, "Pipeline stages (--mode=pipeline).")
_MICRO = flags.DEFINE_integer("micro", 2, "Pipeline micro-batches per step (--mode=pipeline).")
_LINK = flags.DEFINE_float("link_mbps", 0.0, "Emulated link bandwidth for the pipeline (0: raw "
                           "loopback).")
_TARGET = flags.DEFINE_float("target_loss", 3.0, "Report the first step/time below this loss.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/atom_train", "Output folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_PREFETCH = flags.DEFINE_enum("prefetch", "dispatch", ["dispatch", "thread", "none"],
                              "--mode=swap: how loads overlap compute (thread: copy-engine "
                              "threads, real overlap on CPU; per-phase telemetry + timeline).")
_OPT_MODE = flags.DEFINE_enum("opt_mode", "host-eager",
                              ["host-eager", "host-at-sync", "device-per-submodel"],
                              "--mode=swap: optimizer placement (spec 1.4; device-per-submodel "
                              "streams the optimizer state with the params and updates on the "
                              "device, the GPU-friendly choice).")
_HOST_MEM = flags.DEFINE_enum("host_memory", "auto", ["auto", "pinned_host", "cpu"],
                              "--mode=swap: host placement (auto: pinned_host on a GPU).")


def main(argv):
    del argv
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    import optax

    from jaxlm.core import MODELS, init
    from jaxlm.offload import peers, planner, profile, stages, swap
    from jaxlm.train.data import synthetic_tokens
    from jaxlm.utils.config import apply_overrides

    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    cfg = apply_overrides(MODELS.get(_CONFIG.value), _OVERRIDE.value)
    stages.check_model(cfg)
    b, t = _BATCH.value, _SEQ.value
    metrics: dict = {"mode": _MODE.value, "config": _CONFIG.value, "overrides": _OVERRIDE.value}
    if _MODE.value == "hive":
        from jaxlm.offload import hive

        base = hive.HivePeerSpec(0, str(out / "rendezvous.json"), _CONFIG.value,
                                 tuple(_OVERRIDE.value), (cfg.n_layers // 2 + 1,), _STEPS.value,
                                 _PERIOD.value, b, t, _LR.value, _SEED.value,
                                 group_size=_PEERS.value)
        kill = _PEERS.value - 1 if _KILL_AT.value > 0 else None
        res = hive.launch_hive(base, _PEERS.value, kill_peer=kill, kill_at=_KILL_AT.value,
                               workdir=str(out))
        metrics.update({"peers": _PEERS.value, "killed_peer": kill, "kill_at": _KILL_AT.value,
                        "survivors": [{k: r[k] for k in ("peer", "rounds", "group_sizes",
                                                         "sync_s")} |
                                      {"final_loss": r["losses"][-1],
                                       "mean_last5": float(np.mean(r["losses"][-5:]))}
                                      for r in res]})
        metrics["mean_final_loss"] = float(np.mean([r["losses"][-1] for r in res]))
        print(json.dumps(metrics, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    if _MODE.value == "pipeline":
        from jaxlm.offload import pipeline

        n = cfg.n_layers + 2
        s_n = max(2, min(_STAGES.value, n))
        cuts = tuple(round(n * i / s_n) for i in range(1, s_n))
        spec = pipeline.StageSpec((), 0, cuts, _CONFIG.value, tuple(_OVERRIDE.value),
                                  _STEPS.value, _MICRO.value, max(b // _MICRO.value, 1), t,
                                  _LR.value, _SEED.value, _LINK.value)
        res = pipeline.launch_pipeline(spec, timeout=590)
        wall = max(r["wall_s"] for r in res)
        step_s = max(r["median_step_s"] for r in res)  # steady state (after compile)
        metrics.update({"stage_cuts": cuts, "losses": res[-1]["losses"], "wall_s": wall,
                        "median_step_s": step_s,
                        "tokens_per_s": _MICRO.value * spec.batch * t / step_s,
                        "link_mbps": _LINK.value,
                        "comm_fraction": max(r["comm_s"] for r in res) / wall})
        print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    if _MODE.value == "peers":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        plan_cuts = (cfg.n_layers // 2 + 1,)
        spec = peers.PeerSpec(f"127.0.0.1:{port}", _PEERS.value, 0, _CONFIG.value,
                              tuple(_OVERRIDE.value), plan_cuts, _STEPS.value, b, t, _LR.value,
                              _SEED.value, _SYNC.value, _PERIOD.value)
        res = peers.launch_lockstep(spec, timeout=590)
        wall = max(r["wall_s"] for r in res)
        metrics.update({"losses": res[0]["losses"], "wall_s": wall,
                        "tokens_per_s": _PEERS.value * b * t * _STEPS.value / wall,
                        "sync_bytes_per_peer": res[0]["sync_bytes"]})
        print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
        (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))
        return
    toks = synthetic_tokens(_STEPS.value * b * (t + 1), cfg.vocab_size, _SEED.value)
    toks = toks.reshape(_STEPS.value, b, t + 1)
    batches = [{"inputs": x[:, :-1], "targets": x[:, 1:]} for x in toks]
    params = init(jax.random.key(_SEED.value), cfg)
    tx = optax.adamw(_LR.value, weight_decay=0.1)
    if _MODE.value == "swap":
        prof = profile.profile_model(cfg, b, t, tx=tx)
        cap = _CAP.value * 2**20 if _CAP.value > 0 else 2**30
        try:
            plan = planner.plan(prof, cap)
        except ValueError as e:  # PlanError / ProfileError: one clear message
            raise app.UsageError(str(e)) from None
        print(plan.describe())
        metrics["plan"] = {"cuts": plan.cuts, "predicted_overlap": plan.overlap,
                           "peak_mem_mb": plan.peak_mem / 2**20}
        tr = swap.SwapTrainer(cfg, params, tx, plan.cuts, prefetch=_PREFETCH.value,
                              host_memory=_HOST_MEM.value, opt_mode=_OPT_MODE.value)
        metrics["host_memory"] = tr.hostmem.note
        metrics["opt_mode"] = _OPT_MODE.value
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

    losses, times, hit = [], [], None
    t0 = time.perf_counter()
    for i, bt in enumerate(tqdm(batches, desc=_MODE.value)):
        ts = time.perf_counter()
        losses.append(step(bt))
        times.append(time.perf_counter() - ts)
        if hit is None and losses[-1] < _TARGET.value:
            hit = {"step": i, "seconds": time.perf_counter() - t0}
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    metrics.update({"losses": losses, "median_step_s": steady,
                    "tokens_per_s": b * t / steady, "time_to_target": hit,
                    "final_loss": losses[-1]})
    if _MODE.value == "swap" and last["st"].phases is not None:
        from experiments.atom import plots

        ph = last["st"].phases
        metrics["phases_last_step"] = {k: v for k, v in ph.items() if k != "per_submodel"}
        metrics["phases_per_submodel"] = ph["per_submodel"]
        metrics["timeline"] = plots.plot_timeline(
            last["st"].events, str(out / "atom_timeline.png"),
            f"last step, prefetch={_PREFETCH.value}, {tr.num_submodels} sub-models")
        tr.close()
    print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=1))
    (out / "atom_metrics.json").write_text(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    app.run(main)
