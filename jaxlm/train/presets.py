"""Training presets: one frozen ``TrainConfig`` per named run, registered in ``TRAIN``.

Every preset has a tiny ``*_test`` twin (a few CPU-seconds per step at most).
Select with ``--config=<name>`` and override any field, nested ones included:
``--override=steps=500 --override=optim.lr=1e-3 --override=model.n_layers=4``.

Presets (Llama-style: RMSNorm, RoPE, SwiGLU, GQA, tied; GPT-style: GPT-2 shape,
LayerNorm, learned positions, GELU, biases, tied):

========== ======= ============== ====================================================
name       params  tokenizer      shape
========== ======= ============== ====================================================
tiny       ~0.8 M  bytes (257)    Llama, d 128, 4 layers, seq 128
tiny-gpt   ~0.9 M  bytes (257)    GPT,   d 128, 4 layers, seq 128
20m        ~19.8 M bpe 4096       Llama, d 512, 6 layers, 8 heads / 4 kv, F 1408, seq 256
20m-gpt    ~21 M   bpe 4096       GPT,   d 512, 6 layers, 8 heads, F 2048, seq 256
125m       ~124 M  smollm2 49152  Llama, d 768, 12 layers, 12 heads / 4 kv, F 2432
125m-gpt   ~124 M  smollm2 49152  GPT-2 small shape (d 768, 12 layers, F 3072)
smollm2-ft 135 M   smollm2        fine-tune SmolLM2-135M-Instruct (init_from)
========== ======= ============== ====================================================

The 20M presets use a 4096-entry byte-level BPE trained on the corpus (cached on
disk) so the embedding is ~10% of the parameters rather than dominating them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.core.config import ModelConfig
from jaxlm.utils.config import ConfigError, Registry, check_finite

OptName = Literal["adamw", "adafactor", "sgd"]
Parallel = Literal["gspmd", "shard_map"]
TokName = Literal["bytes", "bpe", "smollm2"]


def _require(cfg, checks: list[tuple[bool, str]]) -> None:
    """Raises ConfigError with the first failed check's message (NaN fields first)."""
    check_finite(cfg)
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{type(cfg).__name__}: {msg}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (see ``jaxlm.train.optim.make_optimizer``).

    Attributes:
        name: "adamw", "adafactor" (factored second moments) or "sgd" (momentum).
        lr: peak learning rate.
        warmup_steps: linear warm-up from 0 to ``lr``.
        decay_steps: cosine decay length after warm-up (None = the run's ``steps``).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        b1, b2, eps: Adam moments (b1 is the SGD momentum; 0 disables it).
        weight_decay: decoupled weight decay (multiplied by the lr, as optax.adamw).
        no_decay: regexes over parameter paths ("layers/0/attn/wq") that get no decay.
        clip_norm: global-norm gradient clipping (0 disables it).
    """

    name: OptName = "adamw"
    lr: float = 3e-3
    warmup_steps: int = 20
    decay_steps: int | None = None
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay: tuple[str, ...] = (r"norm", r"bias", r"(^|/)b[qkvo]$", r"embed")
    clip_norm: float = 1.0

    def __post_init__(self):
        _require(self, [
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.decay_steps is None or self.decay_steps > 0, "decay_steps must be > 0 or None"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (0.0 <= self.b1 < 1.0, "b1 must be in [0, 1)"),
            (0.0 <= self.b2 < 1.0, "b2 must be in [0, 1)"),
            (self.eps > 0, "eps must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.clip_norm >= 0, "clip_norm must be >= 0 (0 disables clipping)"),
        ])


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Token stream and batching (see ``jaxlm.train.data``).

    Attributes:
        corpus: "pydoc" (the Python docs bundled with the standard library), a
            glob of UTF-8 text files ("data/*.txt"), or "synthetic" (a learnable
            modular-counting stream, for tests).
        tokenizer: "bytes" (256 bytes + EOS), "bpe" (byte-level BPE of
            ``vocab_size`` trained on the corpus, cached) or "smollm2".
        vocab_size: BPE vocabulary size (ignored for the other tokenizers).
        seq_len: tokens per training sequence (targets are shifted by one).
        batch_size: global sequences per optimizer step (all micro-batches).
        eval_fraction: tail of the token stream held out for evaluation.
        cache_dir: where tokenizers and token memmaps are cached.
    """

    corpus: str = "pydoc"
    tokenizer: TokName = "bytes"
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    eval_fraction: float = 0.05
    cache_dir: str = "runs/data_cache"

    def __post_init__(self):
        _require(self, [
            (self.vocab_size > 0, "vocab_size must be > 0"),
            (self.seq_len > 1, "seq_len must be > 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0.0 < self.eval_fraction < 0.5, "eval_fraction must be in (0, 0.5)"),
        ])


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        model: the model shape (``jaxlm.core.ModelConfig``).
        optim: optimizer + schedule.
        data: corpus, tokenizer and batching.
        steps: optimizer steps of the whole run.
        grad_accum: micro-batches per step (``data.batch_size`` is split in this many).
        log_every: steps between host pulls of the metrics (NaN check, JSONL, TB).
        eval_every: steps between held-out evaluations (0: only at the end).
        eval_batches: batches per evaluation.
        ckpt_every: steps between checkpoints (0: only at the end).
        keep_ckpts: checkpoints kept (the latest N).
        seed: root seed (init, data order, dropout-style rng).
        init_from: pretrained name/path whose params initialise the model
            (fine-tuning); its config and tokenizer replace ``model``/``data.tokenizer``.
        mesh_data, mesh_fsdp: mesh shape; -1 in ``mesh_data`` = all remaining devices.
        parallel: "gspmd" (jit with shardings, FSDP possible) or "shard_map"
            (explicit ``lax.pmean``; data-parallel only).
        tensorboard: also write TensorBoard events (JSON-lines are always written).
        measure_peak: measure the matmul peak at start for the MFU column.
    """

    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    steps: int = 200
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    ckpt_every: int = 100
    keep_ckpts: int = 2
    seed: int = 0
    init_from: str | None = None
    mesh_data: int = -1
    mesh_fsdp: int = 1
    parallel: Parallel = "gspmd"
    tensorboard: bool = True
    measure_peak: bool = True

    def __post_init__(self):
        _require(self, self._field_checks())

    def _field_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.steps > 0, "steps must be > 0"),
            (self.grad_accum > 0, "grad_accum must be > 0"),
            (self.log_every > 0, "log_every must be > 0"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: evaluate only at the end)"),
            (self.eval_batches >= 1, "eval_batches must be >= 1"),
            (self.ckpt_every >= 0, "ckpt_every must be >= 0 (0: save only at the end)"),
            (self.keep_ckpts >= 1, "keep_ckpts must be >= 1"),
            (self.mesh_data == -1 or self.mesh_data >= 1,
             "mesh_data must be >= 1 or -1 (all remaining devices)"),
        ]

    def validate(self) -> None:
        """Every check that needs no devices or data; raises ConfigError naming the field.

        Single-field ranges are also checked on construction (``__post_init__``, so an
        override fails at once); the checks between fields run here, after all overrides.
        """
        check_finite(self)
        self.optim.__post_init__()
        self.data.__post_init__()
        checks = self._field_checks() + [
            (self.data.seq_len > 1, "data.seq_len must be > 1"),
            (
                self.data.batch_size % self.grad_accum == 0,
                f"data.batch_size ({self.data.batch_size}) must be divisible by grad_accum "
                f"({self.grad_accum}); change one of them",
            ),
            (0.0 < self.data.eval_fraction < 0.5, "data.eval_fraction must be in (0, 0.5)"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.mesh_fsdp >= 1, "mesh_fsdp must be >= 1"),
            (self.parallel in ("gspmd", "shard_map"), "parallel must be gspmd or shard_map"),
            (
                not (self.parallel == "shard_map" and self.mesh_fsdp > 1),
                "parallel=shard_map is data-parallel only; set mesh_fsdp=1 or parallel=gspmd",
            ),
        ]
        if self.model.pos == "learned" or self.init_from is None:
            checks.append((
                self.data.seq_len <= self.model.max_seq_len,
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len "
                f"({self.model.max_seq_len}); lower data.seq_len or raise model.max_seq_len",
            ))
        _require(self, checks)



TRAIN: Registry[TrainConfig] = Registry("train")

BYTES_VOCAB = 264  # 256 bytes + EOS (id 256), rounded up to a multiple of 8


def llama(vocab: int, d: int, layers: int, heads: int, kv: int, ff: int, seq: int) -> ModelConfig:
    """A Llama-style ModelConfig (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings)."""
    return ModelConfig(
        vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv,
        head_dim=d // heads, d_ff=ff, max_seq_len=seq,
    )


def gpt(vocab: int, d: int, layers: int, heads: int, ff: int, seq: int) -> ModelConfig:
    """A GPT-2-style ModelConfig (LayerNorm, learned positions, GELU, biases, tied)."""
    return ModelConfig(
        vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads,
        head_dim=d // heads, d_ff=ff, max_seq_len=seq, norm="layer", pos="learned",
        mlp="gelu", use_bias=True,
    )


def _test_twin(cfg: TrainConfig, model: ModelConfig, **data_kw) -> TrainConfig:
    """A few-second version of ``cfg``: tiny model, short sequences, few steps."""
    data = dataclasses.replace(cfg.data, seq_len=32, batch_size=8, **data_kw)
    return dataclasses.replace(
        cfg, model=model, data=data, steps=8, log_every=2, eval_every=4, eval_batches=2,
        ckpt_every=4, optim=dataclasses.replace(cfg.optim, warmup_steps=2, lr=3e-3),
        measure_peak=False, tensorboard=True,
    )


def _add(name: str, cfg: TrainConfig, test: TrainConfig) -> None:
    TRAIN.add(name, cfg)
    TRAIN.add(f"{name}_test", test)


_BYTES = DataConfig(tokenizer="bytes", seq_len=128, batch_size=16)
_BPE = DataConfig(tokenizer="bpe", vocab_size=4096, seq_len=256, batch_size=8)
_SMOL = DataConfig(tokenizer="smollm2", seq_len=256, batch_size=8)
_TINY_LLAMA = llama(BYTES_VOCAB, 32, 2, 4, 2, 64, 64)
_TINY_GPT = gpt(BYTES_VOCAB, 32, 2, 4, 64, 64)

_add(
    "tiny",
    TrainConfig(model=llama(BYTES_VOCAB, 128, 4, 4, 2, 384, 128), data=_BYTES, steps=300,
                log_every=10, eval_every=100, ckpt_every=100,
                optim=OptimConfig(lr=3e-3, warmup_steps=30)),
    _test_twin(TrainConfig(data=_BYTES), _TINY_LLAMA),
)
_add(
    "tiny-gpt",
    TrainConfig(model=gpt(BYTES_VOCAB, 128, 4, 4, 512, 128), data=_BYTES, steps=300,
                log_every=10, eval_every=100, ckpt_every=100,
                optim=OptimConfig(lr=3e-3, warmup_steps=30)),
    _test_twin(TrainConfig(data=_BYTES), _TINY_GPT),
)
_add(
    "20m",
    TrainConfig(model=llama(4096, 512, 6, 8, 4, 1408, 256), data=_BPE, steps=2000,
                log_every=10, eval_every=250, ckpt_every=250,
                optim=OptimConfig(lr=1e-3, warmup_steps=100)),
    _test_twin(TrainConfig(data=_BPE), llama(512, 32, 2, 4, 2, 64, 64), vocab_size=512),
)
_add(
    "20m-gpt",
    TrainConfig(model=gpt(4096, 512, 6, 8, 2048, 256), data=_BPE, steps=2000,
                log_every=10, eval_every=250, ckpt_every=250,
                optim=OptimConfig(lr=1e-3, warmup_steps=100)),
    _test_twin(TrainConfig(data=_BPE), gpt(512, 32, 2, 4, 64, 64), vocab_size=512),
)
_add(
    "125m",
    TrainConfig(model=llama(49152, 768, 12, 12, 4, 2432, 1024), data=_SMOL, steps=10000,
                log_every=20, eval_every=500, ckpt_every=500,
                optim=OptimConfig(lr=6e-4, warmup_steps=500)),
    _test_twin(TrainConfig(data=_BYTES), _TINY_LLAMA),
)
_add(
    "125m-gpt",
    TrainConfig(model=gpt(49152, 768, 12, 12, 3072, 1024), data=_SMOL, steps=10000,
                log_every=20, eval_every=500, ckpt_every=500,
                optim=OptimConfig(lr=6e-4, warmup_steps=500)),
    _test_twin(TrainConfig(data=_BYTES), _TINY_GPT),
)
# Fine-tuning: model and tokenizer come from the pretrained file (init_from).
_add(
    "smollm2-ft",
    TrainConfig(init_from="smollm2-135m-instruct", data=DataConfig(tokenizer="smollm2",
                seq_len=256, batch_size=4), steps=200, log_every=5, eval_every=50,
                ckpt_every=100, optim=OptimConfig(lr=5e-5, warmup_steps=20, weight_decay=0.0)),
    _test_twin(TrainConfig(data=_BYTES), _TINY_LLAMA),
)


def get_config(name: str, overrides=()) -> TrainConfig:
    """The preset ``name`` with ``field=value`` overrides applied and validated.

    Raises:
        ConfigError: unknown preset or field, bad value, or inconsistent fields.
    """
    cfg = TRAIN.get(name, overrides)
    cfg.validate()
    return cfg


__all__ = [
    "BYTES_VOCAB", "ConfigError", "DataConfig", "OptimConfig", "TRAIN", "TrainConfig",
    "get_config", "gpt", "llama",
]
