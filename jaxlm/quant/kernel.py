"""The C++ quantized matmul (csrc/quant_matmul.cc) behind ``jax.ffi``, and its numpy reference.

Arithmetic (llama.cpp's q8_1 activation scheme, optionally at 16 bits; scales in float32):

1. Each row of ``x`` [M, K] is rounded in blocks of 32 values to ``act_bits``-bit integers:
   ``Q = 32767`` (``act_bits=16``, the default) or ``Q = 127`` (``act_bits=8``, llama.cpp's
   q8_1), ``amax = max|x_j|``, ``dx = amax / Q`` (float32),
   ``qx_j = clip(rint(x_j * (1/dx)), -Q, Q)`` (round half to even; all zero when
   ``amax == 0``), ``sx = dx * sum_j qx_j``. Eight bits round each activation by up to
   ``amax / 254``, which moved the 135M model's top-1 token away from the float32 forward at
   ~3.5% of positions; sixteen bits make that error 258x smaller. The kernel widens the
   weight block to int16 and uses ``vpmaddwd`` (16 products per instruction) instead of the
   8-bit ``vpmaddubsw`` path (32 per instruction), so the weight is still read once.
2. For output channel ``n`` and block ``b`` the integer dot product
   ``isum = sum_j qw_j * qx_j`` is exact in int32 (``qw = q - 8`` for q4_0).
3. ``out[m, n] = sum_b (dw_b * dx_b) * isum_b`` (plus ``sum_b mw_b * sx_b`` for q4_1), each
   scale product taken in float32 and the sum accumulated in float32; int8-per-channel
   weights use ``dw_b = 1`` and multiply the sum by the channel scale.

:func:`reference_matmul_np` evaluates the same formula in float64 from the same integers and
float32 scale products, so the kernel differs from it only by float32 rounding: the
accumulation and, for 8-bit weights against 16-bit activations, block sums above 2**24
converted to float32 (together bounded by ``(3 nb + 8) * 2**-23 * scale``, see
:func:`reference_matmul_np`). Against the
float32 product with the dequantized weight the error is the activations' rounding, at most
``dx / 2`` per value.

Differentiation: ``kernel_matmul`` has a custom VJP. The gradient with respect to ``x`` is
``g @ W.T`` with the *dequantized float32* weight (the straight-through transpose of the
quantized forward); asking for a gradient with respect to the quantized weight raises
:class:`QuantError` (quantized weights are not trainable; dequantize them first).

Under ``jax.vmap`` the call runs once per batch element (``vmap_method="sequential"``); fold
batch axes into the rows of ``x`` instead (``kernel_matmul`` accepts any leading axes).

Loading: the extension is ``jaxlm/quant/_kernel*.so`` built by ``setup.py`` (``pip install -e .``
or ``python setup.py build_ext --inplace``); it is loaded with ``ctypes`` and its one handler
(``jaxlm_qmm``: 1-8 weights of one format against the same x) is registered for the CPU
platform. ``JAXLM_DISABLE_KERNEL=1`` skips it (the pure-XLA path is
used); ``JAXLM_KERNEL_THREADS=n`` or ``num_threads=n`` sets the thread count (default: the
number of cores).

Instruction sets (chosen at run time, reported by :func:`kernel_status` as ``isa``): products
with fewer than 5 rows of ``x`` (decode at small batch) use AVX2/FMA/F16C; products with
``M >= 5`` use an AVX-512 VNNI tile where the CPU has it (``avx512vnni``: 8 or 16 tokens in the
lanes of one register, one ``vpdpwssd`` per weight pair for all of them, no horizontal sums;
1.6-2x the AVX2 path at ``M = 16`` on an AMD EPYC Zen 4 host) and the AVX2 row path otherwise;
a portable scalar path runs anywhere. ``JAXLM_KERNEL_ISA=avx2`` or ``=scalar`` caps the level
(``avx512``, the default, caps nothing; another value raises :class:`QuantError`;
``JAXLM_KERNEL_SCALAR=1`` is the same as ``=scalar``); all paths compute the same integer sums
and differ only in float32 summation order.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.quant.formats import BLOCK, QuantError, QuantWeight, _values_np

_ABI_VERSION = 5
_TARGET = "jaxlm_qmm"  # one handler: 1-8 weights of one format against the same x
_FMT_CODE = {"q8_0": 0, "q4_0": 1, "q4_1": 2, "int8": 3}
MAX_MULTI = 8  # weights per fused call (csrc/quant_matmul.cc)
MAX_KERNEL_ROWS = 16  # matmul(impl="auto") uses the kernel for at most this many rows of x
ISA_ENV = "JAXLM_KERNEL_ISA"  # caps the kernel's instruction set (read once, when loaded)
ISA_LEVELS = ("scalar", "avx2", "avx512")


def _library_path() -> pathlib.Path | None:
    here = pathlib.Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_kernel{suffix}"
        if p.exists():
            return p
    return None


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(library, reason). The library is None when the kernel cannot be used; reason says why."""
    if os.environ.get("JAXLM_DISABLE_KERNEL", "") not in ("", "0"):
        return None, "disabled by JAXLM_DISABLE_KERNEL"
    isa = os.environ.get(ISA_ENV, "")
    if isa not in ("",) + ISA_LEVELS:
        # the library reads it once when loaded; a misspelt cap would silently run the best path
        raise QuantError(f"${ISA_ENV}={isa!r}: use one of {', '.join(ISA_LEVELS)} (or leave it unset).")
    path = _library_path()
    if path is None:
        return None, (
            "extension not built (run `pip install -e .` or `python setup.py build_ext --inplace` "
            "with a C++17 compiler)"
        )
    try:
        lib = ctypes.CDLL(str(path))
        if lib.jaxlm_quant_abi_version() != _ABI_VERSION:
            return None, f"{path.name} is stale (ABI {lib.jaxlm_quant_abi_version()}); rebuild it"
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.JaxlmQmm), platform="cpu")
    except (OSError, AttributeError) as e:
        return None, f"{path.name} could not be loaded ({e}); rebuild it"
    return lib, "loaded"


