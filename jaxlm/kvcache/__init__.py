"""Fixed-budget KV caches with per-step eviction (Keyformer, H2O, StreamingLLM, SnapKV, TOVA).

See ``policy`` (policies as pure functions over per-row parameters), ``cache``
(state, one-pass prefill statistics, prompt-time compression) and ``generate``
(the jitted decode loop with eviction).
"""

from jaxlm.kvcache.cache import PolicyState, Prefilled, PrefillStats, compress, prefill
from jaxlm.kvcache.engine import DecodeOutput, KVGenerateOutput, decode, generate, policy_step
from jaxlm.kvcache.policy import (
    POLICIES,
    Policy,
    PolicyParams,
    choose_slot,
    increments,
    keyformer_variants,
    observe,
    pool_heads,
    priority,
    resolve_rows,
    select,
)

__all__ = [
    "POLICIES", "DecodeOutput", "KVGenerateOutput", "Policy", "PolicyParams", "PolicyState",
    "PrefillStats", "Prefilled", "choose_slot", "compress", "decode", "generate", "increments",
    "keyformer_variants", "observe", "policy_step", "pool_heads", "prefill", "priority",
    "resolve_rows", "select",
]
