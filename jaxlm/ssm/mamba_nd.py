"""Mamba-ND: 1D Mamba layers over re-flattened 2D/3D token grids (spec Sec. 2).

Each layer flattens the token grid [B, *grid, D] in its own row-major order
(axes outer -> inner, optionally reversed), runs a Mamba mixer on the single
sequence of length prod(grid), and restores the grid. Orders cycle across
layers (``order_scheme="alternating"``):

* 2D: (HW)+, (HW)-, (WH)+, (WH)-                      (W fastest in (HW))
* 3D: (THW)+, (THW)-, (TWH)+, (TWH)-, (WHT)+, (WHT)-

Ablations: ``order_scheme="raster"`` (same order, same direction every
layer), ``"bilayer"`` (raster order, direction alternating), ``"factorised"``
(the release's ``factorization='h_w_t'``: the alternating cycle, but only the
innermost axis of each order forms a sequence; the outer axes fold into the
batch, so every row / column / pixel time-series is scanned independently). In-layer
alternatives (``mixer``): ``"bi"`` (Bi-SSM: one conv+SSM branch per
direction of the layer's order, averaged), ``"nd"`` (ND-SSM: one branch
per ordering of the full cycle, averaged), ``"split"`` (multi-head: the
inner channels are split into one head per ordering). The released
Mamba-ND code stubs the last three out (spec Sec. 2.2); these are our
implementations of the paper's descriptions.

Residual forms: ``"prenorm"`` x + M(LN x); ``"mamba_nd"`` LN x + M(LN x).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ssm.layers import layernorm, layernorm_init, silu, torch_linear_init, trunc_normal
from jaxlm.ssm.mamba import MambaConfig, branch_apply, init_branch


class Order(NamedTuple):
    """A flatten order: ``perm`` lists grid axes outer -> inner; ``reverse`` flips the sequence."""

    perm: tuple[int, ...]
    reverse: bool

    @property
    def name(self) -> str:
        letters = {2: "HW", 3: "THW"}[len(self.perm)]
        return "(" + "".join(letters[a] for a in self.perm) + ")" + ("-" if self.reverse else "+")


def cycle_orders(ndim: int) -> list[Order]:
    """The alternating cycle of spec Sec. 2.1 (4 orders in 2D, 6 in 3D)."""
    if ndim == 1:
        return [Order((0,), False), Order((0,), True)]
    if ndim == 2:
        return [Order((0, 1), False), Order((0, 1), True), Order((1, 0), False),
                Order((1, 0), True)]
    if ndim == 3:
        axes = [(0, 1, 2), (0, 2, 1), (2, 1, 0)]
        return [Order(a, r) for a in axes for r in (False, True)]
    raise ValueError(f"grid must have 1, 2 or 3 axes, got {ndim}")


def layer_orders(ndim: int, depth: int, scheme: str = "alternating") -> list[Order]:
    """Per-layer orders for ``scheme`` in {"alternating", "raster", "bilayer"}."""
    ident = tuple(range(ndim))
    if scheme in ("alternating", "factorised"):
        cyc = cycle_orders(ndim)
        return [cyc[i % len(cyc)] for i in range(depth)]
    if scheme == "raster":
        return [Order(ident, False)] * depth
    if scheme == "bilayer":
        return [Order(ident, bool(i % 2)) for i in range(depth)]
    raise ValueError(
        f"order_scheme must be alternating|raster|bilayer|factorised, got {scheme!r}")


def flatten(x: jax.Array, order: Order) -> jax.Array:
    """[B, *grid, C] -> [B, prod(grid), C] in ``order``."""
    nd = len(order.perm)
    if x.ndim != nd + 2:
        raise ValueError(f"flatten: expected [B, *grid({nd} axes), C], got {tuple(x.shape)}")
    xt = jnp.transpose(x, (0, *(1 + a for a in order.perm), nd + 1))
    seq = xt.reshape(x.shape[0], -1, x.shape[-1])
    return jnp.flip(seq, 1) if order.reverse else seq


def unflatten(seq: jax.Array, order: Order, grid: tuple[int, ...]) -> jax.Array:
    """Inverse of ``flatten``: [B, prod(grid), C] -> [B, *grid, C]."""
    nd = len(order.perm)
    if order.reverse:
        seq = jnp.flip(seq, 1)
    xt = seq.reshape(seq.shape[0], *(grid[a] for a in order.perm), seq.shape[-1])
    inv = [0] * nd
    for i, a in enumerate(order.perm):
        inv[a] = i
    return jnp.transpose(xt, (0, *(1 + i for i in inv), nd + 1))


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class NDConfig:
    """A grid model: patch embed + pos-embed + ``depth`` blocks + LN + head.

    Attributes:
        kind: "mamba_nd" | "vit" | "bilstm" | "s4nd" (the last three in ``baselines``).
        grid: input spatial size, (H, W) or (T, H, W).
        patch: patch / tubelet size per axis.
        in_channels: input channels.
        d_model: width D.
        depth: number of blocks.
        d_state, expand, d_conv: Mamba mixer sizes (also d_state of S4ND).
        order_scheme: "alternating" | "raster" | "bilayer" | "factorised".
        mixer: "mamba" | "bi" | "nd" | "split".
        residual: "prenorm" | "mamba_nd".
        head: "cls" (pool -> LN -> Linear) | "dense" (per-token Linear -> un-patchify).
        pool: token pooling of the "cls" head: "mean" (Mamba-ND, ViT) or "max" (a
            translation-invariant detector; learns much faster at tiny scale).
        n_classes: classes for "cls".
        out_channels: channels per pixel for "dense".
        scan_mode, chunk, scan_inner, unroll: selective-scan implementation.
        n_heads, mlp_ratio: ViT.
        lstm_hidden: BiLSTM hidden size per direction.
        pos_std: std of the learned position embedding's truncated-normal init (0.02 in
            Mamba-ND / ViT). Shared by every ``kind``.
    """

    kind: str = "mamba_nd"
    grid: tuple[int, ...] = (8, 8)
    patch: tuple[int, ...] = (1, 1)
    in_channels: int = 1
    d_model: int = 32
    depth: int = 4
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    order_scheme: str = "alternating"
    mixer: str = "mamba"
    residual: str = "prenorm"
    head: str = "cls"
    pool: str = "mean"
    n_classes: int = 10
    out_channels: int = 1
    scan_mode: str = "sequential"
    chunk: int = 64
    scan_inner: str = "associative"
    unroll: int = 1
    n_heads: int = 4
    mlp_ratio: int = 4
    lstm_hidden: int = 32
    pos_std: float = 0.02

    @property
    def token_grid(self) -> tuple[int, ...]:
        return tuple(g // p for g, p in zip(self.grid, self.patch, strict=True))

    @property
    def mamba(self) -> MambaConfig:
        return MambaConfig(d_model=self.d_model, d_state=self.d_state, expand=self.expand,
                           d_conv=self.d_conv, scan_mode=self.scan_mode, chunk=self.chunk,
                           scan_inner=self.scan_inner, unroll=self.unroll)


def validate(cfg: NDConfig) -> None:
    """Raises ValueError naming the field and the fix."""
    if len(cfg.grid) not in (2, 3) or len(cfg.patch) != len(cfg.grid):
        raise ValueError(f"NDConfig: grid must be (H, W) or (T, H, W) and patch the same length; "
                         f"got grid={cfg.grid}, patch={cfg.patch}")
    for g, p in zip(cfg.grid, cfg.patch, strict=True):
        if p < 1 or g % p:
            raise ValueError(f"NDConfig: patch {cfg.patch} must divide grid {cfg.grid}")
    choices = dict(kind=("mamba_nd", "vit", "bilstm", "s4nd"),
                   order_scheme=("alternating", "raster", "bilayer", "factorised"),
                   mixer=("mamba", "bi", "nd", "split"), residual=("prenorm", "mamba_nd"),
                   head=("cls", "dense"), pool=("mean", "max"))
    for f, ok in choices.items():
        if getattr(cfg, f) not in ok:
            raise ValueError(f"NDConfig.{f}={getattr(cfg, f)!r}; choose one of {ok}")
    if cfg.kind == "mamba_nd" and cfg.mixer == "split":
        k = len(cycle_orders(len(cfg.grid)))
        if (cfg.expand * cfg.d_model) % k:
            raise ValueError(f"NDConfig: mixer='split' needs expand*d_model divisible by {k} "
                             f"(one head per ordering); got {cfg.expand * cfg.d_model}")
    if cfg.order_scheme == "factorised" and cfg.mixer in ("nd", "split"):
        raise ValueError(f"NDConfig: order_scheme='factorised' works with mixer 'mamba' or 'bi' "
                         f"(one scan axis per layer), got mixer={cfg.mixer!r}")
    if cfg.kind == "vit" and cfg.d_model % cfg.n_heads:
        raise ValueError(f"NDConfig: d_model={cfg.d_model} must be divisible by "
                         f"n_heads={cfg.n_heads}")


# ----------------------------------------------------------------------------- embed / heads


def embed_init(key: jax.Array, cfg: NDConfig) -> dict:
    fan_in = math.prod(cfg.patch) * cfg.in_channels
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w": torch_linear_init(k1, fan_in, (fan_in, cfg.d_model)),
        "b": torch_linear_init(k2, fan_in, (cfg.d_model,)),
        "pos_embed": trunc_normal(k3, (*cfg.token_grid, cfg.d_model), cfg.pos_std),
    }


def patchify(x: jax.Array, patch: tuple[int, ...]) -> jax.Array:
    """[B, *grid, C] -> [B, *token_grid, prod(patch)*C]."""
    nd = len(patch)
    b, grid, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    shp = [b]
    for g, p in zip(grid, patch, strict=True):
        shp += [g // p, p]
    xr = x.reshape(*shp, c)
    outer = [1 + 2 * i for i in range(nd)]
    inner = [2 + 2 * i for i in range(nd)]
    xr = jnp.transpose(xr, (0, *outer, *inner, 2 * nd + 1))
    return xr.reshape(b, *(g // p for g, p in zip(grid, patch, strict=True)), -1)


def unpatchify(t: jax.Array, patch: tuple[int, ...], channels: int) -> jax.Array:
    """Inverse of ``patchify``: [B, *token_grid, prod(patch)*C] -> [B, *grid, C]."""
    nd = len(patch)
    b, tg = t.shape[0], t.shape[1:-1]
    xr = t.reshape(b, *tg, *patch, channels)
    perm = [0]
    for i in range(nd):
        perm += [1 + i, 1 + nd + i]
    xr = jnp.transpose(xr, (*perm, 2 * nd + 1))
    return xr.reshape(b, *(g * p for g, p in zip(tg, patch, strict=True)), channels)


def embed_apply(p: dict, cfg: NDConfig, x: jax.Array) -> jax.Array:
    want = (*cfg.grid, cfg.in_channels)
    if tuple(x.shape[1:]) != want:
        raise ValueError(f"input must be [B, {', '.join(map(str, want))}] for this config, got "
                         f"{tuple(x.shape)}")
    return patchify(x, cfg.patch) @ p["w"] + p["b"] + p["pos_embed"]


def head_init(key: jax.Array, cfg: NDConfig) -> dict:
    out = cfg.n_classes if cfg.head == "cls" else math.prod(cfg.patch) * cfg.out_channels
    return {"norm": layernorm_init(cfg.d_model),
            "w": trunc_normal(key, (cfg.d_model, out), 0.02),
            "b": jnp.zeros((out,), jnp.float32)}


def head_apply(p: dict, cfg: NDConfig, h: jax.Array) -> jax.Array:
    """h [B, *token_grid, D] -> logits [B, n_classes] or fields [B, *grid, out_channels]."""
    if cfg.head == "cls":
        tokens = h.reshape(h.shape[0], -1, h.shape[-1])
        pooled = tokens.max(1) if cfg.pool == "max" else tokens.mean(1)
        return layernorm(p["norm"], pooled) @ p["w"] + p["b"]
    return unpatchify(layernorm(p["norm"], h) @ p["w"] + p["b"], cfg.patch, cfg.out_channels)


# ----------------------------------------------------------------------------- ND Mamba layer


def _mixer_orders(cfg: NDConfig, layer_order: Order) -> list[Order]:
    if cfg.mixer == "mamba":
        return [layer_order]
    if cfg.mixer == "bi":
        return [layer_order, Order(layer_order.perm, not layer_order.reverse)]
    return cycle_orders(len(cfg.grid))  # "nd" and "split"


def nd_layer_init(key: jax.Array, cfg: NDConfig, layer_order: Order) -> dict:
    mc = cfg.mamba
    d, di = cfg.d_model, mc.d_inner
    orders = _mixer_orders(cfg, layer_order)
    d_branch = di // len(orders) if cfg.mixer == "split" else di
    k_in, k_out, *k_br = jax.random.split(key, 2 + len(orders))
    return {
        "norm": layernorm_init(d),
        "in_proj": torch_linear_init(k_in, d, (d, 2 * di)),
        "out_proj": torch_linear_init(k_out, di, (di, d)),
        "branches": [init_branch(k, mc, d_branch) for k in k_br],
    }


def order_perm(grid: tuple[int, ...], order: Order) -> np.ndarray:
    """Raster indices in the order's sequence: ``flatten(x, order) == x_raster[:, perm]``."""
    ids = np.arange(math.prod(grid)).reshape(*grid)
    return np.transpose(ids, order.perm).reshape(-1)[:: -1 if order.reverse else 1].copy()


