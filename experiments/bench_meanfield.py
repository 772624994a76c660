"""Benchmark of the mean-field particle flow: steps/s, weak scaling over devices, 1e5 particles.

    python -m experiments.bench_meanfield            # writes runs/bench/meanfield.json
    python -m experiments.bench_meanfield --quick

On CPU the bench asks for ``--cpu_devices`` fake devices before JAX starts (weak scaling:
one population per device). On a GPU the device choice is automatic; ``--gpu_scale``
multiplies N and M there.
"""

from __future__ import annotations

import os

from absl import flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Fewer repeats and steps (every target still runs).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 4, "Fake CPU devices for weak scaling.")
_GPU_SCALE = flags.DEFINE_integer("gpu_scale", 4, "N and M multiplier on an accelerator.")
_OUT = flags.DEFINE_string("out_dir", "runs/bench", "Output folder.")


def main(argv):
    del argv
    import jax

    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    import jax.numpy as jnp

    from jaxlm.meanfield import dynamics as dy
    from jaxlm.meanfield import model as mf
    from jaxlm.utils.bench import Target, matmul_peak_gflops, time_fn, write_bench

    quick = _QUICK.value
    on_cpu = jax.default_backend() == "cpu"
    scale = 1 if on_cpu else _GPU_SCALE.value
    d, k = 20, 5
    teacher = mf.make_teacher(jax.random.PRNGKey(0), d, k, "t2")
    steps = 20 if quick else 50
    repeats = 3 if quick else 5
    results: dict = {"backend": jax.default_backend(), "n_devices": len(jax.devices())}

    def timed_run(n, m, n_pop, n_dev, steps=steps):
        mcfg = mf.ModelConfig(d=d, k=k, n_particles=n, bias=True)
        fcfg = dy.FlowConfig(eta=0.05, steps=steps, log_every=steps, batch=m)
        x = jax.random.normal(jax.random.PRNGKey(1), (m, d))
        states = dy.init_population(jax.random.split(jax.random.PRNGKey(2), n_pop), mcfg, x)
        mesh = dy.population_mesh(n_dev)

        def go():
            out = dy.run_population(states, x, teacher, mcfg, fcfg, mesh=mesh)
            return jax.block_until_ready(out)

        t = time_fn(go, repeats=repeats, warmup=1)["median"]
        loss = float(go()[1]["loss"][0, -1])
        return t, loss

    # 1) steps/s at N = 1024, M = 4096 (one population, one device) vs the matmul anchor
    n, m = 1024 * scale, 4096 * scale
    t, _ = timed_run(n, m, 1, 1)
    sps = steps / t
    flops = 6 * m * n * (d + k + 1) + 8 * m * n  # fwd + bwd matmuls + elementwise
    peak = matmul_peak_gflops(n=1024 if on_cpu else 4096)
    results.update({"N": n, "M": m, "steps_per_s": sps, "gflops_achieved": flops * sps / 1e9,
                    "matmul_peak_gflops": peak})
    frac = flops * sps / 1e9 / peak
    results["fraction_of_matmul_peak"] = frac
    # 2) weak scaling: one population (N=256, M=2048) per device over 1/2/4 devices
    n_dev_max = len(jax.devices())
    weak = {}
    for nd in (1, 2, 4):
        if nd > n_dev_max:
            continue
        tw, _ = timed_run(256 * scale, 2048 * scale, nd, nd)
        weak[nd] = tw
    results["weak_scaling_seconds"] = weak
    eff = {nd: weak[1] / weak[nd] for nd in weak}
    results["weak_scaling_efficiency"] = eff
    phys = os.cpu_count() or 1
    results["physical_cores"] = phys
    # 3) 1e5 particles fit and run
    n_big = 100_000
    t_big, loss_big = timed_run(n_big, 1024 if quick else 2048, 1, 1, steps=10)
    results.update({"big_N": n_big, "big_seconds_10_steps": t_big, "big_final_loss": loss_big})
    ok_big = float(jnp.isfinite(loss_big))
    targets = [
        Target("steps/s at N=1024,M=4096 (fraction of matmul peak)", frac, 0.1, ">="),
        Target("particle steps/s at N=1024,M=4096", sps, 10.0, ">="),
        Target("weak scaling efficiency, 2 devices", eff.get(2, 0.0), 0.5, ">="),
        Target(f"weak scaling efficiency, 4 devices (ideal on {phys} cores: {min(1, phys / 4):.2f})",
               eff.get(4, 0.0), 0.5 * min(1.0, phys / 4), ">="),
        Target("1e5 particles run 10 steps (finite loss)", ok_big, 1.0, ">="),
    ]
    write_bench("meanfield", results, targets, out_dir=_OUT.value)


if __name__ == "__main__":
    cli.run(main)
