"""The explain entry's verdict logic and presets (no model: synthetic results)."""

import pytest

from experiments import repro_explain as R
from experiments.explainability.config import explain_config
from jaxlm.utils.config import ConfigError
from jaxlm.utils.report import Verdict, judge

METHODS = ("saliency", "grad_x_input", "integrated_gradients", "occlusion", "kernel_shap", "lime",
           "rollout", "random")
VARIANTS = ("embedding norm ||e_i||", "saliency ||grad||, log p", "grad x input, log p",
            "grad x input, contrast", "IG zero baseline, log p", "IG filler baseline, log p",
            "IG zero baseline, contrast", "occlusion, log p", "occlusion, contrast")


def _res(beat_lo=0.05, rho_hi=0.3, mass_lo=0.4):
    table = [{"method": m, "_aopc_vs_random_ci": (0.0, 0.0, 0.0) if m == "random"
              else (0.1, beat_lo, 0.2)} for m in METHODS + ("reverse_ig",)]
    return {
        "table": table, "n_attr": 5, "ig_steps": 64, "completeness": {64: (1e-3, 4e-3)},
        "randomization_last_ci": {m: (0.1, -0.2, rho_hi) for m in ("grad_x_input", "occlusion")},
        "randomization": [{"randomized": "top 30 (down to block 0)"}],
        "n_randomization_prompts": 3,
        "plausibility": [{"method": m, "_ci": (0.5, mass_lo, 0.6)} for m in METHODS],
        "chance_mass": 0.25,
        "traces": [{"country": "France", "max_ie_subject": 0.5, "p_clean": 0.6,
                    "p_corrupt": 0.1, "best_layer_last_subject_token": 3}],
        "capital_study": [{"variant": v, "_country": 0.3, "_capital": 0.4} for v in VARIANTS],
        "config": {"study_ig_steps": 32},
    }


def test_verdict_follows_the_measurements():
    assert judge(R.claims_from(_res())).verdict is Verdict.REPRODUCED
    # a failed sanity check (upper CI bound above the threshold) is a refuted headline part
    assert judge(R.claims_from(_res(rho_hi=0.7))).verdict is Verdict.PARTIAL
    # faithfulness CI touching 0 and the sanity check failing: not reproduced
    assert judge(R.claims_from(_res(beat_lo=-0.01, rho_hi=0.7))).verdict is \
        Verdict.NOT_REPRODUCED
    # plausibility is reported but never counted
    assert judge(R.claims_from(_res(mass_lo=0.0))).verdict is Verdict.REPRODUCED
    c = R.claims_from(_res(mass_lo=0.0))[2]
    assert not c.own_paper and c.holds is False


def test_study_note_states_only_what_the_numbers_show():
    res = _res()
    note = R.study_note(res)
    assert "0.30 / 0.40" in note and "about unchanged" in note and "moves" not in note
    st = {r["variant"]: r for r in res["capital_study"]}
    st["IG zero baseline, log p"]["_country"] = 0.6
    st["grad x input, contrast"]["_country"] = 0.5
    st["saliency ||grad||, log p"]["_capital"] = 0.7
    st["embedding norm ||e_i||"]["_capital"] = 0.32
    note = R.study_note(res)
    assert "not the embedding norm" in note and "(IG) moves mass" in note
    assert "moves grad x input's mass to the country" in note
    assert "moves IG's mass away from the country" in note


def test_presets_and_overrides():
    rc = explain_config("quick", ["n_attr=7", "mask=attention", "random_points=1,30"])
    assert rc.n_attr == 7 and rc.mask == "attention" and rc.random_points == (1, 30)
    assert explain_config("full").n_attr == 0
    with pytest.raises(ConfigError, match="ig_steps=0 must be >= 1"):
        explain_config("quick", ["ig_steps=0"])
    with pytest.raises(ConfigError, match="unknown explain preset"):
        explain_config("nope")