def layer_perms(cfg: NDConfig, layer_order: Order) -> tuple[np.ndarray, np.ndarray]:
    """(perm, inverse) per branch of one layer: int32 [n_branch, L] each."""
    perms = np.stack([order_perm(cfg.token_grid, o) for o in _mixer_orders(cfg, layer_order)])
    return perms.astype(np.int32), np.argsort(perms, axis=1).astype(np.int32)


def nd_layer_seq_apply(p: dict, cfg: NDConfig, xs: jax.Array, perms, invs,
                       seg: int | None = None) -> jax.Array:
    """One Mamba-ND layer on raster-flattened tokens xs [B, L, D].

    Each branch gathers the tokens into its order (``perms[i]``), runs conv + SSM on
    that single sequence, and scatters back (``invs[i]``). Perms may be traced
    values, so identical layers with different orders can share one ``lax.scan``.
    ``seg`` (static, factorised scheme): the ordered sequence is cut into independent
    segments of this length (the innermost axis), folded into the batch.
    """
    h = layernorm(p["norm"], xs)
    xi, z = jnp.split(h @ p["in_proj"], 2, axis=-1)  # [B, L, Di]
    n_br = len(p["branches"])
    width = xi.shape[-1] // n_br
    mc = cfg.mamba
    outs = []
    for i, bp in enumerate(p["branches"]):
        xb = xi[..., i * width:(i + 1) * width] if cfg.mixer == "split" else xi
        xg = jnp.take(xb, perms[i], axis=1)  # [B, L, w]
        if seg is not None:  # [B * L/seg, seg, w]: every row / column scanned on its own
            xg = xg.reshape(-1, seg, xg.shape[-1])
        y = branch_apply(bp, mc, xg).reshape(xb.shape[0], -1, xg.shape[-1])
        outs.append(jnp.take(y, invs[i], axis=1))
    y = jnp.concatenate(outs, -1) if cfg.mixer == "split" else sum(outs) / n_br
    y = (y * silu(z)) @ p["out_proj"]
    return (xs if cfg.residual == "prenorm" else h) + y


