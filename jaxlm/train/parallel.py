"""Data-parallel / FSDP training over a ``("data", "fsdp")`` mesh, two ways.

* GSPMD (primary): ``gspmd_step`` = ``jax.jit(step, in_shardings, out_shardings,
  donate_argnums=0)``. Parameter (and optimizer-moment) shardings come from
  the logical axis names ``jaxlm.core.params.param_spec`` declares per weight and a
  rules table mapping them to mesh axes;
  with ``mesh_fsdp > 1`` the ``embed`` (d_model) dimension is sharded over
  ``fsdp`` (ZeRO-3 style), the batch always over ``("data", "fsdp")``.
* Explicit collectives: ``shard_map_step`` = ``jax.jit(jax.shard_map(step))``
  with the state replicated and ``lax.pmean`` inside the step over the batch axes.

Both compute the same update (tested on 4 fake CPU devices). Multi-host:
``init_distributed`` wraps ``jax.distributed.initialize``; each process feeds its
rows of the global batch with ``global_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxlm.core.config import ModelConfig
from jaxlm.core.params import infer_config, logical_axes
from jaxlm.train.state import TrainState

BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. FSDP shards the model width; everything else replicated.
DP_RULES: dict[str, str | None] = {}
FSDP_RULES: dict[str, str | None] = {"embed": "fsdp"}


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None):
    """A ``("data", "fsdp")`` mesh; ``data=-1`` takes all devices left after ``fsdp``.

    Raises:
        ValueError: the shape does not match the device count.
    """
    devices = list(devices) if devices is not None else jax.devices()
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh_fsdp={fsdp} does not divide the {n} devices; pick a divisor")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(
            f"mesh {data}x{fsdp} (mesh_data x mesh_fsdp) needs {data * fsdp} devices, found {n}; "
            "set mesh_data=-1 to use all of them"
        )
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def _keys(path) -> tuple:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(k.key)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
        elif isinstance(k, jax.tree_util.GetAttrKey):
            out.append(k.name)
        else:
            out.append(str(k))
    return tuple(out)


def axes_by_path(model: ModelConfig) -> dict[tuple, tuple[str | None, ...]]:
    """{weight path (keys): logical axes} from ``param_spec(model)``."""
    flat = jax.tree_util.tree_flatten_with_path(
        logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))[0]
    return {_keys(p): ax for p, ax in flat}


def _axes_of(path, table: dict[tuple, tuple]) -> tuple | None:
    """Logical axes of a leaf whose path ends with a weight's path (a parameter, or an
    optimizer moment mirroring the params tree), else None."""
    keys = _keys(path)
    for start in range(len(keys)):
        hit = table.get(keys[start:])
        if hit is not None:
            return hit
    return None


def logical_spec(axes: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh,
                 rules: dict[str, str | None]) -> P:
    """PartitionSpec of one leaf from its logical ``axes``, mapped through ``rules``.

    Leaves without axes, whose rank does not match them (scalars, Adafactor's factored
    moments) or whose dimension the mesh axis does not divide stay replicated along
    that dimension.
    """
    if axes is None or len(axes) != len(shape):
        return P()
    spec = []
    for dim, name in zip(shape, axes, strict=True):
        mesh_axis = rules.get(name) if name else None
        if mesh_axis is not None and dim % mesh.shape[mesh_axis] == 0:
            spec.append(mesh_axis)
        else:
            spec.append(None)
    return P(*spec)


def tree_shardings(tree: Any, mesh, rules: dict[str, str | None],
                   model: ModelConfig) -> Any:
    """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs) holding
    ``model``'s params (at any depth, e.g. a train state's params and moments)."""
    table = axes_by_path(model)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(
            mesh, logical_spec(_axes_of(path, table), tuple(x.shape), mesh, rules)),
        tree,
    )


def state_shardings(abstract: TrainState, mesh, fsdp: bool,
                    model: ModelConfig | None = None) -> TrainState:
    """Shardings of the whole train state; optimizer moments follow their parameters.

    Logical axes come from ``param_spec(model)``; without ``model`` the config is read
    from the params' shapes (``jaxlm.core.params.infer_config``). A params tree that is
    no ``jaxlm.core`` model is replicated.
    """
    if model is None:
        try:
            model = infer_config(abstract.params)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            return jax.tree.map(lambda _: replicated(mesh), abstract)
    return tree_shardings(abstract, mesh, FSDP_RULES if fsdp else DP_RULES, model)


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dim split over all mesh axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh, grad_accum: int = 1) -> None:
    """Raises ValueError unless every device gets whole micro-batch rows."""
    n = math.prod(mesh.shape.values())
    if batch_size % (n * grad_accum):
        raise ValueError(
            f"data.batch_size={batch_size} is not divisible by {n} devices x grad_accum "
            f"{grad_accum} = {n * grad_accum}; use a multiple of {n * grad_accum}"
        )
    pc = jax.process_count()
    if batch_size % pc:
        raise ValueError(f"data.batch_size={batch_size} is not divisible by {pc} processes")


def gspmd_step(step_fn, mesh, state_sh: TrainState):
    """``jax.jit`` with state/batch shardings and the state donated (the primary path)."""
    repl = replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sharding(mesh), repl),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )


def shard_map_step(step_fn, mesh):
    """``jax.jit(jax.shard_map(step_fn))``: state replicated, batch split over the batch axes.

    ``step_fn`` must be built with ``make_train_step(..., axis_name=BATCH_AXES)``
    so gradients and metrics are averaged with ``lax.pmean``.
    """
    mapped = jax.shard_map(
        step_fn, mesh=mesh, in_specs=(P(), P(BATCH_AXES), P()), out_specs=(P(), P()),
    )
    return jax.jit(mapped, donate_argnums=0)


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch -> global arrays sharded over the batch axes.

    Single-process: ``local`` is the whole batch (``device_put`` with the sharding).
    Multi-process: each process passes its contiguous slice of rows (see
    ``process_rows``), in process order.
    """
    sh = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sh)
    return {k: jax.make_array_from_process_local_data(sh, v) for k, v in local.items()}


def process_rows(batch_size: int) -> slice:
    """The rows of a global batch this process feeds."""
    pc, pi = jax.process_count(), jax.process_index()
    per = batch_size // pc
    return slice(pi * per, (pi + 1) * per)


def init_distributed(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None) -> bool:
    """``jax.distributed.initialize`` when a coordinator is given; returns whether it ran.

    On Cloud TPU pods and SLURM, ``jax.distributed.initialize()`` with no
    arguments discovers everything; pass ``coordinator_address="auto"`` for that.
    CPU collectives (gloo) must be chosen by the caller before JAX starts.
    """
    if not coordinator_address:
        return False
    if coordinator_address == "auto":
        jax.distributed.initialize()
        return True
    if num_processes is None or process_id is None:
        raise ValueError(
            "--coordinator_address needs --num_processes and --process_id (or use 'auto' on "
            "SLURM / TPU pods)"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id,
    )
    return True