def kernel_available() -> bool:
    """True when the C++ kernel is built, loadable and not disabled."""
    return _load()[0] is not None


def kernel_status() -> dict:
    """What the kernel path will do: loaded or not (and why), ISA, default thread count."""
    lib, reason = _load()
    out = {"available": lib is not None, "reason": reason, "path": str(_library_path() or "")}
    if lib is not None:
        out["isa"] = {2: "avx512vnni", 1: "avx2+fma+f16c"}.get(int(lib.jaxlm_quant_isa()), "scalar")
        out["default_threads"] = int(lib.jaxlm_quant_default_threads())
    return out


def kernel_supports(w: QuantWeight) -> bool:
    """Whether the kernel handles this weight (any format with K a multiple of 32)."""
    return w.fmt in _FMT_CODE and w.K % BLOCK == 0


# ------------------------------------------------------------------------------------------
def _is_cvjp(a) -> bool:
    return hasattr(a, "perturbed") and hasattr(a, "value")


def _value(a):
    return a.value if _is_cvjp(a) else a


def _grad_x(fmt, shape_nin, av, g):
    """g @ W for the dequantized float32 weight (the straight-through transpose)."""
    from jaxlm.quant.formats import dequantize_rows

    shape, n_in, rows_first = shape_nin
    w = QuantWeight(
        qs=av[0], d=av[1], m=av[2] if len(av) > 2 else None, fmt=fmt, shape=shape, n_in=n_in, rows_first=rows_first
    )
    return g.astype(jnp.float32) @ dequantize_rows(w)  # [M, N] @ [N, K]


def kernel_matmul(x: jax.Array, w: QuantWeight, num_threads: int = 0, act_bits: int = 16) -> jax.Array:
    """``x @ W`` with the C++ kernel: x [..., *w.in_shape] -> float32 [..., *w.out_shape].

    ``num_threads=0`` uses the default (``JAXLM_KERNEL_THREADS`` or the number of cores);
    ``act_bits``: 16 (default) or 8, the integer width x is rounded to (module docstring).
    Any number of rows works; the kernel is meant for M <= 16 (decode), XLA's dot wins above.
    """
    if not kernel_supports(w):
        raise QuantError(f"the kernel needs K % {BLOCK} == 0 and a known format; got {w.fmt} K={w.K}.")
    return kernel_matmul_many(x, [w], num_threads=num_threads, act_bits=act_bits)[0]


