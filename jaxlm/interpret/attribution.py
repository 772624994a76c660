"""Token attributions for a next-token target: gradients, integrated gradients, occlusion.

Every method explains one scalar ``f`` of the model's last-position output:
``f = log p(target)`` ("logprob"), the target's logit ("logit"), its probability
("prob"), or the contrast ``log p(target) - log p(foil)`` ("contrast"). The input
variable is the matrix of token embeddings ``e`` [T, D]; the substrate's
``"embed"`` intervention site adds ``e - E[tokens]`` to the embedding output, so
learned absolute positions (if any) stay untouched.

Two layers:
  * generic cores over any batched function ``f(E [N, T, D]) -> [N]``
    (``gradient_x_input_fn``, ``integrated_gradients_fn``, ...) that the tests
    check against analytic answers on linear functions;
  * model wrappers (``saliency``, ``gradient_x_input``, ``integrated_gradients``,
    ``smoothgrad``, ``occlusion``) that build ``f`` from ``jaxlm.core.apply``.

Token scores: gradient x input and IG sum over the embedding dimension (signed);
saliency and SmoothGrad take the L2 norm of the gradient (unsigned).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.core import ModelConfig, apply

Array = jax.Array
Kind = Literal["logprob", "logit", "prob", "contrast"]
BatchFn = Callable[[Array], Array]  # E [N, T, D] -> f [N]
KINDS = ("logprob", "logit", "prob", "contrast")


# --------------------------------------------------------------------------- targets
def _check(tokens, target_id: int, kind: str, foil_id: int | None, cfg: ModelConfig) -> Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(
            f"tokens must be a non-empty 1-D id sequence [T], got shape {tokens.shape}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0 <= int(target_id) < cfg.vocab_size:
        raise ValueError(f"target_id {target_id} outside the vocabulary [0, {cfg.vocab_size})")
    if kind == "contrast" and foil_id is None:
        raise ValueError("kind='contrast' needs foil_id (the competing answer token)")
    return tokens.astype(jnp.int32)


def readout(logits: Array, target_id, kind: str = "logprob", foil_id=None) -> Array:
    """The explained scalar from last-position logits [..., V] -> [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if kind == "logprob":
        return logp[..., target_id]
    if kind == "logit":
        return logits[..., target_id]
    if kind == "prob":
        return jnp.exp(logp[..., target_id])
    if kind == "contrast":
        return logp[..., target_id] - logp[..., foil_id]
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def token_embeddings(params, tokens: Array) -> Array:
    """The token-embedding rows E[tokens]: [T] -> [T, D] (float32)."""
    return jnp.asarray(params["embed"], jnp.float32)[tokens]


def model_fn(params, cfg: ModelConfig, tokens: Array, target_id, kind="logprob", foil_id=None):
    """``f(E [N, T, D]) -> [N]``: the model's readout when token embeddings are ``E``."""
    base = token_embeddings(params, tokens)  # [T, D]

    def f(emb: Array) -> Array:
        n = emb.shape[0]
        toks = jnp.broadcast_to(tokens[None], (n, tokens.shape[0]))

        def hook(site, layer, act):
            if site == "embed":
                return act + (emb - base[None]).astype(act.dtype)
            return act

        out = apply(params, cfg, toks, intervene=hook, last_logits_only=True)
        return readout(out.logits[:, -1], target_id, kind, foil_id)

    return f


# --------------------------------------------------------------------------- generic cores
def gradients_fn(f: BatchFn, emb: Array) -> tuple[Array, Array]:
    """(f(emb) [N], df/demb [N, T, D]) for a batch of independent inputs."""
    if isinstance(f, _BoundFn):
        return f.value_and_grad(emb)
    val, vjp = jax.vjp(f, emb)
    (g,) = vjp(jnp.ones_like(val))
    return val, g


def gradient_x_input_fn(f: BatchFn, emb: Array) -> Array:
    """Sum_d e_{i,d} * df/de_{i,d}: emb [T, D] -> scores [T]."""
    _, g = gradients_fn(f, emb[None])
    return jnp.sum(g[0] * emb, axis=-1)


def saliency_fn(f: BatchFn, emb: Array) -> Array:
    """||df/de_i||_2: emb [T, D] -> scores [T]."""
    _, g = gradients_fn(f, emb[None])
    return jnp.linalg.norm(g[0], axis=-1)


def _quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "midpoint":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1) / 2, w / 2
    if rule == "left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"rule must be midpoint/gauss_legendre/left, got {rule!r}")


