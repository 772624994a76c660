"""The Mamba-1 block (selective SSM mixer), a Mamba language model, and decoding.

Shapes follow shared/specs/mamba_nd.md Sec. 1 (channels-last):

    u [B, L, D] -> in_proj -> x, z [B, L, Di]
    x -> causal depthwise conv (width K) -> SiLU -> x_proj -> dt_low [R], B [N], C [N]
    dt = softplus(dt_low @ W_dt + b_dt)            [B, L, Di]
    y = selective_scan(x, dt, -exp(A_log), B, C, Dskip)
    out = (y * SiLU(z)) @ out_proj                  [B, L, D]

Initialisation as in the reference (Sec. 1.3): PyTorch-default linear/conv
init, dt bias = inverse softplus of log-uniform [dt_min, dt_max] (floored),
A_log = log(1..N), Dskip = 1, all fp32.

The conv+SSM part (``branch``) is separate from the projections so the ND
in-layer variants (Bi-SSM, ND-SSM, split-head) in ``mamba_nd`` can reuse it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxlm.ssm.layers import (
    layernorm,
    layernorm_init,
    rmsnorm,
    rmsnorm_init,
    silu,
    torch_linear_init,
)
from jaxlm.ssm.scan import selective_scan, selective_scan_step
from jaxlm.utils.config import Registry


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """Mamba mixer hyper-parameters.

    Attributes:
        d_model: model width D.
        d_state: SSM state size N.
        expand: Di = expand * D.
        d_conv: depthwise conv width K.
        dt_rank: R; 0 means "auto" = ceil(D / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: dt initialisation.
        scan_mode: "sequential" | "associative" | "chunked".
        chunk: chunk length for the chunked scan.
        scan_inner: scan inside a chunk ("associative" | "sequential": the fused chunk loop).
        unroll: lax.scan unroll of the sequential loops (1 compiles fastest).
    """

    d_model: int = 64
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    scan_mode: str = "sequential"
    chunk: int = 64
    scan_inner: str = "associative"
    unroll: int = 1

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank > 0 else math.ceil(self.d_model / 16)


def init_branch(key: jax.Array, cfg: MambaConfig, d_inner: int | None = None) -> dict:
    """Conv + SSM parameters for ``d_inner`` channels (default cfg.d_inner)."""
    di = cfg.d_inner if d_inner is None else d_inner
    n, r, k = cfg.d_state, cfg.rank, cfg.d_conv
    ks = jax.random.split(key, 5)
    dt = jnp.exp(
        jax.random.uniform(ks[3], (di,), jnp.float32)
        * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
        + math.log(cfg.dt_min)
    )
    dt = jnp.maximum(dt, cfg.dt_init_floor)
    dt_std = r**-0.5 * cfg.dt_scale
    return {
        "conv_w": torch_linear_init(ks[0], k, (k, di)),  # [K, Di] depthwise
        "conv_b": torch_linear_init(ks[1], k, (di,)),
        "x_proj": torch_linear_init(ks[2], di, (di, r + 2 * n)),
        "dt_w": jax.random.uniform(ks[4], (r, di), jnp.float32, -dt_std, dt_std),
        "dt_b": dt + jnp.log(-jnp.expm1(-dt)),  # inverse softplus
        "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), (di, n))),
        "D": jnp.ones((di,), jnp.float32),
    }


def init_mixer(key: jax.Array, cfg: MambaConfig) -> dict:
    """Parameters of one Mamba mixer (no norm)."""
    d, di = cfg.d_model, cfg.d_inner
    k_in, k_br, k_out = jax.random.split(key, 3)
    return {
        "in_proj": torch_linear_init(k_in, d, (d, 2 * di)),
        "out_proj": torch_linear_init(k_out, di, (di, d)),
        **init_branch(k_br, cfg),
    }


def causal_conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Causal depthwise conv. x [B, L, C], w [K, C] (w[K-1] hits the current step)."""
    k = w.shape[0]
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    out = b.astype(x.dtype)
    for i in range(k):
        out = out + xp[:, i : i + length] * w[i].astype(x.dtype)
    return out


def _ssm_inputs(p: dict, cfg: MambaConfig, x: jax.Array):
    """x [..., Di] (post conv+SiLU) -> dt [..., Di], A [Di, N], B, C [..., N]."""
    r, n = cfg.rank, cfg.d_state
    x_dbl = x @ p["x_proj"].astype(x.dtype)  # [..., R+2N]
    dt_low, bm, cm = jnp.split(x_dbl, [r, r + n], axis=-1)
    dt = jax.nn.softplus(
        dt_low.astype(jnp.float32) @ p["dt_w"] + p["dt_b"]
    )  # [..., Di] fp32
    a = -jnp.exp(p["A_log"])  # [Di, N]
    return dt, a, bm, cm


def branch_apply(
    p: dict, cfg: MambaConfig, x: jax.Array, *, reverse: bool = False, return_state: bool = False
):
    """Conv -> SiLU -> selective SSM on a sequence.

    Args:
        p: branch params (``init_branch``).
        cfg: config.
        x: [B, L, Di] pre-conv activations.
        reverse: run anti-causally (conv and scan from the end), done by flipping.
        return_state: also return the decode state {"conv": [B, K-1, Di], "ssm": [B, Di, N]}
            after the last token (forward direction only).

    Returns:
        y [B, L, Di] (before the SiLU(z) gate), optionally the state.
    """
    if reverse:
        x = jnp.flip(x, 1)
    xc = silu(causal_conv(x, p["conv_w"], p["conv_b"]))
    dt, a, bm, cm = _ssm_inputs(p, cfg, xc)
    out = selective_scan(xc, dt, a, bm, cm, p["D"], mode=cfg.scan_mode, chunk=cfg.chunk,
                         inner=cfg.scan_inner, unroll=cfg.unroll, return_state=return_state)
    y, h = out if return_state else (out, None)
    if reverse:
        y = jnp.flip(y, 1)
    if return_state:
        k = cfg.d_conv
        conv_state = jnp.pad(x, ((0, 0), (max(0, k - 1 - x.shape[1]), 0), (0, 0)))[:, -(k - 1):]
        return y, {"conv": conv_state, "ssm": h}
    return y


def mixer_apply(p: dict, cfg: MambaConfig, u: jax.Array, *, return_state: bool = False):
    """Mamba mixer on u [B, L, D] -> [B, L, D] (optionally with the decode state)."""
    if u.ndim != 3 or u.shape[-1] != cfg.d_model:
        raise ValueError(
            f"mixer_apply: u must be [B, L, d_model={cfg.d_model}], got {tuple(u.shape)}"
        )
    xz = u @ p["in_proj"].astype(u.dtype)  # [B, L, 2Di]
    x, z = jnp.split(xz, 2, axis=-1)
    out = branch_apply(p, cfg, x, return_state=return_state)
    y, state = out if return_state else (out, None)
    y = (y * silu(z)) @ p["out_proj"].astype(u.dtype)
    return (y, state) if return_state else y


def init_mixer_state(cfg: MambaConfig, batch: int, dtype=jnp.float32) -> dict:
    """Empty decode state: conv window [B, K-1, Di] and SSM state [B, Di, N] (fp32)."""
    return {
        "conv": jnp.zeros((batch, cfg.d_conv - 1, cfg.d_inner), dtype),
        "ssm": jnp.zeros((batch, cfg.d_inner, cfg.d_state), jnp.float32),
    }


def mixer_step(p: dict, cfg: MambaConfig, state: dict, u_t: jax.Array) -> tuple[dict, jax.Array]:
    """One decoding step: u_t [B, D] -> (new state, out [B, D])."""
    xz = u_t @ p["in_proj"].astype(u_t.dtype)
    x, z = jnp.split(xz, 2, axis=-1)  # [B, Di]
    window = jnp.concatenate([state["conv"], x[:, None]], axis=1)  # [B, K, Di]
    xc = silu(jnp.einsum("bkc,kc->bc", window, p["conv_w"].astype(x.dtype)) + p["conv_b"])
    dt, a, bm, cm = _ssm_inputs(p, cfg, xc)
    h, y = selective_scan_step(state["ssm"], xc, dt, a, bm, cm, p["D"])
    out = (y * silu(z)) @ p["out_proj"].astype(u_t.dtype)
    return {"conv": window[:, 1:], "ssm": h}, out


def layer_param_count(d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                      dt_rank: int = 0) -> int:
    """Spec Sec. 1.5 formula: parameters of one Mamba layer including its LayerNorm."""
    d, n, k = d_model, d_state, d_conv
    di = expand * d
    r = dt_rank if dt_rank > 0 else math.ceil(d / 16)
    return (2 * d * di + di * k + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d
            + 2 * d)


# ----------------------------------------------------------------------------- language model


@dataclasses.dataclass(frozen=True)
class MambaLMConfig:
    """Causal Mamba LM: embed -> n_layers x (x + Mixer(RMSNorm(x))) -> RMSNorm -> tied head."""

    vocab_size: int = 256
    n_layers: int = 2
    mixer: MambaConfig = MambaConfig()
    norm_eps: float = 1e-5


LM_PRESETS: Registry[MambaLMConfig] = Registry("mamba_lm")
LM_PRESETS.add("mamba_130m", MambaLMConfig(vocab_size=50280, n_layers=24,
                                           mixer=MambaConfig(d_model=768)))
LM_PRESETS.add("mamba_130m_test", MambaLMConfig(vocab_size=64, n_layers=2,
                                                mixer=MambaConfig(d_model=32, d_state=8)))


def lm_init(key: jax.Array, cfg: MambaLMConfig) -> dict:
    """LM parameters. out_proj rescaled by 1/sqrt(n_layers) (reference ``_init_weights``)."""
    k_emb, *k_layers = jax.random.split(key, cfg.n_layers + 1)
    d = cfg.mixer.d_model
    layers = []
    for k in k_layers:
        m = init_mixer(k, cfg.mixer)
        m["out_proj"] = m["out_proj"] / math.sqrt(cfg.n_layers)
        layers.append({"norm": rmsnorm_init(d), "mixer": m})
    return {
        "embed": 0.02 * jax.random.normal(k_emb, (cfg.vocab_size, d), jnp.float32),
        "layers": layers,
        "norm_f": rmsnorm_init(d),
    }


def _check_tokens(tokens: jax.Array, cfg: MambaLMConfig) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array [B, L], got {tokens.dtype} "
                         f"{tuple(tokens.shape)}")


