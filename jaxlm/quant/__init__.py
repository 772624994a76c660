"""Quantized weights for jaxlm: int8 per channel and GGUF Q8_0 / Q4_0 / Q4_1 blocks.

``QuantWeight`` (formats.py) is a pytree standing for a float weight; ``matmul`` (matmul.py)
multiplies by it through XLA (dequantize in the jitted function) or through the C++ kernel
registered with ``jax.ffi`` (kernel.py, csrc/quant_matmul.cc); ``quantize_params`` and
``load_gguf_quantized`` (params.py) build quantized parameter trees.
"""

from jaxlm.quant.formats import (
    BLOCK,
    FORMATS,
    GGUF_FORMATS,
    QuantError,
    QuantWeight,
    dequantize,
    dequantize_np,
    dequantize_rows,
    dequantize_rows_np,
    from_gguf_blocks,
    is_quantized,
    quantize_weight,
    take_rows,
    to_gguf_blocks,
)
from jaxlm.quant.kernel import (
    kernel_available,
    kernel_matmul,
    kernel_matmul_many,
    kernel_status,
    kernel_supports,
    quantize_activations_np,
    reference_matmul_np,
)
from jaxlm.quant.matmul import IMPLS, choose_impl, matmul, matmul_many, matmul_xla
from jaxlm.quant.params import (
    MATMUL_WEIGHTS,
    abstract_weight,
    dequantize_params,
    load_gguf_quantized,
    quantize_params,
    resident_bytes,
)
from jaxlm.quant.quality import compare_logits

__all__ = [
    "BLOCK",
    "FORMATS",
    "GGUF_FORMATS",
    "IMPLS",
    "MATMUL_WEIGHTS",
    "QuantError",
    "QuantWeight",
    "abstract_weight",
    "compare_logits",
    "dequantize_params",
    "load_gguf_quantized",
    "quantize_params",
    "resident_bytes",
    "choose_impl",
    "dequantize",
    "dequantize_np",
    "dequantize_rows",
    "dequantize_rows_np",
    "from_gguf_blocks",
    "is_quantized",
    "kernel_available",
    "kernel_matmul",
    "kernel_matmul_many",
    "kernel_status",
    "kernel_supports",
    "matmul",
    "matmul_many",
    "matmul_xla",
    "quantize_activations_np",
    "quantize_weight",
    "reference_matmul_np",
    "take_rows",
    "to_gguf_blocks",
]
