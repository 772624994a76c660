"""Frozen model configs for the decoder-only Transformer family, and presets.

A ``ModelConfig`` is hashable and passed to jitted functions as a static
argument. Presets are registered by name in ``MODELS``; every preset has a tiny
``*_test`` twin for CPU tests.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from jaxlm.utils.config import ConfigError, Registry

Norm = Literal["rms", "layer"]
Pos = Literal["rope", "alibi", "learned", "none"]
RopeLayout = Literal["half", "interleaved"]
Mlp = Literal["swiglu", "gelu"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and variant choices of a decoder-only Transformer.

    Attributes:
        vocab_size: tokenizer vocabulary size.
        d_model: residual width.
        n_layers: number of blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (== n_heads: MHA, 1: MQA, else GQA).
        head_dim: per-head width.
        d_ff: hidden width of the MLP.
        max_seq_len: longest sequence (learned positions, default cache size).
        norm: "rms" (RMSNorm) or "layer" (LayerNorm with bias).
        norm_eps: epsilon of the norms.
        pos: "rope", "alibi", "learned" absolute positions, or "none".
        rope_layout: "half" (rotate halves, HF Llama) or "interleaved" (pairs
            (2i, 2i+1), GPT-J / the llama.cpp GGUF row order).
        rope_base: RoPE frequency base.
        rotary_dim: dims rotated per head (None = head_dim; GPT-J rotates 64).
        mlp: "swiglu" (gate/up/down) or "gelu" (up/down).
        parallel_block: GPT-J style x + attn(ln(x)) + mlp(ln(x)) with one norm.
        tie_embeddings: the LM head reuses the token embedding.
        use_bias: biases in attention/MLP projections.
        param_dtype: dtype params are stored in.
        compute_dtype: dtype activations/matmuls run in (bfloat16 on GPU/TPU).
        init_std: normal init scale of weight matrices.
        matmul_dtype: precision policy of the weight products (``layers.dense``): None
            = operands in ``compute_dtype``; e.g. "bfloat16" = bf16 operands with
            float32 accumulation (residual stream, norms, softmax stay in
            ``compute_dtype``). ~2x faster on CPUs with AVX512-BF16.
        attn_dtype: the same for the two attention matmuls (q.k and probs.v): None =
            ``compute_dtype``; "bfloat16" = bf16 operands, float32 accumulation.
        quant_impl: how quantized weight leaves (``jaxlm.quant.QuantWeight``) are
            multiplied: "auto" (the C++ kernel on CPU for <= 16 activation rows, with
            activations rounded to integer blocks; XLA dequantize + dot otherwise), "xla"
            (always dequantize + dot: exact f32 product of the dequantized weight) or
            "kernel". Float weights ignore it.
        quant_act_bits: the integer width the kernel rounds activations to, per block of
            32 (``jaxlm.quant.kernel``): 16 (default; SmolLM2 Q4_1 top-1 agreement with the
            float32 forward of the same weights 100% over 2,044 positions) or 8
            (llama.cpp's q8_1 scheme, 96.5%; faster where the kernel is compute bound).
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 16
    d_ff: int = 128
    max_seq_len: int = 256
    norm: Norm = "rms"
    norm_eps: float = 1e-5
    pos: Pos = "rope"
    rope_layout: RopeLayout = "half"
    rope_base: float = 10000.0
    rotary_dim: int | None = None
    mlp: Mlp = "swiglu"
    parallel_block: bool = False
    tie_embeddings: bool = True
    use_bias: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    init_std: float = 0.02
    matmul_dtype: str | None = None
    attn_dtype: str | None = None
    quant_impl: str = "auto"
    quant_act_bits: int = 16

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.vocab_size > 0, "vocab_size must be > 0"),
            (self.d_model > 0 and self.n_layers > 0, "d_model and n_layers must be > 0"),
            (self.n_heads > 0 and self.n_kv_heads > 0, "n_heads and n_kv_heads must be > 0"),
            (
                self.n_heads % self.n_kv_heads == 0,
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})",
            ),
            (self.head_dim % 2 == 0, "head_dim must be even (RoPE rotates pairs)"),
            (
                self.rotary_dim is None
                or (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0),
                "rotary_dim must be even and <= head_dim",
            ),
            (self.norm in ("rms", "layer"), f"norm must be 'rms' or 'layer', got {self.norm!r}"),
            (
                self.pos in ("rope", "alibi", "learned", "none"),
                f"pos must be rope/alibi/learned/none, got {self.pos!r}",
            ),
            (self.rope_layout in ("half", "interleaved"), "rope_layout must be half/interleaved"),
            (self.mlp in ("swiglu", "gelu"), f"mlp must be swiglu/gelu, got {self.mlp!r}"),
            (self.max_seq_len > 0, "max_seq_len must be > 0"),
        ]
        checks.append((self.quant_impl in ("auto", "xla", "kernel"),
                       f"quant_impl must be auto|xla|kernel, got {self.quant_impl!r}"))
        checks.append((self.quant_act_bits in (8, 16) and not isinstance(self.quant_act_bits, bool),
                       f"quant_act_bits must be 8 or 16, got {self.quant_act_bits!r}"))
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ModelConfig: {msg}")
        for name in ("param_dtype", "compute_dtype", "matmul_dtype", "attn_dtype"):
            if getattr(self, name) is None and name in ("matmul_dtype", "attn_dtype"):
                continue
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                raise ConfigError(f"ModelConfig: {name}={getattr(self, name)!r} is no dtype") from None

    @property
    def q_per_kv(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def pdtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def cdtype(self):
        return jnp.dtype(self.compute_dtype)

    def num_params(self) -> int:
        """Parameter count implied by the config (embeddings included once if tied)."""
        d, f, h, kv, hd = self.d_model, self.d_ff, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        mlp = (3 if self.mlp == "swiglu" else 2) * d * f
        norms_per_layer = 1 if self.parallel_block else 2
        norm_size = d * (2 if self.norm == "layer" else 1)
        per_layer = attn + mlp + norms_per_layer * norm_size
        if self.use_bias:
            per_layer += h * hd + 2 * kv * hd + d + ((2 if self.mlp == "swiglu" else 1) * f) + d
        total = self.n_layers * per_layer + self.vocab_size * d + norm_size
        if not self.tie_embeddings:
            total += self.vocab_size * d + (self.vocab_size if self.use_bias else 0)
        if self.pos == "learned":
            total += self.max_seq_len * d
        return total


MODELS: Registry[ModelConfig] = Registry("model")


def _add(name: str, cfg: ModelConfig, test: ModelConfig) -> None:
    MODELS.add(name, cfg)
    MODELS.add(f"{name}_test", test)


# SmolLM2-135M(-Instruct): Llama architecture. The GGUF stores attn_q/attn_k rows in the
# interleaved-pair order llama.cpp uses, so the loader selects rope_layout="interleaved".
_add(
    "smollm2-135m",
    ModelConfig(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
        d_ff=1536, max_seq_len=8192, norm="rms", norm_eps=1e-5, pos="rope",
        rope_layout="half", rope_base=100000.0, mlp="swiglu", tie_embeddings=True,
    ),
    ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=16,
        d_ff=128, max_seq_len=256, rope_base=100000.0,
    ),
)
# GPT-J-shaped (tiny): parallel block, one LayerNorm, partial interleaved RoPE, GELU, untied,
# biases on the MLP and the head. Keyformer evaluates GPT-J-6B.
_add(
    "gptj-tiny",
    ModelConfig(
        vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32,
        d_ff=512, max_seq_len=512, norm="layer", pos="rope", rope_layout="interleaved",
        rotary_dim=16, mlp="gelu", parallel_block=True, tie_embeddings=False, use_bias=True,
    ),
    ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
        d_ff=128, max_seq_len=256, norm="layer", pos="rope", rope_layout="interleaved",
        rotary_dim=8, mlp="gelu", parallel_block=True, tie_embeddings=False, use_bias=True,
    ),
)
# MPT-shaped (tiny): ALiBi, LayerNorm, GELU, no biases, tied. Keyformer evaluates MPT-7B.
_add(
    "mpt-tiny",
    ModelConfig(
        vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32,
        d_ff=512, max_seq_len=512, norm="layer", pos="alibi", mlp="gelu",
    ),
    ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
        d_ff=128, max_seq_len=256, norm="layer", pos="alibi", mlp="gelu",
    ),
)
# Cerebras-GPT-shaped (tiny): GPT-2 style learned positions, LayerNorm, GELU, biases, tied.
_add(
    "cerebras-gpt-tiny",
    ModelConfig(
        vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32,
        d_ff=512, max_seq_len=512, norm="layer", pos="learned", mlp="gelu", use_bias=True,
    ),
    ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
        d_ff=128, max_seq_len=256, norm="layer", pos="learned", mlp="gelu", use_bias=True,
    ),
)
# Training presets (issue 3 uses these): Llama-style GQA models by size.
_add(
    "llama-20m",
    ModelConfig(
        vocab_size=49152, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=32,
        d_ff=768, max_seq_len=1024,
    ),
    ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                d_ff=128, max_seq_len=128),
)