def lm_apply(params: dict, cfg: MambaLMConfig, tokens: jax.Array, *,
             return_state: bool = False):
    """tokens [B, L] int -> logits [B, L, V] (optionally the per-layer decode states)."""
    _check_tokens(tokens, cfg)
    x = params["embed"][tokens]
    states = []
    for lp in params["layers"]:
        out = mixer_apply(lp["mixer"], cfg.mixer, rmsnorm(lp["norm"], x, cfg.norm_eps),
                          return_state=return_state)
        if return_state:
            out, st = out
            states.append(st)
        x = x + out
    logits = rmsnorm(params["norm_f"], x, cfg.norm_eps) @ params["embed"].T
    return (logits, states) if return_state else logits


def lm_init_cache(cfg: MambaLMConfig, batch: int) -> list[dict]:
    return [init_mixer_state(cfg.mixer, batch) for _ in range(cfg.n_layers)]


def lm_step(params: dict, cfg: MambaLMConfig, cache: list[dict], token: jax.Array):
    """token [B] int -> (new cache, logits [B, V]); O(1) in the sequence length."""
    x = params["embed"][token]
    new = []
    for lp, st in zip(params["layers"], cache, strict=True):
        st, out = mixer_step(lp["mixer"], cfg.mixer, st, rmsnorm(lp["norm"], x, cfg.norm_eps))
        new.append(st)
        x = x + out
    return new, rmsnorm(params["norm_f"], x, cfg.norm_eps) @ params["embed"].T