@dataclasses.dataclass(frozen=True)
class IGResult:
    """Integrated gradients for one input.

    Attributes:
        scores: [T] per-token attributions (summed over D).
        f_input: f at the input; f_baseline: f at the baseline.
        completeness_error: |sum(scores) - (f_input - f_baseline)| / |f_input - f_baseline|.
    """

    scores: np.ndarray
    f_input: float
    f_baseline: float
    completeness_error: float


def integrated_gradients_fn(
    f: BatchFn,
    emb: Array,
    baseline: Array,
    *,
    steps: int = 64,
    rule: str = "gauss_legendre",
    chunk: int = 64,
) -> IGResult:
    """IG_i = sum_d (e - e')_{i,d} * int_0^1 df(e' + a (e - e'))/de_{i,d} da.

    All interpolation points of a chunk run as one batch.

    Args:
        f: batched function E [N, T, D] -> [N].
        emb: [T, D] input; baseline: [T, D] reference input e'.
        steps: quadrature points m.
        rule: "gauss_legendre" (default; exact for polynomials of degree < 2m),
            "midpoint" or "left" Riemann sums.
        chunk: interpolation points per batch (memory bound).

    Returns:
        IGResult with the completeness check.
    """
    if emb.shape != baseline.shape:
        raise ValueError(f"baseline shape {baseline.shape} must equal input shape {emb.shape}")
    alphas, weights = _quadrature(steps, rule)
    diff = emb - baseline
    total = jnp.zeros_like(emb)
    for s in range(0, steps, chunk):
        a = jnp.asarray(alphas[s : s + chunk], emb.dtype)[:, None, None]
        w = jnp.asarray(weights[s : s + chunk], emb.dtype)[:, None, None]
        _, g = gradients_fn(f, baseline[None] + a * diff[None])
        total = total + jnp.sum(w * g, axis=0)
    scores = jnp.sum(total * diff, axis=-1)
    ends = f(jnp.stack([emb, baseline]))
    f_in, f_base = float(ends[0]), float(ends[1])
    delta = f_in - f_base
    err = abs(float(jnp.sum(scores)) - delta) / max(abs(delta), 1e-12)
    return IGResult(np.asarray(scores), f_in, f_base, err)


def smoothgrad_fn(f: BatchFn, emb: Array, key: Array, *, n_samples: int = 16,
                  sigma: float = 0.1) -> Array:
    """SmoothGrad: mean over noisy copies of ||df/de_i||; noise std = sigma * std(emb)."""
    scale = sigma * jnp.std(emb)
    noisy = emb[None] + scale * jax.random.normal(key, (n_samples, *emb.shape), emb.dtype)
    _, g = gradients_fn(f, noisy)
    return jnp.mean(jnp.linalg.norm(g, axis=-1), axis=0)


# --------------------------------------------------------------------------- model wrappers
@functools.partial(jax.jit, static_argnames=("cfg", "kind"))
def _grads(params, tokens, target_id, foil_id, *, cfg, kind):
    f = model_fn(params, cfg, tokens, target_id, kind, foil_id)
    emb = token_embeddings(params, tokens)
    _, g = gradients_fn(f, emb[None])
    return emb, g[0]


def saliency(params, cfg: ModelConfig, tokens, target_id: int, *, kind: Kind = "logprob",
             foil_id: int | None = None) -> np.ndarray:
    """Gradient-norm saliency ||df/de_i||_2 per token.

    Args:
        params, cfg: the model.
        tokens: [T] prompt ids; the explained output is the next token after the prompt.
        target_id: the answer token y.
        kind: readout (see module doc); foil_id for kind="contrast".

    Returns:
        scores [T] (numpy, >= 0).
    """
    tokens = _check(tokens, target_id, kind, foil_id, cfg)
    _, g = _grads(params, tokens, target_id, foil_id if foil_id is not None else 0,
                  cfg=cfg, kind=kind)
    return np.asarray(jnp.linalg.norm(g, axis=-1))


def gradient_x_input(params, cfg: ModelConfig, tokens, target_id: int, *,
                     kind: Kind = "logprob", foil_id: int | None = None) -> np.ndarray:
    """Gradient x input, sum_d e_{i,d} df/de_{i,d}, per token: scores [T] (signed)."""
    tokens = _check(tokens, target_id, kind, foil_id, cfg)
    emb, g = _grads(params, tokens, target_id, foil_id if foil_id is not None else 0,
                    cfg=cfg, kind=kind)
    return np.asarray(jnp.sum(emb * g, axis=-1))


