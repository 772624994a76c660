"""Cost model: Atom (swap-scheduled full replicas) vs a SWARM-like decentralized pipeline.

Implements section 4 of ``shared/specs/atom.md`` as plain Python functions over
frozen dataclasses, so the same parameters drive the simulator, the planner
(``jaxlm.offload.planner``) and the predictions checked against real runs.

Units: seconds, bytes, bytes/s, FLOP/s. Network bandwidths are given in bits/s
(``mbps`` helper) because that is how links are specified.

Main entry points:
  * ``atom_peer_time(model, hw, ...)`` -- section 4.3, one peer's iteration.
  * ``atom_throughput(...)`` / ``swarm_throughput(...)`` -- sections 4.4 / 4.5.
  * ``scenario_table(name)`` -- the spec's section 4.7 tables (A, B, C, C-deep).
  * ``sweep(...)`` -- speedup over a bandwidth grid (where the 20x appears).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def mbps(x: float) -> float:
    """Megabit/s -> bytes/s."""
    return x * 1e6 / 8.0


def gbps(x: float) -> float:
    """Gigabit/s -> bytes/s."""
    return x * 1e9 / 8.0


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """A GPT-2/3-style decoder (section 4.2).

    Attributes:
        name: label.
        n_layers, d_model, n_heads: shape.
        seq_len, vocab: context ``s`` and vocabulary ``V``.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int = 2048
    vocab: int = 50257

    @property
    def layer_params(self) -> float:
        """``P_l = 12 d^2 + 13 d``."""
        d = self.d_model
        return 12 * d * d + 13 * d

    @property
    def embed_params(self) -> float:
        """Token + position embedding ``V d + s d`` (tied LM head)."""
        return self.vocab * self.d_model + self.seq_len * self.d_model

    @property
    def n_params(self) -> float:
        return self.n_layers * self.layer_params + self.embed_params

    @property
    def layer_flops_per_token(self) -> float:
        """Forward FLOPs per token per block ``f = 24 d^2 + 4 s d``."""
        d = self.d_model
        return 24 * d * d + 4 * self.seq_len * d

    @property
    def head_flops_per_token(self) -> float:
        """LM head forward FLOPs per token ``2 V d``."""
        return 2 * self.vocab * self.d_model


