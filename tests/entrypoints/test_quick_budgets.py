"""Quick presets of the entries sized for the 3-minute budget (issue 21.10): what the cut
keeps, and the --config/--override routing of the tacs and keyformer_eval entrypoints."""

import dataclasses

import pytest

from jaxlm.utils.config import ConfigError


def test_keyformer_quick_keeps_the_judged_budget_in_one_batch_per_pass():
    from experiments import repro_keyformer as R
    from experiments.keyformer import evaluate as E

    full = E.EVALS.get("keyformer_quick")
    cfg = E.EVALS.get("keyformer_quick", R.QUICK_OVERRIDES)
    assert cfg.budgets == (0.5,) and 0.5 in full.budgets  # the verdict's budget stays
    assert cfg.policies == full.policies and cfg.seeds == full.seeds
    specs = E._row_specs(cfg)
    assert len(specs) == len(full.policies) * len(full.seeds)
    assert dataclasses.replace(cfg, budgets=full.budgets) == full


def test_mamba_nd_quick_pde_uses_16_tokens_full_keeps_64():
    from experiments.mamba_nd import experiment as E

    q, f = E.PRESETS.get("quick"), E.PRESETS.get("full")
    assert (q.pde_grid // q.pde_patch) ** 2 == 16 and (f.pde_grid // f.pde_patch) ** 2 == 64
    E.validate(q)


@pytest.mark.parametrize("module,registry,preset", [
    ("experiments.tacs.experiment", "TACS", "quick"),
    ("experiments.keyformer.evaluate", "EVALS", "keyformer_quick"),
])
def test_entrypoint_presets_take_overrides_and_name_bad_fields(module, registry, preset):
    import importlib

    reg = getattr(importlib.import_module(module), registry)
    base = reg.get(preset)
    field = "n_train" if registry == "TACS" else "new_tokens"
    cfg = reg.get(preset, [f"{field}={getattr(base, field) + 3}"])
    assert getattr(cfg, field) == getattr(base, field) + 3
    with pytest.raises(ConfigError, match="no_such_field"):
        reg.get(preset, ["no_such_field=1"])