def nd_layer_apply(p: dict, cfg: NDConfig, x: jax.Array, layer_order: Order) -> jax.Array:
    """One Mamba-ND layer on a token grid x [B, *grid, D] (grid must be cfg.token_grid)."""
    perms, invs = layer_perms(cfg, layer_order)
    xs = x.reshape(x.shape[0], -1, x.shape[-1])
    seg = cfg.token_grid[layer_order.perm[-1]] if cfg.order_scheme == "factorised" else None
    return nd_layer_seq_apply(p, cfg, xs, perms, invs, seg).reshape(x.shape)


# ----------------------------------------------------------------------------- full model


def init(key: jax.Array, cfg: NDConfig) -> dict:
    """Parameters of a grid model of any ``cfg.kind``."""
    validate(cfg)
    from jaxlm.ssm import baselines

    k_emb, k_head, *k_layers = jax.random.split(key, cfg.depth + 2)
    if cfg.kind == "mamba_nd":
        orders = layer_orders(len(cfg.grid), cfg.depth, cfg.order_scheme)
        blocks = [nd_layer_init(k, cfg, o) for k, o in zip(k_layers, orders, strict=True)]
    else:
        blocks = [baselines.block_init(k, cfg, i) for i, k in enumerate(k_layers)]
    return {"embed": embed_init(k_emb, cfg), "blocks": blocks, "head": head_init(k_head, cfg)}