ACT_BITS = (8, 16)


def check_act_bits(act_bits) -> int:
    """``act_bits`` as an int, or a QuantError naming the allowed values."""
    if isinstance(act_bits, bool) or act_bits not in ACT_BITS:
        raise QuantError(f"act_bits must be 8 or 16 (the integer width activations are rounded to), "
                         f"got {act_bits!r}.")
    return int(act_bits)


def _ffi_apply_many(x2, arrays_list, fmt, ns, num_threads, act_bits):
    if not kernel_available():
        raise QuantError(f"the quantized-matmul kernel is not available: {_load()[1]}.")
    call = jax.ffi.ffi_call(
        _TARGET,
        tuple(jax.ShapeDtypeStruct((x2.shape[0], n), jnp.float32) for n in ns),
        vmap_method="sequential",
    )
    flat = [a for arrays in arrays_list for a in arrays]
    return tuple(call(x2, *flat, fmt=np.int64(_FMT_CODE[fmt]), num_threads=np.int64(num_threads),
                      act_bits=np.int64(act_bits)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _kernel_mm_many(x2, arrays_list, fmt, ns, num_threads, shapes, act_bits):
    return _ffi_apply_many(x2, arrays_list, fmt, ns, num_threads, act_bits)


def _kernel_mm_many_fwd(x2, arrays_list, fmt, ns, num_threads, shapes, act_bits):
    if any(getattr(a, "perturbed", False) for a in jax.tree.leaves(arrays_list, is_leaf=_is_cvjp)):
        raise QuantError(
            "gradients with respect to a quantized weight are not defined (the kernel is "
            "inference only); dequantize the weight (jaxlm.quant.dequantize) to train it."
        )
    av = tuple(tuple(_value(a) for a in arrays) for arrays in arrays_list)
    return _ffi_apply_many(_value(x2), av, fmt, ns, num_threads, act_bits), av


def _kernel_mm_many_bwd(fmt, ns, num_threads, shapes, act_bits, av, gs):
    gx = None  # stays None (a zero cotangent) when no output reaches the loss
    for g, arrays, (fmt_shape, n_in, rows_first) in zip(gs, av, shapes):
        if isinstance(g, jax.custom_derivatives.SymbolicZero):
            continue  # this output does not reach the loss
        part = _grad_x(fmt, (fmt_shape, n_in, rows_first), arrays, g)
        gx = part if gx is None else gx + part
    return gx, tuple(tuple(None for _ in arrays) for arrays in av)


_kernel_mm_many.defvjp(_kernel_mm_many_fwd, _kernel_mm_many_bwd, symbolic_zeros=True)


def can_fuse(ws) -> bool:
    """Whether ``kernel_matmul_many`` takes these weights in one call: 1-8 QuantWeights of one
    kernel format with the same contracted shape."""
    ws = list(ws)
    return (
        0 < len(ws) <= MAX_MULTI
        and all(isinstance(w, QuantWeight) and kernel_supports(w) for w in ws)
        and len({(w.fmt, w.in_shape) for w in ws}) == 1
    )


def kernel_matmul_many(x: jax.Array, ws, num_threads: int = 0, act_bits: int = 16) -> tuple:
    """``(x @ W_1, ..., x @ W_n)`` in one kernel call: x is quantized once and the rows of all
    weights share one thread-pool dispatch (q/k/v, gate/up at decode). Same arithmetic, per
    output, as :func:`kernel_matmul` (bit-identical results); same custom VJP."""
    ws = list(ws)
    if not can_fuse(ws):
        raise QuantError(
            "kernel_matmul_many needs 1-8 quantized weights of one kernel format with the same "
            f"contracted shape; got {[(getattr(w, 'fmt', type(w).__name__), getattr(w, 'shape', None)) for w in ws]}."
        )
    w0 = ws[0]
    lead = x.shape[: x.ndim - w0.n_in]
    if tuple(x.shape[x.ndim - w0.n_in :]) != w0.in_shape:
        raise QuantError(
            f"x of shape {x.shape} does not contract with a weight of shape {w0.shape} "
            f"(contracted axes {w0.in_shape})."
        )
    x2 = jnp.asarray(x, jnp.float32).reshape(-1, w0.K)
    ys = _kernel_mm_many(
        x2, tuple(w.arrays() for w in ws), w0.fmt, tuple(w.N for w in ws), int(num_threads),
        tuple((tuple(w.shape), w.n_in, w.rows_first) for w in ws), check_act_bits(act_bits),
    )
    return tuple(y.reshape(*lead, *w.out_shape) for y, w in zip(ys, ws))


# ------------------------------------------------------------------------------------------
def quantize_activations_np(x: np.ndarray, act_bits: int = 16) -> dict[str, np.ndarray]:
    """Step 1 of the module docstring: {"q", "d", "s"} with q int16 (``act_bits=16``) or int8
    [M, K], d = amax / Q and s = d * sum(q) float32 [M, nb]."""
    x = np.asarray(x, np.float32)
    m, k = x.shape
    if k % BLOCK:
        raise QuantError(f"activations need K % {BLOCK} == 0, got K={k}.")
    qmax = {8: 127, 16: 32767}[check_act_bits(act_bits)]
    blk = x.reshape(m, k // BLOCK, BLOCK)
    amax = np.abs(blk).max(axis=-1)
    d = (amax / np.float32(qmax)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    prod = (blk * inv[..., None]).astype(np.float32)
    q = np.clip(np.rint(prod), -qmax, qmax).astype(np.int16 if act_bits == 16 else np.int8)
    s = (d * q.astype(np.int32).sum(-1).astype(np.float32)).astype(np.float32)
    return {"q": q.reshape(m, k), "d": d, "s": s}


def reference_matmul_np(x: np.ndarray, w: QuantWeight, act_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's arithmetic in numpy: (out float64 [M, N], magnitude scale [M, N]).

    ``x`` is [M, K] float32. Integer block dot products are exact (int64), the scale products are
    float32 as in the kernel, and the sum over blocks is float64. The kernel sums the same
    terms in float32 in its own order (partial integer sums per SIMD lane), so its result lies
    within ``(3 nb + 8) * 2**-23 * scale`` of ``out`` (at most 2 nb terms per output, plus one
    rounding per block where a block sum above 2**24 is converted to float32), with
    ``scale = sum_b |dw_b dx_b| * sum_j |qw_j qx_j|  (+ sum_b |mw_b sx_b|)``, the
    standard float32 summation bound for any order.
    """
    x = np.asarray(x, np.float32)
    xa = quantize_activations_np(x, act_bits)
    m, n, nb = x.shape[0], w.N, w.K // BLOCK
    qw = _values_np(w).reshape(n, nb, BLOCK).astype(np.int64)
    if w.fmt == "int8":
        dw = np.ones((n, nb), np.float32)
    else:
        dw = np.asarray(w.d, np.float32)
    qxb = xa["q"].reshape(m, nb, BLOCK).astype(np.int64)
    isum = np.einsum("mbj,nbj->mnb", qxb, qw)
    iabs = np.einsum("mbj,nbj->mnb", np.abs(qxb), np.abs(qw))
    sc = (dw[None, :, :] * xa["d"][:, None, :]).astype(np.float32)
    terms = sc.astype(np.float64) * isum
    abs_terms = (np.abs(sc).astype(np.float64) * iabs).sum(-1)
    if w.fmt == "q4_1":
        mterm = (np.asarray(w.m, np.float32)[None, :, :] * xa["s"][:, None, :]).astype(np.float32)
        terms = terms + mterm.astype(np.float64)
        abs_terms = abs_terms + np.abs(mterm).astype(np.float64).sum(-1)
    out = terms.sum(-1)
    if w.fmt == "int8":
        s = np.asarray(w.d, np.float32).astype(np.float64)
        out = out * s[None, :]
        abs_terms = abs_terms * np.abs(s)[None, :]
    return out, abs_terms
