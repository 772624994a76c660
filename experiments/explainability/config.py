"""Presets of the explainability demonstration (``experiments.explain --config=...``).

    python -m experiments.explain --config=quick --override=n_attr=8 --override=mask=attention
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from jaxlm.utils.config import ConfigError, Registry


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """One run of ``experiments.explainability.demo.run``.

    Attributes:
        n_attr: capital prompts attributed (0: every prompt the model knows).
        min_p: keep a prompt only if its top-1 is the capital with p >= min_p.
        ig_steps: IG quadrature points (Gauss-Legendre) of the main table.
        study_ig_steps: IG points of the baseline/target study ("why 'capital'?").
        shap_samples: KernelSHAP coalition budget (>= 2^M - 2 for M free tokens: exact).
        lime_samples, lime_sigma, lime_ridge: LIME coalitions, kernel width, ridge.
        mask: how KernelSHAP/LIME switch a token off: "filler" (replace by ``filler``) or
            "attention" (delete it through the attention bias).
        filler: the filler token text (occlusion, erasure, surrogate masking).
        n_random_prompts: prompts of the model-parameter randomization check.
        random_ig_steps: IG points inside the randomization check.
        random_points: numbers of randomized stages evaluated (top-down; capped at the
            number of stages, which is always included).
        n_generate, gen_tokens: prompts and greedy tokens of the per-generated-token
            attribution.
        n_trace, trace_samples: causal-tracing prompts and noise samples.
        n_boot: bootstrap resamples of the CIs over prompts.
        seed: random-ranking control, tracing noise, surrogate sampling, re-initialization.
    """

    n_attr: int = 5
    min_p: float = 0.25
    ig_steps: int = 64
    study_ig_steps: int = 32
    shap_samples: int = 256
    lime_samples: int = 128
    lime_sigma: float = 0.25
    lime_ridge: float = 1e-2
    mask: Literal["filler", "attention"] = "filler"
    filler: str = " the"
    n_random_prompts: int = 3
    random_ig_steps: int = 16
    random_points: tuple[int, ...] = (4, 1000)
    n_generate: int = 2
    gen_tokens: int = 4
    n_trace: int = 2
    trace_samples: int = 3
    n_boot: int = 2000
    seed: int = 0


EXPLAIN: Registry[ExplainConfig] = Registry("explain")
# quick: the main table at full strength; the study at 16 IG points and the randomization
# check at its decisive point only (every block re-initialized), ~80 CPU s less than defaults
EXPLAIN.add("quick", ExplainConfig(study_ig_steps=16, random_points=(1000,)))
EXPLAIN.add("full", ExplainConfig(n_attr=0, study_ig_steps=64, lime_samples=256,
                                  n_random_prompts=5, random_points=(1, 2, 4, 8, 16, 1000), n_generate=4,
                                  gen_tokens=8, n_trace=6, trace_samples=10))
EXPLAIN.add("quick_test", ExplainConfig(n_attr=2, ig_steps=8, study_ig_steps=8, shap_samples=16,
                                        lime_samples=16, n_random_prompts=1, random_ig_steps=4,
                                        random_points=(1000,), n_generate=1, gen_tokens=2,
                                        n_trace=1, trace_samples=1, n_boot=100))


def explain_config(name: str, overrides: Iterable[str] = ()) -> ExplainConfig:
    """The ``name`` preset with ``field=value`` overrides, validated (ConfigError naming the
    field and the fix)."""
    cfg = EXPLAIN.get(name, overrides)
    for f in ("ig_steps", "study_ig_steps", "shap_samples", "lime_samples", "n_random_prompts",
              "random_ig_steps", "n_generate", "gen_tokens", "n_trace", "trace_samples",
              "n_boot"):
        if getattr(cfg, f) < 1:
            raise ConfigError(f"{f}={getattr(cfg, f)} must be >= 1 (--override={f}=N)")
    if cfg.n_attr < 0:
        raise ConfigError(f"n_attr={cfg.n_attr} must be >= 0 (0 = every known prompt)")
    if not 0.0 <= cfg.min_p < 1.0:
        raise ConfigError(f"min_p={cfg.min_p} must be in [0, 1)")
    if cfg.lime_sigma <= 0 or cfg.lime_ridge < 0:
        raise ConfigError(f"lime_sigma must be > 0 and lime_ridge >= 0, got {cfg.lime_sigma}, "
                          f"{cfg.lime_ridge}")
    if cfg.mask not in ("filler", "attention"):
        raise ConfigError(f"mask={cfg.mask!r} must be 'filler' or 'attention'")
    if not cfg.random_points or min(cfg.random_points) < 1:
        raise ConfigError(f"random_points={cfg.random_points} must be stage counts >= 1")
    return cfg
