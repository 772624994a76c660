"""jaxlm: pure-function JAX modules and experiments for recent Transformer papers.

The library never sets global JAX configuration and defines no absl flags;
entrypoints under ``experiments/`` do that.
"""

__version__ = "0.1.0"
