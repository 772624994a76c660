"""Mean-field MLP + linear attention (Kim & Suzuki, ICML 2024): model, dynamics, landscape.

Modules:
    model:     particle feature map, teachers, the objectives L, L_TF, L^n and closed forms.
    dynamics:  Wasserstein-gradient-flow particle training (static / joint / prompt modes).
    landscape: Hessian-vector products, Lanczos, saddle construction and escape diagnostics.
"""

from jaxlm.meanfield import dynamics, model
from jaxlm.meanfield.dynamics import FlowConfig, FlowState, run_population, simulate
from jaxlm.meanfield.model import ModelConfig, Teacher, make_teacher

__all__ = [
    "FlowConfig",
    "FlowState",
    "ModelConfig",
    "Teacher",
    "dynamics",
    "make_teacher",
    "model",
    "run_population",
    "simulate",
]
