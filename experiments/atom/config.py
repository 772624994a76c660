"""Presets of the Atom entrypoints: ``atom_train`` (``ATOM_TRAIN``) and ``bench_offload``
(``OFFLOAD_BENCH``), each with a tiny ``*_test`` twin, and their one flag plumbing.

Both entrypoints call ``define_preset_flags`` (``--config``, ``--override``,
``--list_configs``, as ``experiments.train_lm``) and ``config_from_flags``: the preset, then
the ``--override`` list, then every per-field shorthand flag the user gave (a flag whose name
is a field of the run config, e.g. ``--steps=10`` = ``--override=steps=10``).

Importing this module does not import JAX (``bench_offload`` sets XLA_FLAGS from its config
before JAX starts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Literal

from jaxlm.utils.config import ConfigError, Registry


@dataclasses.dataclass(frozen=True)
class AtomTrainConfig:
    """One ``atom_train`` run.

    Attributes:
        model: a ``jaxlm.core.MODELS`` preset with untied embeddings.
        model_overrides: ``field=value`` overrides of that model (``--override=n_layers=4``
            or ``--override=model.n_layers=4`` land here).
        mode: swap (planned sub-models), resident (all on the device), peers (lock-step over
            jax.distributed), pipeline (GPipe stage processes), hive (hivemind peers).
        steps, batch, seq, lr: training steps, sequences per step (per peer), length, AdamW LR.
        memory_cap_mb: device memory cap for the planner (0: 1 GB).
        prefetch, opt_mode, host_memory: swap executor settings (``jaxlm.offload.swap``).
        peers, sync, period: peer count, sync mode, local-SGD / hive averaging period.
        stages, micro, link_mbps: pipeline stages, micro-batches, emulated link (0: raw).
        kill_at: hive only: SIGKILL the last peer after this many of its steps (0: none).
        target_loss: report the first step and time below this loss.
        seed: data, init and peer seed.
    """

    model: str = "gptj-tiny_test"
    model_overrides: tuple[str, ...] = ()
    mode: Literal["swap", "resident", "peers", "pipeline", "hive"] = "swap"
    steps: int = 30
    batch: int = 4
    seq: int = 32
    lr: float = 3e-3
    memory_cap_mb: float = 0.0
    prefetch: Literal["dispatch", "thread", "none"] = "dispatch"
    opt_mode: Literal["host-eager", "host-at-sync", "device-per-submodel"] = "host-eager"
    host_memory: Literal["auto", "pinned_host", "cpu"] = "auto"
    peers: int = 2
    sync: Literal["collab_epoch", "local_sgd"] = "collab_epoch"
    period: int = 4
    stages: int = 2
    micro: int = 2
    link_mbps: float = 0.0
    kill_at: int = 0
    target_loss: float = 3.0
    seed: int = 0


ATOM_TRAIN: Registry[AtomTrainConfig] = Registry("atom_train")
ATOM_TRAIN.add("tiny", AtomTrainConfig())
ATOM_TRAIN.add("tiny_test", AtomTrainConfig(steps=4, batch=2, seq=16))


def atom_train_config(name: str, overrides: Iterable[str] = ()) -> AtomTrainConfig:
    """The ``name`` preset with overrides; model fields go to ``model_overrides``.

    An override whose key is a field of ``AtomTrainConfig`` sets it; ``model.<field>=v`` or a
    bare ``ModelConfig`` field (``n_layers=4``) is a model override. Anything else, an unknown
    preset (a model name given as ``--config`` included) or a bad value raises ConfigError
    naming the input and the fix.
    """
    from jaxlm.core.config import MODELS, ModelConfig

    if name not in ATOM_TRAIN and name in MODELS:
        raise ConfigError(
            f"--config={name} is a model preset; --config selects an atom_train preset "
            f"({', '.join(ATOM_TRAIN.names())}). Use --override=model={name} for the model.")
    run_fields = {f.name for f in dataclasses.fields(AtomTrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_ov, model_ov = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("model."):
            model_ov.append(item.strip()[len("model."):])
        elif key.split(".")[0] in run_fields or "=" not in item:
            run_ov.append(item)
        elif key.split(".")[0] in model_fields:
            model_ov.append(item)
        else:
            raise ConfigError(
                f"override {item!r}: {key!r} is neither an atom_train field "
                f"({', '.join(sorted(run_fields))}) nor a model field "
                f"({', '.join(sorted(model_fields))})")
    cfg = ATOM_TRAIN.get(name, run_ov)
    cfg = dataclasses.replace(cfg, model_overrides=cfg.model_overrides + tuple(model_ov))
    validate_atom_train(cfg)
    return cfg


def validate_atom_train(cfg: AtomTrainConfig) -> None:
    """Raises ConfigError for values no mode can run (before anything compiles)."""
    from jaxlm.core.config import MODELS

    if cfg.model not in MODELS:
        raise ConfigError(f"model {cfg.model!r} is not a model preset; choose one of: "
                          f"{', '.join(MODELS.names())}")
    for field in ("steps", "batch", "seq", "peers", "period", "stages", "micro"):
        if getattr(cfg, field) < 1:
            raise ConfigError(f"{field}={getattr(cfg, field)} must be >= 1")
    for field in ("lr", "memory_cap_mb", "link_mbps", "kill_at"):
        if getattr(cfg, field) < 0:
            raise ConfigError(f"{field}={getattr(cfg, field)} must be >= 0")


@dataclasses.dataclass(frozen=True)
class OffloadBenchConfig:
    """One ``bench_offload`` run (see that module's docstring for what each part measures).

    Attributes:
        quick: small sizes (CPU ~1-2 min, GPU < 3 min); every target still evaluated.
        gpu_large: GPU sizes (d=2048 blocks, 16x2048 tokens per swap); on by itself on a GPU.
        repeats: timed repeats (median) after warm-up.
        single: only the thread/none swap modes, no sweep (the repro entry).
        sweep: eta vs compute/load over tokens per sub-model.
        cpu_compute_threads: XLA:CPU compute threads (1: --xla_cpu_multi_thread_eigen=false;
            0: XLA default); applied before JAX starts.
        cpu_pin, cpu_pin_xla: CPU core partition (copy/update threads vs compute).
        host_opt: host optimizer of the overlap runs.
        swap_overrides: extra model overrides of the swap runs (``field=value``).
        swap_batch, swap_seq: main swap point (0: the size class's default).
        swap_opt_mode: optimizer placement of the main swap runs (auto: device-per-submodel
            on a GPU, host-eager on CPU).
    """

    quick: bool = False
    gpu_large: bool = False
    repeats: int = 5
    single: bool = False
    sweep: bool = True
    cpu_compute_threads: int = 1
    cpu_pin: bool = True
    cpu_pin_xla: bool = False
    host_opt: Literal["sgd", "adam"] = "sgd"
    swap_overrides: tuple[str, ...] = ()
    swap_batch: int = 0
    swap_seq: int = 0
    swap_opt_mode: Literal["auto", "host-eager", "device-per-submodel"] = "auto"


# the *_test twins: a 2-layer d=64 swap model, 2x16 tokens, one repeat, no sweep
_TINY_SWAP = dict(repeats=1, single=True, sweep=False, swap_batch=2, swap_seq=16,
                  swap_overrides=("n_layers=2", "d_model=64", "n_kv_heads=2", "n_heads=2",
                                  "head_dim=32", "d_ff=128", "max_seq_len=64"))
OFFLOAD_BENCH: Registry[OffloadBenchConfig] = Registry("bench_offload")
for _name, _cfg in (("default", OffloadBenchConfig()),
                    ("quick", OffloadBenchConfig(quick=True)),
                    ("repro", OffloadBenchConfig(quick=True, single=True)),
                    ("gpu_large", OffloadBenchConfig(gpu_large=True))):
    OFFLOAD_BENCH.add(_name, _cfg)
    OFFLOAD_BENCH.add(f"{_name}_test", dataclasses.replace(_cfg, **_TINY_SWAP))


def offload_bench_config(name: str, overrides: Sequence[str] = ()) -> OffloadBenchConfig:
    """The ``name`` preset with overrides, validated."""
    cfg = OFFLOAD_BENCH.get(name, overrides)
    if cfg.repeats < 1:
        raise ConfigError(f"repeats={cfg.repeats} must be >= 1")
    if min(cfg.swap_batch, cfg.swap_seq, cfg.cpu_compute_threads) < 0:
        raise ConfigError("swap_batch, swap_seq and cpu_compute_threads must be >= 0")
    return cfg


# ------------------------------------------------------------------ the flag plumbing
_KINDS = {"atom_train": (AtomTrainConfig, ATOM_TRAIN, atom_train_config),
          "bench_offload": (OffloadBenchConfig, OFFLOAD_BENCH, offload_bench_config)}


def define_preset_flags(kind: str, default: str, flag_values=None) -> None:
    """Defines ``--config`` (a ``kind`` preset), ``--override`` and ``--list_configs``
    (on ``flag_values``, default the global ``absl.flags.FLAGS``)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    _, reg, _ = _KINDS[kind]
    flags.DEFINE_string("config", default, f"{kind} preset: {', '.join(reg.names())} "
                        "(see --list_configs).", flag_values=fv)
    flags.DEFINE_multi_string("override", [], f"field=value overrides of the {kind} preset.",
                              flag_values=fv)
    flags.DEFINE_bool("list_configs", False, "Print the preset names and exit.",
                      flag_values=fv)


def shorthand_overrides(kind: str, flag_values) -> list[str]:
    """``field=value`` for every flag the user gave whose name is a field of ``kind``'s run
    config (the per-field flags are shorthands for ``--override``)."""
    cls, _, _ = _KINDS[kind]
    return [f"{f.name}={flag_values[f.name].value}" for f in dataclasses.fields(cls)
            if f.name in flag_values and flag_values[f.name].present]


def config_from_flags(kind: str, flag_values=None):
    """The run config of ``kind`` from the parsed flags: ``--config`` preset, ``--override``
    items, then the shorthand flags (they win). ``--list_configs`` prints and exits.
    Raises ConfigError (one line naming the input and the fix) for bad input."""
    if flag_values is None:
        from absl import flags

        flag_values = flags.FLAGS
    if kind not in _KINDS:
        raise ConfigError(f"unknown entrypoint kind {kind!r}; use one of {', '.join(_KINDS)}")
    _, reg, build = _KINDS[kind]
    if flag_values["list_configs"].value:
        print("\n".join(reg.names()))
        raise SystemExit(0)
    overrides = list(flag_values["override"].value) + shorthand_overrides(kind, flag_values)
    return build(flag_values["config"].value, overrides)
