"""Training throughput and MFU of the 20M preset at 1, 2, 4 devices; 125M checkpoint timing.

    python -m experiments.bench_train --quick      # writes runs/bench/train.json

Each device count runs in its own subprocess (the fake CPU device count must be
set before JAX starts); each measures its own matmul peak right before timing,
so MFU = tokens/s x FLOPs/token / peak compares numbers from the same process.
On a GPU the device count is what the machine has; ``--gpu_batch`` sets the
(larger) batch used there.

Targets (issue): 20M model, sequence 256, fp32: MFU >= 40% of the measured matmul
peak (aim 60%); checkpoint save + restore of the 125M train state <= 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Fewer timed steps (every target still evaluated).")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Fake CPU device counts to sweep.")
_BATCH = flags.DEFINE_integer("batch", 4, "Sequences per step on CPU (x256 tokens).")
_GPU_BATCH = flags.DEFINE_integer("gpu_batch", 64, "Sequences per step on GPU/TPU.")
_CONFIG = flags.DEFINE_string("config", "20m", "Training preset to time.")
_WORKER = flags.DEFINE_integer("worker", 0, "Internal: run one device count and print JSON.")
_SKIP_CKPT = flags.DEFINE_bool("skip_ckpt", False, "Skip the 125M checkpoint timing.")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Where train.json goes.")


def _throughput(n_devices: int, quick: bool) -> dict:
    """Runs inside a worker process whose device count is already set."""
    import jax
    import numpy as np

    from jaxlm.core import init
    from jaxlm.train import parallel
    from jaxlm.train.metrics import flops_per_token
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.presets import get_config
    from jaxlm.train.state import init_state
    from jaxlm.train.step import lm_loss_fn, make_train_step
    from jaxlm.utils.bench import matmul_peak_gflops, time_fn

    on_cpu = jax.default_backend() == "cpu"
    batch = _BATCH.value if on_cpu else _GPU_BATCH.value
    cfg = get_config(_CONFIG.value, [f"data.batch_size={batch}"])
    mcfg, seq = cfg.model, cfg.data.seq_len
    mesh = parallel.make_mesh(-1, 1)
    parallel.check_batch(batch, mesh)
    tx, lr_fn = make_optimizer(cfg.optim, 1000)
    init_fn = lambda k: init(k, mcfg)  # noqa: E731
    abstract = jax.eval_shape(lambda k: init_state(k, init_fn, tx), jax.random.key(0))
    sh = parallel.state_shardings(abstract, mesh, fsdp=False)
    state = jax.jit(lambda k: init_state(k, init_fn, tx), out_shardings=sh)(jax.random.key(0))
    step = parallel.gspmd_step(make_train_step(lm_loss_fn(mcfg), tx, lr_fn=lr_fn), mesh, sh)
    toks = np.random.default_rng(0).integers(0, mcfg.vocab_size, (batch, seq + 1), np.int32)
    b = parallel.global_batch({"inputs": toks[:, :-1], "targets": toks[:, 1:]}, mesh)
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, b, rng)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def one():
        box["state"], mm = step(box["state"], b, rng)
        jax.block_until_ready(mm)

    peak = matmul_peak_gflops()
    if not on_cpu:
        peak *= jax.device_count()
    t = time_fn(one, repeats=2 if quick else 5, warmup=1)
    tps = batch * seq / t["median"]
    fpt = flops_per_token(mcfg, seq)
    return {
        "devices": n_devices, "backend": jax.default_backend(), "batch": batch, "seq_len": seq,
        "params": mcfg.num_params(), "flops_per_token": fpt, "peak_gflops": peak,
        "step_s": t["median"], "tokens_per_s": tps, "achieved_gflops": tps * fpt / 1e9,
        "mfu": tps * fpt / (peak * 1e9), "compile_s": compile_s,
    }


def _ckpt_125m() -> dict:
    """Save + restore time of the 125M (Llama) train state, AdamW moments included."""
    import jax

    from jaxlm.core import init
    from jaxlm.train.checkpoint import Checkpointer
    from jaxlm.train.optim import make_optimizer
    from jaxlm.train.presets import get_config
    from jaxlm.train.state import init_state, num_params

    cfg = get_config("125m")
    tx, _ = make_optimizer(cfg.optim, 100)
    init_fn = lambda k: init(k, cfg.model)  # noqa: E731
    state = jax.jit(lambda k: init_state(k, init_fn, tx))(jax.random.key(0))
    jax.block_until_ready(state)
    abstract = jax.eval_shape(lambda s: s, state)
    abstract = jax.tree.map(
        lambda a, x: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=x.sharding), abstract, state)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        t0 = time.perf_counter()
        with Checkpointer(d, keep=1) as ck:
            ck.save(1, state, {"step": 1}, force=True)
            ck.wait()
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        with Checkpointer(d, read_only=True) as ck:
            restored, _ = ck.restore(abstract)
            jax.block_until_ready(restored)
        t_restore = time.perf_counter() - t0
    return {"params": num_params(state.params), "state_bytes": nbytes, "save_s": t_save,
            "restore_s": t_restore, "save_restore_s": t_save + t_restore}


def main(argv):
    del argv
    if _WORKER.value:
        import jax

        if not os.environ.get("JAX_PLATFORMS") or os.environ["JAX_PLATFORMS"] == "cpu":
            jax.config.update("jax_num_cpu_devices", _WORKER.value)
        print("RESULT " + json.dumps(_throughput(_WORKER.value, _QUICK.value)), flush=True)
        return 0

    import jax

    from jaxlm.utils.bench import Target, write_bench

    results: dict = {"config": _CONFIG.value, "throughput": []}
    counts = [int(c) for c in _DEVICES.value]
    if jax.default_backend() != "cpu":
        counts = [jax.device_count()]
    for n in counts:
        cmd = [sys.executable, "-m", "experiments.bench_train", f"--worker={n}",
               f"--batch={_BATCH.value}", f"--gpu_batch={_GPU_BATCH.value}",
               f"--config={_CONFIG.value}", f"--quick={_QUICK.value}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"worker with {n} devices failed:\n{out.stderr[-3000:]}")
        r = json.loads(line[-1][7:])
        print(f"{n} device(s): {r['tokens_per_s']:.0f} tok/s, {r['achieved_gflops']:.1f} GFLOP/s "
              f"of peak {r['peak_gflops']:.1f} -> MFU {100 * r['mfu']:.1f}%")
        results["throughput"].append(r)
    targets = [Target(f"MFU {_CONFIG.value} seq256 fp32, 1 process, {counts[0]} device(s)",
                      results["throughput"][0]["mfu"], 0.40, ">=")]
    if not _SKIP_CKPT.value:
        ck = _ckpt_125m()
        results["checkpoint_125m"] = ck
        print(f"125M state ({ck['state_bytes'] / 2**30:.2f} GiB): save {ck['save_s']:.2f} s, "
              f"restore {ck['restore_s']:.2f} s")
        targets.append(Target("125M state checkpoint save+restore (s)", ck["save_restore_s"],
                              10.0, "<="))
    write_bench("train", results, targets, out_dir=_OUT.value)
    return 0


if __name__ == "__main__":
    cli.run(main)