GPT3 = {
    "1.3B": GPTConfig("1.3B", 24, 2048, 24),
    "2.7B": GPTConfig("2.7B", 32, 2560, 32),
    "6.7B": GPTConfig("6.7B", 32, 4096, 32),
    "13B": GPTConfig("13B", 40, 5140, 40),
}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One peer's accelerator and host link (section 4.1 symbols).

    Attributes:
        flops: effective accelerator FLOP/s ``F``.
        h2d, d2h: achieved host<->device bandwidth (bytes/s).
        copy_engines: ``E``; 1 serialises H2D and D2H.
        mem_bytes: accelerator memory ``M_gpu``.
        reserve: fraction of memory kept free (workspace, fragmentation).
    """

    flops: float = 25e12
    h2d: float = 12e9
    d2h: float = 12e9
    copy_engines: int = 2
    mem_bytes: float = 24e9
    reserve: float = 0.0


@dataclasses.dataclass(frozen=True)
class Network:
    """Links between peers.

    Attributes:
        bandwidth: link bandwidth ``B_net`` in bytes/s.
        efficiency: protocol efficiency ``eta``.
        act_cap: cap on the pipeline's activation path (bytes/s; Atom's 610 Mb/s), or None.
        latency: per-hop latency ``lambda`` (s).
        allreduce_latency_mult: ``c`` in ``T_sync = ... + c * lambda``.
    """

    bandwidth: float
    efficiency: float = 0.6
    act_cap: float | None = None
    latency: float = 1e-4
    allreduce_latency_mult: float = 0.0


@dataclasses.dataclass(frozen=True)
class AtomSettings:
    """Atom's knobs.

    Attributes:
        layers_per_sub: transformer blocks per sub-model (uniform split).
        micro_batch: ``b`` sequences per micro-batch.
        micro_per_swap: ``m`` micro-batches per swap.
        beta_w, beta_g: bytes/element of swapped weights and gradients.
        beta_c: bytes/element of the all-reduce payload.
        recompute: ``r`` (1: recompute inside each sub-model in backward).
        global_batch: ``B_g`` sequences per synchronisation.
        sync: "blocking" (T_compute + T_sync), "overlap" (max of the two, one
            step stale) or "local_sgd" (sync amortised over ``local_steps``).
        local_steps: ``H`` for local_sgd.
    """

    layers_per_sub: int = 2
    micro_batch: int = 1
    micro_per_swap: int = 1
    beta_w: float = 2.0
    beta_g: float = 2.0
    beta_c: float = 2.0
    recompute: int = 1
    global_batch: int = 512
    sync: str = "blocking"
    local_steps: int = 1


@dataclasses.dataclass(frozen=True)
class SwarmSettings:
    """SWARM / pipeline baseline knobs.

    Attributes:
        stages: ``S``; None = smallest S whose stage state fits the GPU.
        beta_a: activation bytes/element (2 fp16, 4 fp32).
        beta_c: gradient-averaging payload bytes/element.
        beta_state: training state bytes per parameter (16: fp32 w, g, Adam m, v).
        overlap: whether communication overlaps compute.
        flush_microbatches: M for a GPipe flush factor (M + S - 1) / M; None = no flush.
        recompute: ``r``.
        state_mem_fraction: share of GPU memory a stage's training state may use (the rest
            holds in-flight activations and workspace). 0.5 reproduces the spec's 4.7 tables
            (their S: 1.3B -> 2, 2.7B -> 4, 6.7B -> 8, 13B -> 8); any value in [0.45, 0.87) does.
    """

    stages: int | None = None
    beta_a: float = 2.0
    beta_c: float = 2.0
    beta_state: float = 16.0
    overlap: bool = True
    flush_microbatches: int | None = None
    recompute: int = 1
    state_mem_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class PeerTime:
    """Breakdown of one Atom peer iteration (per ``m`` micro-batches)."""

    t_fwd: float
    t_bwd: float
    t_peer: float
    compute: float
    eta_swap: float
    peak_weight_bytes: float


def submodel_costs(
    compute_fwd: Sequence[float], load: Sequence[float], store: Sequence[float],
    *, recompute: int = 1, copy_engines: int = 2, bwd_compute: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Forward and backward time of a swap schedule (section 4.3 formulas).

    Args:
        compute_fwd: ``Cf_k`` per sub-model (s).
        load: ``H_k`` per sub-model (s).
        store: ``D_k`` per sub-model (s).
        recompute: ``r``; backward is ``(2 + r) * Cf_k`` unless ``bwd_compute`` is given.
        copy_engines: ``E``.
        bwd_compute: measured ``Cb_k`` (overrides the ``(2 + r)`` rule).

    Returns:
        (T_fwd, T_bwd).
    """
    k_n = len(compute_fwd)
    if not (len(load) == len(store) == k_n) or k_n == 0:
        raise ValueError(
            "submodel_costs: compute_fwd, load and store need the same non-zero length")
    if bwd_compute is not None:
        cb = list(bwd_compute)
    else:
        cb = [(2 + recompute) * c for c in compute_fwd]
    h = list(load) + [0.0]
    t_fwd = h[0] + sum(max(compute_fwd[k], h[k + 1]) for k in range(k_n))
    t_bwd = 0.0
    for k in range(k_n - 1, -1, -1):
        h_prev = load[k - 1] if k > 0 else 0.0
        d_next = store[k + 1] if k + 1 < k_n else 0.0
        io = max(h_prev, d_next) if copy_engines >= 2 else h_prev + d_next
        t_bwd += max(cb[k], io)
    t_bwd += store[0]
    return t_fwd, t_bwd


def atom_peer_time(model: GPTConfig, hw: Hardware, st: AtomSettings) -> PeerTime:
    """Section 4.3: one peer's forward + backward over its sub-models.

    The embedding goes with the first sub-model; the LM head FLOPs (tied weights)
    with the last, which stays resident for backward.
    """
    lps = st.layers_per_sub
    if lps < 1:
        raise ValueError(f"layers_per_sub must be >= 1, got {lps}")
    tokens = st.micro_per_swap * st.micro_batch * model.seq_len
    groups = [min(lps, model.n_layers - i) for i in range(0, model.n_layers, lps)]
    params = [g * model.layer_params for g in groups]
    params[0] += model.embed_params
    flops = [g * model.layer_flops_per_token * tokens for g in groups]
    flops[-1] += model.head_flops_per_token * tokens
    cf = [f / hw.flops for f in flops]
    load = [st.beta_w * p / hw.h2d for p in params]
    store = [st.beta_g * p / hw.d2h for p in params]
    t_fwd, t_bwd = submodel_costs(cf, load, store, recompute=st.recompute,
                                  copy_engines=hw.copy_engines)
    compute = sum(cf) * (3 + st.recompute)
    peak = max(st.beta_w * (params[k] + (params[k + 1] if k + 1 < len(params) else 0))
               for k in range(len(params)))
    t_peer = t_fwd + t_bwd
    return PeerTime(t_fwd, t_bwd, t_peer, compute, compute / t_peer, peak)