def make_baseline(params, tokens: Array, baseline: str | int | Array = "zero",
                  keep_mask: Array | None = None) -> Array:
    """IG baseline e' [T, D]: "zero", a filler token id (int), or an explicit array.

    Positions where ``keep_mask`` is True (special / template tokens) keep their real
    embedding, so they get zero attribution.
    """
    emb = token_embeddings(params, tokens)
    if isinstance(baseline, str):
        if baseline != "zero":
            raise ValueError(
                f"baseline must be 'zero', a filler token id or an array, got {baseline!r}"
            )
        base = jnp.zeros_like(emb)
    elif isinstance(baseline, (int, np.integer)):
        base = jnp.broadcast_to(token_embeddings(params, jnp.asarray([baseline]))[0], emb.shape)
    else:
        base = jnp.asarray(baseline, emb.dtype)
        if base.shape != emb.shape:
            raise ValueError(f"baseline array must be [T, D]={emb.shape}, got {base.shape}")
    if keep_mask is not None:
        base = jnp.where(jnp.asarray(keep_mask, bool)[:, None], emb, base)
    return base


def integrated_gradients(
    params,
    cfg: ModelConfig,
    tokens,
    target_id: int,
    *,
    baseline: str | int | Array = "zero",
    steps: int = 64,
    rule: str = "gauss_legendre",
    kind: Kind = "logprob",
    foil_id: int | None = None,
    keep_mask=None,
    chunk: int = 64,
) -> IGResult:
    """Integrated gradients over token embeddings, batched over interpolation steps.

    Args:
        params, cfg, tokens, target_id, kind, foil_id: as in ``saliency``.
        baseline: "zero", a filler token id, or a [T, D] array (see ``make_baseline``).
        steps, rule, chunk: quadrature (see ``integrated_gradients_fn``).
        keep_mask: optional [T] bool, positions held at their real embedding.

    Returns:
        IGResult (scores [T], f values, relative completeness error).
    """
    tokens = _check(tokens, target_id, kind, foil_id, cfg)
    emb = token_embeddings(params, tokens)
    base = make_baseline(params, tokens, baseline, keep_mask)
    fid = 0 if foil_id is None else foil_id
    f = _BoundFn(params, tokens, target_id, fid, cfg, kind)
    return integrated_gradients_fn(f, emb, base, steps=steps, rule=rule, chunk=chunk)


@functools.partial(jax.jit, static_argnames=("cfg", "kind", "grad"))
def _model_eval(params, tokens, emb, target_id, foil_id, *, cfg, kind, grad):
    f = model_fn(params, cfg, tokens, target_id, kind, foil_id)
    if grad:
        return gradients_fn(f, emb)
    return f(emb), None


class _BoundFn:
    """``f(E)`` for the generic cores with params passed to jit as arguments (not constants).

    Calling it evaluates f; ``gradients_fn`` detects it and uses the jitted VJP.
    """

    def __init__(self, params, tokens, target_id, foil_id, cfg, kind):
        self.args = (params, tokens, target_id, foil_id)
        self.cfg, self.kind = cfg, kind

    def __call__(self, emb):
        return _model_eval(*self.args[:2], emb, *self.args[2:], cfg=self.cfg, kind=self.kind,
                           grad=False)[0]

    def value_and_grad(self, emb):
        return _model_eval(*self.args[:2], emb, *self.args[2:], cfg=self.cfg, kind=self.kind,
                           grad=True)


def smoothgrad(params, cfg: ModelConfig, tokens, target_id: int, key: Array, *,
               n_samples: int = 16, sigma: float = 0.1, kind: Kind = "logprob",
               foil_id: int | None = None) -> np.ndarray:
    """SmoothGrad saliency (mean gradient norm over Gaussian-perturbed embeddings): [T]."""
    tokens = _check(tokens, target_id, kind, foil_id, cfg)
    f = _BoundFn(params, tokens, target_id, 0 if foil_id is None else foil_id, cfg, kind)
    emb = token_embeddings(params, tokens)
    return np.asarray(smoothgrad_fn(f, emb, key, n_samples=n_samples, sigma=sigma))


@functools.partial(jax.jit, static_argnames=("cfg", "kind"))
def readout_batch(params, tokens_b: Array, target_id, foil_id, *, cfg, kind="logprob"):
    """Readout for a batch of equal-length prompts [N, T] -> [N] (and argmax ids [N])."""
    logits = apply(params, cfg, tokens_b, last_logits_only=True).logits[:, -1]
    return readout(logits, target_id, kind, foil_id), jnp.argmax(logits, -1)


