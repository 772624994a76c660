"""Entrypoint presets of the paper packages: *_test twins, override routing, clear errors."""

import dataclasses

import pytest

from experiments.atom import config as C
from jaxlm.utils.config import ConfigError


@pytest.mark.parametrize("registry", [C.ATOM_TRAIN, C.OFFLOAD_BENCH])
def test_every_preset_has_a_test_twin(registry):
    names = registry.names()
    plain = [n for n in names if not n.endswith("_test")]
    assert plain
    for n in plain:
        assert f"{n}_test" in names, n


def test_tacs_presets_have_test_twins_and_shrink():
    from experiments.tacs.experiment import TACS

    for n in ("full", "quick"):
        big, small = TACS.get(n), TACS.get(f"{n}_test")
        assert small.n_train < big.n_train and small.n_test_unknown < big.n_test_unknown


def test_atom_train_overrides_route_run_and_model_fields():
    cfg = C.atom_train_config("tiny", ["steps=7", "n_layers=4", "model.d_ff=96",
                                       "mode=resident", "memory_cap_mb=1.5"])
    assert (cfg.steps, cfg.mode, cfg.memory_cap_mb) == (7, "resident", 1.5)
    assert cfg.model_overrides == ("n_layers=4", "d_ff=96")
    base = C.ATOM_TRAIN.get("tiny")
    assert dataclasses.replace(cfg, steps=base.steps, mode=base.mode, memory_cap_mb=0.0,
                               model_overrides=()) == base


def test_atom_train_model_overrides_build_the_model():
    from jaxlm.core import MODELS
    from jaxlm.utils.config import apply_overrides

    cfg = C.atom_train_config("tiny_test", ["n_layers=3"])
    model = apply_overrides(MODELS.get(cfg.model), cfg.model_overrides)
    assert model.n_layers == 3 and model.n_layers != MODELS.get(cfg.model).n_layers


@pytest.mark.parametrize("name,overrides,needle", [
    ("gptj-tiny_test", [], "--override=model=gptj-tiny_test"),
    ("tiny", ["bogus=1"], "neither an atom_train field"),
    ("tiny", ["mode=walk"], "expected one of"),
    ("tiny", ["steps=0"], "steps=0 must be >= 1"),
    ("tiny", ["model=nope"], "not a model preset"),
    ("nope", [], "unknown atom_train preset"),
])
def test_atom_train_bad_input_names_the_input(name, overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        C.atom_train_config(name, overrides)


def test_offload_bench_presets_and_errors():
    q = C.offload_bench_config("quick")
    assert q.quick and not q.single and q.sweep
    t = C.offload_bench_config("quick_test", ["repeats=2"])
    assert t.quick and t.single and not t.sweep and t.repeats == 2
    assert t.swap_batch > 0 and any(o.startswith("n_layers=") for o in t.swap_overrides)
    assert C.offload_bench_config("repro").single
    with pytest.raises(ConfigError, match="repeats=0"):
        C.offload_bench_config("default", ["repeats=0"])
    with pytest.raises(ConfigError, match="swap_opt_mode"):
        C.offload_bench_config("default", ["swap_opt_mode=gpu"])


def test_offload_test_twin_swap_model_is_valid():
    from jaxlm.core import MODELS
    from jaxlm.utils.config import apply_overrides

    # bench_offload applies the CPU size class first, then the preset's swap overrides
    cpu = ["n_layers=6", "d_model=512", "n_heads=8", "n_kv_heads=8", "head_dim=64",
           "d_ff=2048", "max_seq_len=256"]
    t = C.offload_bench_config("default_test")
    m = apply_overrides(MODELS.get("gptj-tiny_test"), cpu + list(t.swap_overrides))
    assert (m.n_layers, m.d_model, m.n_heads) == (2, 64, 2)
    assert t.swap_seq <= m.max_seq_len


@pytest.mark.parametrize("kind", ["atom_train", "bench_offload"])
def test_config_from_flags_preset_then_override_then_shorthand(kind):
    """atom_train and bench_offload share one plumbing: --config, --override, then the
    per-field shorthand flags the user gave (only those: defaults don't override)."""
    from absl import flags

    fv = flags.FlagValues()
    C.define_preset_flags(kind, "tiny" if kind == "atom_train" else "default", fv)
    flags.DEFINE_integer("repeats" if kind == "bench_offload" else "steps", 99, "", flag_values=fv)
    flags.DEFINE_string("workdir", "/tmp/x", "", flag_values=fv)  # not a run field
    field = "repeats" if kind == "bench_offload" else "steps"
    preset = "tiny_test" if kind == "atom_train" else "quick_test"
    fv(["prog", f"--config={preset}", f"--override={field}=3", "--workdir=/tmp/y"])
    cfg = C.config_from_flags(kind, fv)
    assert getattr(cfg, field) == 3  # --override; the shorthand's default 99 did not win
    fv2 = flags.FlagValues()
    C.define_preset_flags(kind, "tiny" if kind == "atom_train" else "default", fv2)
    flags.DEFINE_integer(field, 99, "", flag_values=fv2)
    fv2(["prog", f"--config={preset}", f"--override={field}=3", f"--{field}=5"])
    assert getattr(C.config_from_flags(kind, fv2), field) == 5  # a given shorthand wins
    fv3 = flags.FlagValues()
    C.define_preset_flags(kind, "tiny", fv3)
    fv3(["prog", "--config=no_such"])
    with pytest.raises(ConfigError, match="unknown .* preset 'no_such'"):
        C.config_from_flags(kind, fv3)