def apply(params: dict, cfg: NDConfig, x: jax.Array) -> jax.Array:
    """x [B, *grid, in_channels] -> logits [B, n_classes] or fields [B, *grid, out_channels].

    Blocks are stacked and run with one ``lax.scan`` over depth (flatten orders enter as
    gather indices), so compile time does not grow with depth.
    """
    from jaxlm.ssm import baselines

    h = embed_apply(params["embed"], cfg, x)  # [B, *token_grid, D]
    tg = h.shape[1:-1]
    hs = h.reshape(h.shape[0], -1, h.shape[-1])  # raster order [B, L, D]
    orders = layer_orders(len(cfg.grid), cfg.depth, cfg.order_scheme)
    if cfg.kind == "mamba_nd":
        pi = [layer_perms(cfg, o) for o in orders]
        layer_fn = lambda bp, hs, perm, inv: nd_layer_seq_apply(bp, cfg, hs, perm, inv)
    else:
        pi = [baselines.layer_perms(cfg, o) for o in orders]
        layer_fn = lambda bp, hs, perm, inv: baselines.block_seq_apply(bp, cfg, hs, tg, perm,
                                                                       inv)
    if cfg.kind == "mamba_nd" and cfg.order_scheme == "factorised":
        # segment lengths differ per layer when the grid is not a cube: a Python loop
        for bp, o, (perm, inv) in zip(params["blocks"], orders, pi, strict=True):
            seg = tg[o.perm[-1]]
            hs = nd_layer_seq_apply(bp, cfg, hs, jnp.asarray(perm), jnp.asarray(inv), seg)
        return head_apply(params["head"], cfg, hs.reshape(h.shape))
    perms = jnp.asarray(np.stack([a for a, _ in pi]))  # [depth, n_branch, L]
    invs = jnp.asarray(np.stack([b for _, b in pi]))
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params["blocks"])

    def body(hs, layer):
        bp, perm, inv = layer
        return layer_fn(bp, hs, perm, inv), None

    hs, _ = jax.lax.scan(body, hs, (stacked, perms, invs))
    return head_apply(params["head"], cfg, hs.reshape(h.shape))


def param_count(cfg: NDConfig) -> int:
    """Parameter count without allocating (via ``jax.eval_shape``)."""
    shapes = jax.eval_shape(lambda k: init(k, cfg), jax.random.key(0))
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)))


def match_width(cfg: NDConfig, target: int, field: str = "d_model", step: int = 4,
                lo: int = 4, hi: int = 1024) -> NDConfig:
    """Returns ``cfg`` with ``field`` (a width) chosen so the parameter count is closest to
    ``target`` (widths in multiples of ``step``)."""
    best, best_err = cfg, None
    for w in range(lo, hi + 1, step):
        c = dataclasses.replace(cfg, **{field: w})
        try:
            validate(c)
        except ValueError:
            continue
        n = param_count(c)
        err = abs(n - target)
        if best_err is None or err < best_err:
            best, best_err = c, err
        if n > target:
            break
    return best
