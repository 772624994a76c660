"""In-graph offload (engine 2 of the spec, section 1.8): one jitted step, blocks in host memory.

The Transformer blocks are stacked ``[L, ...]`` and placed in ``pinned_host`` memory of
the compute device; one ``lax.scan`` over axis 0 runs the blocks and its body moves each
block's parameters to device memory with ``jax.device_put`` (the JAX docs' "parameter
offloading" pattern; XLA's host-offload passes schedule the copies, and the transpose of
the copy sends the block gradients back to host memory). Embedding and head stay on the
device (small for the presets here). The loop is core's ``run_blocks(scan=True,
fetch=device_put, remat=True)``: the same scan over the stacked blocks with the same
checkpointed body as a hand-written loop, so the copies overlap as before.

Backend support is detected (``scan_offload_support``), never assumed:

* GPU/TPU list ``pinned_host``: real host memory, real H2D copies inside the graph;
* the CPU backend lists ``device``, ``pinned_host`` and ``unpinned_host`` and runs this
  step, but every kind is the same RAM, so nothing is transferred (the spec notes the
  host->device round trip is elided from the lowered program): only the numerics are
  tested on CPU;
* a device without ``pinned_host``: ``ScanOffloadUnsupported`` with the kinds it has
  (use the out-of-graph ``swap.SwapTrainer`` there).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import transformer as tfm
from jaxlm.core.config import ModelConfig
from jaxlm.offload import engines as eng
from jaxlm.offload import stages as stg


class ScanOffloadUnsupported(ValueError):
    """The compute device lists no host memory kind for in-graph offload."""


def scan_offload_support(device: jax.Device) -> tuple[bool, str]:
    """(supported, one-line reason) for in-graph parameter offload on ``device``."""
    kinds = eng.memory_kinds(device)
    if "pinned_host" not in kinds or "device" not in kinds:
        return False, (f"{device} ({device.platform}) lists memory kinds {list(kinds)}: no "
                       "pinned_host/device pair, in-graph offload unavailable")
    if device.platform == "cpu":
        return True, (f"CPU backend lists {list(kinds)} (all the same RAM): the scan-offload "
                      "step runs but transfers nothing")
    return True, f"{device.platform} lists {list(kinds)}: blocks live in pinned_host memory"


def split_stacked(params: Any, cfg: ModelConfig) -> tuple[dict, dict]:
    """Full params -> (rest: embed/head leaves, stacked blocks with leaves [L, ...]).

    The blocks are stacked by ``core.stack_layers`` on the host CPU device (they go to
    ``pinned_host`` next, so the stacked copy never passes through accelerator memory)."""
    stg.check_model(cfg)
    rest = {k: v for k, v in params.items() if k != "layers"}
    with jax.default_device(jax.devices("cpu")[0]):
        stacked = tfm.stack_layers({"layers": params["layers"]})["layers"]
    return rest, stacked


def unstack(stacked: Any, n_layers: int) -> list[Any]:
    """Stacked block tree -> list of per-layer trees (host numpy; ``core.unstack_layers``)."""
    if jax.tree.leaves(stacked)[0].shape[0] != n_layers:
        raise ValueError(f"unstack: stacked blocks have {jax.tree.leaves(stacked)[0].shape[0]} "
                         f"layers, expected n_layers={n_layers}")
    lay = tfm.unstack_layers({"layers": stacked})["layers"]
    return [jax.tree.map(np.asarray, lp) for lp in lay]


def place(rest: dict, stacked: dict, device: jax.Device) -> tuple[Any, Any]:
    """Puts ``rest`` in device memory and ``stacked`` in pinned_host memory of ``device``."""
    ok, why = scan_offload_support(device)
    if not ok:
        raise ScanOffloadUnsupported(why)
    return (jax.device_put(rest, eng.sharding(device, "device")),
            jax.device_put(stacked, eng.sharding(device, "pinned_host")))


def make_scan_offload_step(cfg: ModelConfig, device: jax.Device):
    """``step(rest, stacked, batch) -> (loss, (g_rest, g_stacked))``, jitted.

    ``rest``/``stacked`` as returned by ``place``; ``batch`` {"inputs", "targets"} [B, T].
    The loss equals ``stages.full_loss`` on the merged parameters.
    """
    ok, why = scan_offload_support(device)
    if not ok:
        raise ScanOffloadUnsupported(why)
    dev_sh = eng.sharding(device, "device")

    def fetch(lp):
        return jax.device_put(lp, dev_sh)  # host -> device inside the scan body

    def loss_fn(rest, stacked, batch):
        tokens = batch["inputs"]
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
        x = tfm.embed(rest, cfg, tokens, positions)  # [B, T, D]
        # core's block loop: one lax.scan over the stacked (host) blocks, each block's
        # params fetched to the device in the body, each block rematerialised backward
        x = tfm.run_blocks({"layers": stacked}, cfg, x, positions=positions, scan=True,
                           fetch=fetch, remat=True).x
        return stg.cross_entropy(tfm.unembed(rest, cfg, x), batch["targets"])

    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