def allreduce_time(n_peers: int, n_params: float, beta: float, net: Network) -> float:
    """Ring/butterfly all-reduce time ``2 (N-1)/N * P beta / (eta B) + c lambda``."""
    if n_peers <= 1:
        return 0.0
    return (2.0 * (n_peers - 1) / n_peers * n_params * beta / (net.efficiency * net.bandwidth)
            + net.allreduce_latency_mult * net.latency)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Cluster throughput in sequences/s, with the sync fraction of a step."""

    seq_per_s: float
    step_time: float
    sync_time: float
    sync_fraction: float


def atom_throughput(model: GPTConfig, hw: Hardware, net: Network, st: AtomSettings,
                    n_peers: int) -> Throughput:
    """Section 4.4: ``X_atom = B_g / T_step``."""
    pt = atom_peer_time(model, hw, st)
    seqs_per_iter = n_peers * st.micro_batch * st.micro_per_swap
    t_comp = st.global_batch / seqs_per_iter * pt.t_peer
    t_sync = allreduce_time(n_peers, model.n_params, st.beta_c, net)
    if st.sync == "blocking":
        t_step = t_comp + t_sync
    elif st.sync == "overlap":
        t_step = max(t_comp, t_sync)
    elif st.sync == "local_sgd":
        t_sync = t_sync / max(st.local_steps, 1)
        t_step = t_comp + t_sync
    else:
        raise ValueError(f"sync must be blocking, overlap or local_sgd, got {st.sync!r}")
    exposed = t_step - t_comp
    return Throughput(st.global_batch / t_step, t_step, t_sync, exposed / t_step)


def pipeline_microbatch_time(stage_compute: float, act_bytes: float, n_stages: int,
                             net: Network, *, overlap: bool, comm_factor: float = 2.0) -> float:
    """Section 4.5 ``t_mb``: one micro-batch through a stage, forward + backward.

    ``T_comm = 2 A / B_eff`` (a middle stage's egress: activation forward, gradient back;
    ``B_eff = min(eta B, cap)``); ``comm_factor = 1`` for a 2-stage pipeline, whose stages
    send only one of the two per micro-batch. ``max(C_s, T_comm)`` when communication
    overlaps compute, else ``C_s + T_comm + 2 lambda``.
    """
    if n_stages <= 1:
        return stage_compute
    b_eff = net.efficiency * net.bandwidth
    if net.act_cap is not None:
        b_eff = min(b_eff, net.act_cap)
    t_comm = comm_factor * act_bytes / b_eff
    if overlap:
        return max(stage_compute, t_comm)
    return stage_compute + t_comm + 2 * net.latency


def gpipe_step_time(stage_compute: float, act_bytes: float, n_stages: int, micro: int,
                    net: Network, *, overlap: bool = False, comm_factor: float = 2.0) -> float:
    """One GPipe step (``micro`` micro-batches, flush): ``(M + S - 1) t_mb``.

    Used with ``stage_compute`` calibrated from a measured step (``T_0 / (M + S - 1)``) to
    predict the pipeline baseline over a slower link.
    """
    return (micro + n_stages - 1) * pipeline_microbatch_time(
        stage_compute, act_bytes, n_stages, net, overlap=overlap, comm_factor=comm_factor)


def gpipe_schedule_time(fwd: Sequence[float], bwd: Sequence[float], act_bytes: float,
                        micro: int, bandwidth: float, *, comm: str = "blocking",
                        latency: float = 0.0, update: Sequence[float] | None = None) -> float:
    """One GPipe step (all forwards, then all backwards, then each stage's update), replayed
    event by event from measured per-call compute times and a link rate.

    Unlike ``gpipe_step_time`` (the spec's closed form) this follows the schedule that
    ``jaxlm.offload.pipeline`` runs, so it can be fed with what a real run measures.

    Args:
        fwd: forward seconds per micro-batch, one per stage (the last stage's forward is part
            of its backward call: give 0 there).
        bwd: backward seconds per micro-batch per stage (the last stage: loss + backward).
        act_bytes: bytes of one boundary activation (= its gradient) per micro-batch.
        micro: M micro-batches per step.
        bandwidth: bytes/s of each link direction (full duplex, one link per boundary).
        comm: ``blocking`` (a stage waits until the receiver has read the message, then
            computes on), ``overlap`` (messages queue on the link while the stage computes).
        latency: one-way seconds per message.
        update: per-stage optimizer seconds (added after the stage's last backward).

    Returns:
        seconds from the first forward to the last stage's update.
    """
    s_n = len(fwd)
    if s_n < 1 or len(bwd) != s_n or (update is not None and len(update) != s_n):
        raise ValueError("gpipe_schedule_time: fwd, bwd (and update) need one entry per stage")
    if micro < 1 or bandwidth <= 0:
        raise ValueError(f"gpipe_schedule_time: micro >= 1 and bandwidth > 0 needed, got "
                         f"{micro}, {bandwidth}")
    if comm not in ("blocking", "overlap"):
        raise ValueError(f"comm must be 'blocking' or 'overlap', got {comm!r}")
    wire = act_bytes / bandwidth + latency
    free = [0.0] * s_n  # when each stage's compute thread is free
    link = {}  # (src, dst) -> when that link direction is free

    def send(src: int, dst: int, ready: float, recv_ready: float) -> tuple[float, float]:
        """(sender free, receiver has the data) for a message ready at ``ready``."""
        start = max(ready, link.get((src, dst), 0.0))
        arrive = start + wire
        link[(src, dst)] = arrive - latency
        if comm == "overlap":
            return ready, max(arrive, recv_ready)
        got = max(arrive, recv_ready)  # the receiver reads it, then acknowledges
        return got + latency, got

    # forward, micro-batch by micro-batch (wavefront order respects every dependency):
    # stage s computes micro m once it has the activation and has finished micro m - 1
    arrive = [[0.0] * micro for _ in range(s_n)]
    for m in range(micro):
        for s in range(s_n):
            t = max(free[s], arrive[s][m]) + (fwd[s] if s < s_n - 1 else 0.0)
            free[s] = t
            if s < s_n - 1:
                free[s], arrive[s + 1][m] = send(s, s + 1, t, free[s + 1])
    # backward: the last stage starts; gradients travel back
    garr = [[0.0] * micro for _ in range(s_n)]
    for m in range(micro):
        for s in range(s_n - 1, -1, -1):
            t = max(free[s], garr[s][m]) + bwd[s]
            free[s] = t
            if s > 0:
                free[s], garr[s - 1][m] = send(s, s - 1, t, free[s - 1])
    if comm == "overlap":  # a stage drains its send queue before the update
        for (src, _), t in link.items():
            free[src] = max(free[src], t)
    if update is not None:
        free = [f + u for f, u in zip(free, update)]
    return max(free)


def local_sgd_step_time(compute: float, n_params: float, beta: float, n_peers: int,
                        net: Network, period: float, round_overhead: float = 0.0) -> float:
    """Atom-style local SGD per local step: ``t_c + (T_sync + overhead) / H``.

    ``T_sync`` is section 4.4's all-reduce (``allreduce_time``); ``round_overhead`` is the
    fixed per-round cost of the averaging protocol (matchmaking), measured on a fast link.
    """
    t_sync = allreduce_time(n_peers, n_params, beta, net) + round_overhead
    return compute + t_sync / max(period, 1e-9)


def local_sgd_period_to_beat(compute: float, n_params: float, beta: float, n_peers: int,
                             net: Network, tokens_per_step: float, target_tokens_per_s: float,
                             round_overhead: float = 0.0, sync_time: float | None = None
                             ) -> float:
    """Smallest averaging period ``H`` at which ``n_peers`` local-SGD peers reach
    ``target_tokens_per_s`` (e.g. a pipeline's measured throughput).

    The cluster makes ``N * tokens_per_step * H`` tokens per ``H * compute + T_sync +
    overhead`` seconds, so ``H* = X (T_sync + o) / (N k - X t_c)``; ``inf`` when the peers'
    compute alone (``N k / t_c``) does not reach the target: no amount of amortising the sync
    helps then. ``sync_time``: a measured round time, used instead of the all-reduce model
    (``round_overhead`` is then ignored).
    """
    if compute <= 0 or tokens_per_step <= 0 or target_tokens_per_s <= 0:
        raise ValueError("local_sgd_period_to_beat: compute, tokens_per_step and "
                         "target_tokens_per_s must be > 0")
    rate = n_peers * tokens_per_step
    spare = rate - target_tokens_per_s * compute
    if spare <= 0:
        return float("inf")
    if sync_time is None:
        sync_time = allreduce_time(n_peers, n_params, beta, net) + round_overhead
    return target_tokens_per_s * sync_time / spare


def bandwidth_bound_ratio(n_peers: int, n_params: float, d_model: int,
                          tokens_per_round: float, beta: float = 4.0) -> float:
    """Atom / GPipe tokens/s when both are limited by the link alone (slow-link limit).

    Atom: each round every peer's NIC carries ``2 (N-1)/N P beta`` bytes for the
    ``N * tokens_per_round`` tokens of the cluster. GPipe (``N`` stages): every boundary
    carries ``beta d`` bytes per token forward, then the same backward, and the two phases
    do not overlap, so a token costs ``2 beta d`` bytes of link time. The ratio is
    ``N^2 k d / (2 (N-1) P) * 2 = N^2 k d / ((N-1) P)`` for ``k = tokens_per_round`` per peer:
    the square-cube law (P grows as d^2 L, the activation as d).
    """
    if n_peers < 2:
        raise ValueError(f"bandwidth_bound_ratio needs >= 2 peers, got {n_peers}")
    atom_tok_per_byte = n_peers * tokens_per_round / (2 * (n_peers - 1) / n_peers
                                                       * n_params * beta)
    pipe_tok_per_byte = 1.0 / (2 * beta * d_model)
    return atom_tok_per_byte / pipe_tok_per_byte


def swarm_stages(model: GPTConfig, hw: Hardware, sw: SwarmSettings, n_peers: int) -> int:
    """The pipeline depth S (the given one, or the smallest fitting divisor of N).

    S is the smallest divisor of ``n_peers`` (so R = N / S replicas per stage is whole)
    with ``beta_state * N_params / S <= state_mem_fraction * M_gpu``; when none fits,
    S = N (one deep pipeline; the model then does not strictly fit, as 13B on 8 x 24 GB).
    """
    if sw.stages is not None:
        if sw.stages < 1:
            raise ValueError(f"SWARM stages must be >= 1, got {sw.stages}")
        return sw.stages
    need = sw.beta_state * model.n_params
    for s_n in range(1, n_peers + 1):
        if n_peers % s_n == 0 and need / s_n <= sw.state_mem_fraction * hw.mem_bytes:
            return s_n
    return n_peers


def swarm_throughput(model: GPTConfig, hw: Hardware, net: Network, sw: SwarmSettings,
                     n_peers: int, global_batch: int, micro_batch: int = 1) -> Throughput:
    """Section 4.5: ``X_swarm = B_g / ((B_g / (R b)) t_mb + T_sync_stage)``."""
    s_n = swarm_stages(model, hw, sw, n_peers)
    if s_n > n_peers:
        raise ValueError(f"SWARM with {s_n} stages needs at least {s_n} peers, got {n_peers}")
    r_n = n_peers / s_n
    tokens = micro_batch * model.seq_len
    c_s = (model.n_layers / s_n) * (3 + sw.recompute) * model.layer_flops_per_token * tokens
    c_s /= hw.flops
    act = micro_batch * model.seq_len * model.d_model * sw.beta_a
    t_mb = pipeline_microbatch_time(c_s, act, s_n, net, overlap=sw.overlap)
    if sw.flush_microbatches:
        mm = sw.flush_microbatches
        t_mb *= (mm + s_n - 1) / mm
    p_stage = model.n_params / s_n
    t_sync = allreduce_time(r_n, p_stage, sw.beta_c, net)
    t_comp = global_batch / (r_n * micro_batch) * t_mb
    t_step = t_comp + t_sync
    return Throughput(global_batch / t_step, t_step, t_sync, t_sync / t_step)


# ----------------------------------------------------------------------------------------------
# Section 4.7 scenarios.

BANDWIDTHS_MBPS = (100, 500, 1000, 10000)
CAP_FROM_MBPS = 1000  # the 610 Mb/s activation cap applies to the 1 and 10 Gb/s columns


def _net(bw_mbps: float, latency: float = 1e-4) -> Network:
    cap = mbps(610) if bw_mbps >= CAP_FROM_MBPS else None
    return Network(bandwidth=mbps(bw_mbps), efficiency=0.6, act_cap=cap, latency=latency)


SCENARIOS = ("A", "B", "C", "C-deep")


def scenario_settings(name: str) -> tuple[AtomSettings, SwarmSettings, float]:
    """(Atom settings, SWARM settings, per-hop latency) for a section 4.7 scenario."""
    if name == "A":
        return AtomSettings(global_batch=512, sync="blocking"), SwarmSettings(), 1e-4
    if name == "B":
        return AtomSettings(global_batch=4096, sync="overlap"), SwarmSettings(), 1e-4
    if name in ("C", "C-deep"):
        return (AtomSettings(global_batch=4096, sync="overlap"),
                SwarmSettings(overlap=False, beta_a=4.0), 20e-3)
    raise ValueError(f"unknown scenario {name!r}; use one of {SCENARIOS}")


def speedup(model: GPTConfig, bw_mbps: float, scenario: str, n_peers: int = 8,
            hw: Hardware | None = None, stages: int | None = None) -> float:
    """Atom / SWARM throughput ratio for one cell of a section 4.7 table."""
    hw = hw or Hardware()
    at, sw, lat = scenario_settings(scenario)
    if scenario == "C-deep":
        sw = dataclasses.replace(sw, stages=n_peers)
    elif stages is not None:
        sw = dataclasses.replace(sw, stages=stages)
    net = _net(bw_mbps, lat)
    xa = atom_throughput(model, hw, net, at, n_peers).seq_per_s
    xs = swarm_throughput(model, hw, net, sw, n_peers, at.global_batch).seq_per_s
    return xa / xs


def scenario_table(name: str) -> dict[str, dict[str, float]]:
    """Rows config -> {column label: speedup} for a section 4.7 table."""
    out: dict[str, dict[str, float]] = {}
    for cname, model in GPT3.items():
        row: dict[str, float] = {}
        if name == "C-deep":
            for n in (4, 8):
                for bw in (50, 100, 1000):
                    row[f"N={n},{bw}Mb/s"] = speedup(model, bw, name, n_peers=n)
        else:
            for bw in BANDWIDTHS_MBPS:
                row[f"{bw}Mb/s"] = speedup(model, bw, name)
        out[cname] = row
    return out


# The spec's printed tables (section 4.7), for the tests and the reproduction entry.
SPEC_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "A": {"1.3B": (0.8, 0.6, 0.6, 0.8), "2.7B": (0.6, 0.5, 0.5, 0.8),
          "6.7B": (0.7, 0.5, 0.5, 0.8), "13B": (0.4, 0.3, 0.5, 0.9)},
    "B": {"1.3B": (4.1, 1.0, 0.9, 0.9), "2.7B": (4.8, 1.1, 0.9, 0.9),
          "6.7B": (5.9, 1.5, 0.9, 0.9), "13B": (3.8, 1.0, 0.9, 0.9)},
    "C": {"1.3B": (8.7, 2.7, 1.8, 1.8), "2.7B": (10.2, 3.2, 2.1, 2.1),
          "6.7B": (12.6, 3.9, 2.5, 2.4), "13B": (8.4, 2.9, 1.9, 1.9)},
    "C-deep": {"1.3B": (34.8, 17.9, 2.7, 30.4, 30.9, 4.6),
               "2.7B": (22.6, 11.9, 2.1, 19.0, 19.4, 3.3),
               "6.7B": (14.7, 8.3, 1.7, 12.2, 12.6, 2.5),
               "13B": (9.8, 5.8, 1.4, 8.0, 8.4, 1.9)},
}


def sweep(model: GPTConfig, bandwidths_mbps: Sequence[float], scenario: str = "C-deep",
          n_peers: int = 8, hw: Hardware | None = None) -> list[dict[str, float]]:
    """Speedup and both throughputs over a bandwidth grid.

    Returns:
        rows {bw_mbps, speedup, atom_seq_s, swarm_seq_s, atom_sync_fraction}.
    """
    hw = hw or Hardware()
    at, sw, lat = scenario_settings(scenario)
    if scenario == "C-deep":
        sw = dataclasses.replace(sw, stages=n_peers)
    rows = []
    for bw in bandwidths_mbps:
        net = _net(bw, lat)
        xa = atom_throughput(model, hw, net, at, n_peers)
        xs = swarm_throughput(model, hw, net, sw, n_peers, at.global_batch)
        rows.append({"bw_mbps": float(bw), "speedup": xa.seq_per_s / xs.seq_per_s,
                     "atom_seq_s": xa.seq_per_s, "swarm_seq_s": xs.seq_per_s,
                     "atom_sync_fraction": xa.sync_fraction})
    return rows
