"""One process of the 2-process multi-host test (run by test_multihost.py, not by pytest).

Usage: python multihost_worker.py PROCESS_ID PORT WORKDIR CACHE_DIR
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402


def main():
    # Before any JAX operation: 1 CPU device per process, gloo for cross-process collectives.
    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, workdir, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    from jaxlm.train.parallel import init_distributed

    init_distributed(f"127.0.0.1:{port}", 2, pid)
    from jaxlm.train.loop import train_and_evaluate
    from jaxlm.train.presets import get_config

    cfg = get_config("tiny_test", OVERRIDES + [f"data.cache_dir={cache}"])
    res = train_and_evaluate(cfg, workdir, quiet=True)
    print("RESULT " + json.dumps({
        "pid": pid, "processes": jax.process_count(), "devices": jax.device_count(),
        "losses": [r["loss"] for r in res.history], "eval": res.evals[-1]["loss"],
    }), flush=True)
    jax.distributed.shutdown()


OVERRIDES = ["steps=3", "log_every=1", "eval_every=0", "ckpt_every=0", "tensorboard=false"]

if __name__ == "__main__":
    main()
