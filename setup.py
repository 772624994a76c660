"""Build script: package metadata lives in setup.cfg; this file adds the optional C++ kernel.

The extension ``jaxlm.quant._kernel`` (csrc/quant_matmul.cc) is an XLA FFI library for the
quantized CPU matmul (see jaxlm/quant/kernel.py). It is compiled at install time
(``pip install -e .`` / ``pip install .``) or in place for development:

    python setup.py build_ext --inplace

The XLA FFI headers come from ``jax.ffi.include_dir()`` (jax + jaxlib are build requirements
in pyproject.toml). The extension is optional: when the headers or a C++17 compiler are
missing the build prints a warning and jaxlm installs without it; the pure-XLA path is used.
The AVX2/FMA/F16C code is compiled through per-function target attributes (the equivalent
of ``-mavx2 -mfma -mf16c`` for those functions only, never ``-march=native``) so that the
scalar fallback stays runnable on any x86-64 CPU; the choice is made at run time.
"""

import os
import platform
import sys

from setuptools import Extension, setup


def _ffi_include_dir():
    try:
        import jax.ffi

        return jax.ffi.include_dir()
    except Exception as e:  # no jax in the build environment
        print(f"jaxlm: skipping the quantized-matmul kernel (jax.ffi unavailable: {e})", file=sys.stderr)
        return None


def _extensions():
    if os.environ.get("JAXLM_NO_KERNEL_BUILD", "") not in ("", "0"):
        print("jaxlm: JAXLM_NO_KERNEL_BUILD set; not building the kernel", file=sys.stderr)
        return []
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        print("jaxlm: the quantized-matmul kernel targets x86-64 POSIX; not building it", file=sys.stderr)
        return []
    inc = _ffi_include_dir()
    if inc is None:
        return []
    return [
        Extension(
            "jaxlm.quant._kernel",
            sources=["csrc/quant_matmul.cc"],
            include_dirs=[inc],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]


setup(ext_modules=_extensions())