def lm_generate(params: dict, cfg: MambaLMConfig, prompt: jax.Array, n_new: int) -> jax.Array:
    """Greedy generation: parallel prefill with the scan, then recurrent steps.

    Returns:
        [B, n_new] generated token ids.
    """
    logits, cache = lm_apply(params, cfg, prompt, return_state=True)
    tok = jnp.argmax(logits[:, -1], -1)

    def body(carry, _):
        cache, tok = carry
        cache, lg = lm_step(params, cfg, cache, tok)
        nxt = jnp.argmax(lg, -1)
        return (cache, nxt), tok

    _, toks = jax.lax.scan(body, (cache, tok), None, length=n_new)
    return toks.T


# ----------------------------------------------------------------------------- plain block


def block_init(key: jax.Array, cfg: MambaConfig) -> dict:
    """LayerNorm + mixer (the unit counted by ``layer_param_count``)."""
    return {"norm": layernorm_init(cfg.d_model), "mixer": init_mixer(key, cfg)}


def block_apply(p: dict, cfg: MambaConfig, x: jax.Array, residual: str = "prenorm") -> jax.Array:
    """``prenorm``: x + M(LN x); ``mamba_nd``: LN x + M(LN x) (the released Mamba-ND wiring)."""
    h = layernorm(p["norm"], x)
    y = mixer_apply(p["mixer"], cfg, h)
    return (x if residual == "prenorm" else h) + y
