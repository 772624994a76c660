"""``matmul(x, w)``: one product for float and quantized weights, choosing the implementation.

* float ``w``: ``x @ w`` contracting ``x``'s last ``n_in`` axes (``jnp.tensordot``).
* :class:`QuantWeight`: ``impl="xla"`` dequantizes inside the jitted function and uses XLA's
  dot (any backend, any M, differentiable in ``x`` and in the float scales); ``impl="kernel"``
  calls the C++ kernel (CPU only; x rounded to int16 or int8 blocks, see ``jaxlm.quant.kernel``);
  ``impl="auto"`` takes the kernel on CPU when it is built, the weight supports it and
  ``x`` has at most ``MAX_KERNEL_ROWS`` rows (decode), and XLA otherwise (prefill is compute
  bound, where XLA's f32 GEMM is faster than re-quantizing activations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.quant import kernel as _kernel
from jaxlm.quant.formats import QuantError, QuantWeight, dequantize_rows

IMPLS = ("auto", "xla", "kernel")


def matmul_xla(x: jax.Array, w: QuantWeight, dtype=jnp.float32) -> jax.Array:
    """Pure-XLA ``x @ W``: the weight is dequantized (in ``dtype``) inside the traced function."""
    if tuple(x.shape[x.ndim - w.n_in :]) != w.in_shape:
        raise QuantError(
            f"x of shape {x.shape} does not contract with a weight of shape {w.shape} "
            f"(contracted axes {w.in_shape})."
        )
    lead = x.shape[: x.ndim - w.n_in]
    x2 = x.reshape(-1, w.K).astype(dtype)
    rows = dequantize_rows(w, dtype)  # [N, K]
    y = jax.lax.dot_general(x2, rows, (((1,), (1,)), ((), ())), preferred_element_type=dtype)
    return y.reshape(*lead, *w.out_shape)


def _on_cpu(x) -> bool:
    try:
        devs = x.devices() if hasattr(x, "devices") and not isinstance(x, jax.core.Tracer) else None
    except Exception:
        devs = None
    if devs:
        return all(d.platform == "cpu" for d in devs)
    return jax.default_backend() == "cpu"


def choose_impl(x, w, impl: str = "auto") -> str:
    """The implementation ``matmul`` will use for these shapes ("xla" or "kernel")."""
    if impl not in IMPLS:
        raise QuantError(f"impl must be one of {IMPLS}, got {impl!r}.")
    if impl != "auto":
        return impl
    rows = 1
    for s in x.shape[: x.ndim - w.n_in]:
        rows *= int(s)
    if (
        _kernel.kernel_available()
        and _kernel.kernel_supports(w)
        and rows <= _kernel.MAX_KERNEL_ROWS
        and _on_cpu(x)
    ):
        return "kernel"
    return "xla"


def matmul(x: jax.Array, w, *, n_in: int = 1, impl: str = "auto", num_threads: int = 0,
           act_bits: int = 16) -> jax.Array:
    """``x @ w`` for a float array or a :class:`QuantWeight` (see module docstring).

    For a float ``w``, ``n_in`` is the number of its leading axes contracted with the trailing
    axes of ``x``; a QuantWeight carries its own ``n_in``. ``act_bits``: the integer
    width (16 or 8) the kernel rounds activations to (see ``jaxlm.quant.kernel``).
    """
    if not isinstance(w, QuantWeight):
        return jnp.tensordot(x, w.astype(x.dtype), axes=n_in)
    which = choose_impl(x, w, impl)
    if which == "kernel":
        return _kernel.kernel_matmul(x, w, num_threads=num_threads, act_bits=act_bits).astype(x.dtype)
    return matmul_xla(x, w).astype(x.dtype)


def matmul_many(x: jax.Array, ws, *, impl: str = "auto", num_threads: int = 0,
                act_bits: int = 16) -> tuple:
    """``tuple(matmul(x, w) for w in ws)`` for quantized weights sharing ``x``, in one kernel
    call when every product would take the kernel (same format and contracted shape): x is
    quantized once and one thread-pool dispatch covers all rows. Results equal the separate
    calls bit for bit; otherwise (XLA path, mixed formats) the products run one by one."""
    ws = list(ws)
    if (
        len(ws) > 1
        and _kernel.can_fuse(ws)
        and all(choose_impl(x, w, impl) == "kernel" for w in ws)
    ):
        return tuple(y.astype(x.dtype) for y in _kernel.kernel_matmul_many(
            x, ws, num_threads=num_threads, act_bits=act_bits))
    return tuple(matmul(x, w, impl=impl, num_threads=num_threads, act_bits=act_bits) for w in ws)
