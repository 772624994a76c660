"""Test set-up shared by every test module.

* absl flags are marked parsed so library code that reads absl logging works.
* JAX gets 4 fake CPU devices before any backend starts, so data-parallel and
  sharding tests run in the same process; code must never assume 1 device.
* float32 matmuls at full precision on CPU (the default already); x64 stays off
  except where a test enables it locally with ``jax.experimental.enable_x64``.
* XLA executables go to a persistent compilation cache in a private temporary folder
  (removed when the session ends), so the per-module ``jax.clear_caches()`` below frees
  their memory without making every later module compile the same programs again (the
  eager ops of a tiny model's ``init`` alone took ~10 s to recompile in every module).
  A ``JAX_COMPILATION_CACHE_DIR`` set by the caller is used as is and kept.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # one folder per process (pytest-xdist workers each get their own): no sharing, no locks
    _XLA_CACHE = tempfile.mkdtemp(prefix="jaxlm-tests-xla-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    """Drop every module's compiled executables when the module is done.

    A full run compiles thousands of XLA executables in one process; their JIT memory
    (mappings) is only returned when the executables are freed, and a session-5 clean-clone
    run crashed inside XLA compilation (segfault) about 830 tests in, in a test that passes
    on its own. Later modules recompile what they need.
    """
    yield
    jax.clear_caches()
    gc.collect()