def occlusion(params, cfg: ModelConfig, tokens, target_id: int, *, filler_id: int,
              kind: Kind = "logprob", foil_id: int | None = None, keep_mask=None) -> np.ndarray:
    """Leave-one-out by replacement: s_i = f(x) - f(x with token i -> filler).

    Positions stay fixed (replacement, not deletion). ``keep_mask`` positions score 0.
    Returns scores [T].
    """
    tokens = _check(tokens, target_id, kind, foil_id, cfg)
    t = tokens.shape[0]
    variants = jnp.where(jnp.eye(t, dtype=bool), filler_id, tokens[None])  # [T, T]
    batch = jnp.concatenate([tokens[None], variants], axis=0)
    vals, _ = readout_batch(params, batch, target_id, foil_id if foil_id is not None else 0,
                            cfg=cfg, kind=kind)
    s = vals[0] - vals[1:]
    if keep_mask is not None:
        s = jnp.where(jnp.asarray(keep_mask, bool), 0.0, s)
    return np.asarray(s)


def random_attribution(key: Array, t: int) -> np.ndarray:
    """A random ranking control: i.i.d. uniform scores [T]."""
    return np.asarray(jax.random.uniform(key, (t,)))


# --------------------------------------------------------------------------- generations
@dataclasses.dataclass(frozen=True)
class GenerationAttribution:
    """Attributions of each token of a greedy generation to its context.

    Attributes:
        prompt: [T] prompt ids; generated: [G] greedy continuation (``core.generate``).
        scores: [G, T + G - 1]; row j scores the context of generated token j (the prompt
            and generated[:j]); entries past that context are NaN.
        f: [G] the explained readout of each generated token given its context.
        argmax_agrees: [G] whether the full forward's argmax on the context equals the
            generated token (the decode loop and the forward agree).
    """

    prompt: np.ndarray
    generated: np.ndarray
    scores: np.ndarray
    f: np.ndarray
    argmax_agrees: np.ndarray

    def prompt_scores(self) -> np.ndarray:
        """[G, T]: each generated token's attributions restricted to the prompt tokens."""
        return self.scores[:, : len(self.prompt)]


def generation_attribution(
    params,
    cfg: ModelConfig,
    prompt,
    *,
    max_new_tokens: int,
    method: Literal["grad_x_input", "integrated_gradients"] = "grad_x_input",
    kind: Kind = "logprob",
    ig_steps: int = 32,
    baseline: str | int | Array = "zero",
    hold_first: bool = True,
    generated=None,
) -> GenerationAttribution:
    """Greedy-generates ``max_new_tokens`` after ``prompt`` and attributes every generated
    token (readout ``kind`` of that token) to its context, through ``jaxlm.core.apply``.

    Args:
        params, cfg: the model; prompt: [T] ids.
        max_new_tokens: tokens to generate (G).
        method: "grad_x_input" or "integrated_gradients" (``ig_steps``, ``baseline``).
        kind: readout of the generated token ("logprob", "logit", "prob").
        hold_first: IG keeps the first token at its real embedding (the attention sink).
        generated: optional [G] ids to attribute instead of generating (e.g. a reference).

    Returns:
        GenerationAttribution.
    """
    from jaxlm.core.generate import generate

    prompt = np.asarray(prompt, np.int64)
    if prompt.ndim != 1 or len(prompt) == 0:
        raise ValueError(f"prompt must be a non-empty [T] id sequence, got shape {prompt.shape}")
    if method not in ("grad_x_input", "integrated_gradients"):
        raise ValueError(f"method must be 'grad_x_input' or 'integrated_gradients', got {method!r}")
    if kind == "contrast":
        raise ValueError("generation_attribution explains each generated token on its own; "
                         "kind='contrast' has no foil here (use logprob, logit or prob)")
    if generated is None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = generate(params, cfg, [prompt.tolist()], max_new_tokens=max_new_tokens)
        generated = np.asarray(out.tokens[0, : int(out.lengths[0])])
    generated = np.asarray(generated, np.int64)
    t, g = len(prompt), len(generated)
    scores = np.full((g, t + g - 1), np.nan)
    f = np.zeros(g)
    agree = np.zeros(g, bool)
    for j in range(g):
        ctx = np.concatenate([prompt, generated[:j]])
        y = int(generated[j])
        if method == "grad_x_input":
            s = gradient_x_input(params, cfg, ctx, y, kind=kind)
        else:
            keep = np.zeros(len(ctx), bool)
            keep[0] = hold_first
            s = integrated_gradients(params, cfg, ctx, y, steps=ig_steps, baseline=baseline,
                                     kind=kind, keep_mask=keep).scores
        scores[j, : len(ctx)] = s
        val, top = readout_batch(params, jnp.asarray(ctx, jnp.int32)[None], y, 0, cfg=cfg,
                                 kind=kind)
        f[j], agree[j] = float(val[0]), int(top[0]) == y
    return GenerationAttribution(prompt, generated, scores, f, agree)
