"""Quantized weight formats: int8 per output channel and GGUF's Q8_0 / Q4_0 / Q4_1 blocks.

A quantized weight is a :class:`QuantWeight` pytree standing for a float weight leaf. Its
``shape`` is the float leaf's shape (e.g. ``(576, 1536)`` for an MLP up-projection,
``(576, 9, 64)`` for a query projection, ``(49152, 576)`` for a token embedding). ``n_in``
axes are contracted with the trailing axes of ``x``: the leading ones (``x @ W``), or, with
``rows_first=True``, the trailing ones (``x @ W.T``, a tied embedding ``[vocab, d]``).
Storage is row-major over the output channels, which is GGUF's own order (one row per
output channel, blocks of 32 along the input), with ``K`` = the contracted size and
``N`` = the product of the other axes:

=======  ==========================  =======================  =================  ==========
format   qs                          d                        m                  W[k, n]
=======  ==========================  =======================  =================  ==========
int8     int8 [N, K]                 float32 [N]              --                 d*q
q8_0     int8 [N, K]                 float16 [N, K/32]        --                 d*q
q4_0     uint8 [N, K/2] (nibbles)    float16 [N, K/32]        --                 d*(q-8)
q4_1     uint8 [N, K/2] (nibbles)    float16 [N, K/32]        float16 [N, K/32]  d*q+m
=======  ==========================  =======================  =================  ==========

4-bit blocks keep GGUF's nibble order: byte ``j`` of a 16-byte block holds element ``j`` in
its low nibble and element ``j + 16`` in its high nibble. ``from_gguf_blocks`` splits a GGUF
tensor's raw blocks (``[scale f16][min f16][payload]`` per 32 values) into these arrays
without changing a bit, and ``to_gguf_blocks`` joins them back (the two are inverse), so a
GGUF file's Q4_1 weights stay resident at 20 bytes per 32 values (0.156x float32).

``dequantize_np`` is the exact numpy reference (float32, bit-identical to
``gguf.quants.dequantize`` of the same blocks); ``dequantize`` is the jnp version used inside
jitted functions.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 32
FORMATS = ("int8", "q8_0", "q4_0", "q4_1")
GGUF_FORMATS = ("q8_0", "q4_0", "q4_1")
# bytes per 32-value block in a GGUF file
_GGUF_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


class QuantError(ValueError):
    """Bad input to a quantization function (the message names the input and the fix)."""


@flax.struct.dataclass
class QuantWeight:
    """A quantized stand-in for a float weight ``W`` of logical shape ``shape`` (see module doc)."""

    qs: Any
    d: Any
    m: Any = None
    fmt: str = flax.struct.field(pytree_node=False, default="q8_0")
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    n_in: int = flax.struct.field(pytree_node=False, default=1)
    rows_first: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The axes contracted with x's trailing axes."""
        return tuple(self.shape[-self.n_in :] if self.rows_first else self.shape[: self.n_in])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[: -self.n_in] if self.rows_first else self.shape[self.n_in :])

    @property
    def K(self) -> int:
        return math.prod(self.in_shape)

    @property
    def N(self) -> int:
        return math.prod(self.out_shape)

    @property
    def dtype(self):
        """The dtype of the float weight this stands for (what ``astype`` defaults to)."""
        return jnp.dtype(jnp.float32)

    def astype(self, dtype) -> jax.Array:
        """The dequantized float weight in ``dtype`` and the leaf's shape (traceable), so code
        written for float leaves (``w.astype(ct)`` then a product) runs the pure-XLA path."""
        return dequantize(self, dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Resident bytes of the stored arrays."""
        return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in self.arrays())

    def arrays(self) -> tuple:
        return (self.qs, self.d) if self.m is None else (self.qs, self.d, self.m)


def is_quantized(w: Any) -> bool:
    return isinstance(w, QuantWeight)


def _check_fmt(fmt: str) -> str:
    f = str(fmt).lower()
    if f not in FORMATS:
        raise QuantError(f"unknown quantized format {fmt!r}; use one of {FORMATS}.")
    return f


def _as_rows(w: np.ndarray, n_in: int, rows_first: bool = False) -> np.ndarray:
    """Float leaf [*in, *out] (or [*out, *in] if rows_first) -> float32 rows [N, K]."""
    w = np.asarray(w, np.float32)
    if w.ndim < 2 or not 1 <= n_in < w.ndim:
        raise QuantError(
            f"weight of shape {w.shape} with n_in={n_in}: need >= 2 axes and 1 <= n_in < ndim."
        )
    if rows_first:
        return np.ascontiguousarray(w.reshape(-1, math.prod(w.shape[-n_in:])))
    k = math.prod(w.shape[:n_in])
    return np.ascontiguousarray(w.reshape(k, -1).T)


def _blocks(rows: np.ndarray, fmt: str) -> np.ndarray:
    n, k = rows.shape
    if k % BLOCK:
        raise QuantError(
            f"{fmt} needs the contracted size K to be a multiple of {BLOCK}, got K={k}; use "
            "fmt='int8' (per channel) for this weight."
        )
    return rows.reshape(n, k // BLOCK, BLOCK)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15] shaped [N, nb, 32] -> GGUF nibble bytes [N, nb*16]."""
    q = q.astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(q.shape[0], -1)


def _unpack_nibbles_np(qs: np.ndarray) -> np.ndarray:
    """GGUF nibble bytes [N, nb*16] -> uint8 [N, nb, 32]."""
    n = qs.shape[0]
    b = qs.reshape(n, -1, 16)
    return np.concatenate([b & 0x0F, b >> 4], axis=-1)


def quantize_weight(w: Any, fmt: str, n_in: int = 1, rows_first: bool = False) -> QuantWeight:
    """Quantizes a float weight leaf ([*in, *out], or [*out, *in] with ``rows_first``) to ``fmt``.

    int8: per output channel, ``d = max|W[:, n]| / 127``, ``q = rint(W / d)``.
    q8_0: per block, ``d = max|w| / 127``, ``q = rint(w / d)``.
    q4_0: per block, ``d = w_amax / -8`` (w_amax the value of largest magnitude, with sign),
    ``q = min(15, trunc(w / d + 8.5))``.
    q4_1: per block, ``d = (max - min) / 15``, ``m = min``, ``q = min(15, trunc((w - m) / d + 0.5))``.
    (The GGUF rules; scales are stored as float16 in the q formats.)
    """
    fmt = _check_fmt(fmt)
    w_np = np.asarray(w, np.float32)
    rows = _as_rows(w_np, n_in, rows_first)
    shape = tuple(int(s) for s in w_np.shape)
    meta = {"fmt": fmt, "shape": shape, "n_in": n_in, "rows_first": rows_first}
    if not np.all(np.isfinite(rows)):
        raise QuantError("weight to quantize holds NaN or Inf values; fix the weight first.")
    if fmt == "int8":
        amax = np.abs(rows).max(axis=1)
        d = (amax / np.float32(127)).astype(np.float32)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
        q = np.clip(np.rint(rows * inv[:, None]), -127, 127).astype(np.int8)
        return QuantWeight(qs=q, d=d, **meta)
    blk = _blocks(rows, fmt)
    n, nb, _ = blk.shape
    if fmt == "q8_0":
        amax = np.abs(blk).max(axis=-1)
        d = (amax / np.float32(127)).astype(np.float32)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
        q = np.clip(np.rint(blk * inv[..., None]), -127, 127).astype(np.int8)
        return QuantWeight(qs=q.reshape(n, -1), d=d.astype(np.float16), **meta)
    if fmt == "q4_0":
        idx = np.abs(blk).argmax(axis=-1)
        mx = np.take_along_axis(blk, idx[..., None], axis=-1)[..., 0]
        d = (mx / np.float32(-8)).astype(np.float32)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
        q = np.minimum(15, np.trunc(blk * inv[..., None] + np.float32(8.5))).astype(np.uint8)
        return QuantWeight(qs=_pack_nibbles(q), d=d.astype(np.float16), **meta)
    # q4_1
    lo = blk.min(axis=-1)
    hi = blk.max(axis=-1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    q = np.clip(np.trunc((blk - lo[..., None]) * inv[..., None] + np.float32(0.5)), 0, 15).astype(np.uint8)
    return QuantWeight(
        qs=_pack_nibbles(q), d=d.astype(np.float16), m=lo.astype(np.float16), **meta
    )


def from_gguf_blocks(
    raw: np.ndarray, fmt: str, shape: tuple[int, ...] | None = None, n_in: int = 1, rows_first: bool = False
) -> QuantWeight:
    """Splits a GGUF tensor's raw blocks (uint8 [N, nb*block_bytes]) into a QuantWeight.

    ``shape`` is the float leaf's shape ([*in, *out], or [*out, *in] with ``rows_first``;
    default ``(K, N)`` / ``(N, K)``). No value changes.
    """
    fmt = _check_fmt(fmt)
    if fmt not in GGUF_FORMATS:
        raise QuantError(f"GGUF blocks exist for {GGUF_FORMATS}, not {fmt!r}.")
    raw = np.ascontiguousarray(np.asarray(raw))
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise QuantError(f"raw GGUF blocks must be a 2-D uint8 array [rows, bytes], got {raw.dtype} {raw.shape}.")
    bb = _GGUF_BLOCK_BYTES[fmt]
    n, nbytes = raw.shape
    if nbytes % bb:
        raise QuantError(f"{fmt} rows hold a multiple of {bb} bytes; got {nbytes}: the tensor is corrupt.")
    nb = nbytes // bb
    blk = raw.reshape(n, nb, bb)
    d = np.ascontiguousarray(blk[..., 0:2]).view(np.float16)[..., 0]
    k = nb * BLOCK
    if shape is None:
        shape = (n, k) if rows_first else (k, n)
    shape = tuple(int(s) for s in shape)
    meta = {"fmt": fmt, "shape": shape, "n_in": n_in, "rows_first": rows_first}
    probe = QuantWeight(qs=None, d=None, **meta)
    if probe.K != k or probe.N != n:
        raise QuantError(f"logical shape {shape} (n_in={n_in}) does not match {n} rows of {k} values.")
    if fmt == "q8_0":
        qs = np.ascontiguousarray(blk[..., 2:]).view(np.int8).reshape(n, k)
        return QuantWeight(qs=qs, d=d, **meta)
    if fmt == "q4_0":
        qs = np.ascontiguousarray(blk[..., 2:]).reshape(n, k // 2)
        return QuantWeight(qs=qs, d=d, **meta)
    m = np.ascontiguousarray(blk[..., 2:4]).view(np.float16)[..., 0]
    qs = np.ascontiguousarray(blk[..., 4:]).reshape(n, k // 2)
    return QuantWeight(qs=qs, d=d, m=m, **meta)


def to_gguf_blocks(w: QuantWeight) -> np.ndarray:
    """The inverse of :func:`from_gguf_blocks`: uint8 [N, nb*block_bytes] as a GGUF file stores it."""
    if w.fmt not in GGUF_FORMATS:
        raise QuantError(f"GGUF blocks exist for {GGUF_FORMATS}, not {w.fmt!r}.")
    n, nb = w.N, w.K // BLOCK
    d = np.asarray(w.d, np.float16).reshape(n, nb, 1).view(np.uint8)
    qs = np.asarray(w.qs).reshape(n, nb, -1).view(np.uint8)
    parts = [d]
    if w.fmt == "q4_1":
        parts.append(np.asarray(w.m, np.float16).reshape(n, nb, 1).view(np.uint8))
    parts.append(qs)
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def _values_np(w: QuantWeight) -> np.ndarray:
    """Integer weight values as stored (int32 [N, K]); q4_0 already centred (q - 8)."""
    qs = np.asarray(w.qs)
    if w.fmt in ("int8", "q8_0"):
        return qs.astype(np.int32)
    q = _unpack_nibbles_np(qs).astype(np.int32).reshape(w.N, w.K)
    return q - 8 if w.fmt == "q4_0" else q


def dequantize_rows_np(w: QuantWeight) -> np.ndarray:
    """Exact float32 rows [N, K] of a quantized weight (numpy reference)."""
    q = _values_np(w).astype(np.float32)
    if w.fmt == "int8":
        return q * np.asarray(w.d, np.float32)[:, None]
    n, nb = w.N, w.K // BLOCK
    q = q.reshape(n, nb, BLOCK)
    d = np.asarray(w.d, np.float32).reshape(n, nb, 1)
    out = q * d
    if w.fmt == "q4_1":
        out = out + np.asarray(w.m, np.float32).reshape(n, nb, 1)
    return out.reshape(n, w.K)


def dequantize_np(w: QuantWeight) -> np.ndarray:
    """Exact float32 weight in the leaf's shape (numpy reference)."""
    rows = dequantize_rows_np(w)
    return rows.reshape(w.shape) if w.rows_first else np.ascontiguousarray(rows.T).reshape(w.shape)


def dequantize_rows(w: QuantWeight, dtype=jnp.float32) -> jax.Array:
    """jnp version of :func:`dequantize_rows_np` (traceable; rows [N, K])."""
    n, k = w.N, w.K
    if w.fmt == "int8":
        return (w.qs.astype(jnp.float32) * w.d.astype(jnp.float32)[:, None]).astype(dtype)
    nb = k // BLOCK
    if w.fmt == "q8_0":
        q = w.qs.astype(jnp.float32).reshape(n, nb, BLOCK)
    else:
        b = w.qs.reshape(n, nb, 16)
        q = jnp.concatenate([b & 0x0F, b >> 4], axis=-1).astype(jnp.float32)
        if w.fmt == "q4_0":
            q = q - 8.0
    out = q * w.d.astype(jnp.float32)[..., None]
    if w.fmt == "q4_1":
        out = out + w.m.astype(jnp.float32)[..., None]
    return out.reshape(n, k).astype(dtype)


def dequantize(w: QuantWeight, dtype=jnp.float32) -> jax.Array:
    """jnp float weight in the leaf's shape (traceable)."""
    rows = dequantize_rows(w, dtype)
    return rows.reshape(w.shape) if w.rows_first else rows.T.reshape(w.shape)


def take_rows(w: QuantWeight, ids: Any, dtype=jnp.float32) -> jax.Array:
    """Dequantized storage rows ``W_rows[ids]`` ([..., K]): the embedding lookup
    ``embed[ids]`` of a quantized table (``rows_first=True``, leaf [vocab, d])."""
    sub = QuantWeight(
        qs=jnp.take(w.qs, ids.reshape(-1), axis=0),
        d=jnp.take(w.d, ids.reshape(-1), axis=0),
        m=None if w.m is None else jnp.take(w.m, ids.reshape(-1), axis=0),
        fmt=w.fmt,
        shape=(int(np.prod(ids.shape)), w.K),
        n_in=1,
        rows_first=True,
    )
    return dequantize_rows(sub, dtype).reshape(*ids.shape, w.K)
