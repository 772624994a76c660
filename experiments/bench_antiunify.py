"""Linear-time benchmark of higher-order pattern anti-unification (BKLV).

    python -m experiments.bench_antiunify --quick     # 1e2..1e5, naive Mer up to 1e4
    python -m experiments.bench_antiunify             # 1e2..1e5, naive Mer up to 3e4

Times pattern_lgg with hash-bucketed Mer and with the naive pairwise Mer on random
pairs with many shared differences (experiments.antiunify.bench.random_pair), fits the
log-log slopes, times parse + AU of a 1e5-node-per-term pair, and writes
runs/bench/antiunify.json plus the slope plot. Pure Python: the device does not matter
(runs unchanged on a GPU machine; nothing is placed on the accelerator).
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from jaxlm.utils import cli

_QUICK = flags.DEFINE_bool("quick", False, "Preset 'quick' (evaluates every target).")
_CONFIG = flags.DEFINE_string("config", None, "Preset: full, quick, full_test, quick_test.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Preset overrides field=value.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the random pairs.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/bench", "Folder for antiunify.json and the plot.")


def main(argv):
    del argv
    from experiments.antiunify.bench import (
        BENCH_PRESETS,
        bench_targets,
        geometric_sizes,
        run_benchmark,
        slope_plot,
    )
    from jaxlm.utils.bench import write_bench
    from jaxlm.utils.config import ConfigError

    name = _CONFIG.value or ("quick" if _QUICK.value else "full")
    try:
        cfg = BENCH_PRESETS.get(name, _OVERRIDE.value)
    except ConfigError as e:
        raise app.UsageError(str(e)) from None
    sizes = geometric_sizes(cfg.lo, cfg.hi, cfg.per_decade)
    print(f"preset {name}: sizes {sizes}, naive Mer up to {cfg.naive_max}")
    from tqdm.auto import tqdm

    res = run_benchmark(sizes, cfg.naive_max, repeats=cfg.repeats, seed=_SEED.value,
                        parse_size=cfg.parse_size or None,
                        progress=lambda total, desc: tqdm(total=total, desc=desc))
    for row in res["rows"]:
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
    out = pathlib.Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    res["plot"] = slope_plot(res, str(out / "antiunify_slope.png"))
    res["preset"] = name
    write_bench("antiunify", res, bench_targets(res), out_dir=out)
    return 0


if __name__ == "__main__":
    cli.run(main)
