"""LocalBackend.forward's activations come from core's run_blocks(capture=...), equal (f32,
1e-5) to capturing them with an ``intervene`` hook that writes into a dict (the old path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, apply, init
from jaxlm.llm import local
from jaxlm.llm.local import ByteTokenizer, LocalBackend


def _hook_reference(params, cfg, toks, pos, bias, capture, layers, want_attn):
    """The former ``_forward``: apply(intervene=hook) with the hook filling a dict."""
    acts = {s: {} for s in capture}

    def hook(site, layer, x):
        if site in acts and (layers is None or layer in layers):
            acts[site][layer] = x
        return x

    out = apply(params, cfg, toks, positions=pos, attn_bias=bias, return_hidden=True,
                return_attn=want_attn, intervene=hook if capture else None)
    return out.logits, acts, out.hidden, out.attn


@pytest.fixture(scope="module")
def backend():
    cfg = MODELS.get("smollm2-135m_test")
    params = init(jax.random.PRNGKey(3), cfg)
    return LocalBackend(cfg=cfg, params=params, tokenizer=ByteTokenizer(), name="tiny")


def _close(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    scale = max(float(np.abs(b).max()), 1e-6)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("capture, layers, want_attn", [
    (("attn_out",), None, False),
    (("embed", "attn_out", "mlp_hidden", "mlp_out", "resid_post"), None, True),
    (("mlp_hidden", "resid_post", "embed"), (1,), False),
    (("attn_out", "embed"), (-1, 0), True),
    ((), None, False),
])
def test_forward_equals_the_hook_path(backend, capture, layers, want_attn):
    cfg = backend.cfg
    rng = np.random.default_rng(0)
    toks = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 9)), jnp.int32)
    pos = jnp.asarray(np.tile(np.arange(9), (2, 1)), jnp.int32)
    mask = np.ones((2, 9), bool)
    mask[1, 2:4] = False
    bias = backend._bias(mask, 2, 9)
    want = _hook_reference(backend.params, cfg, toks, pos, bias, capture, layers, want_attn)
    got = local._forward(backend.params, toks, pos, bias, cfg=cfg, capture=capture,
                         layers=layers, want_attn=want_attn)
    _close(got[0], want[0])
    assert sorted(got[1]) == sorted(want[1])  # (jit returns dicts with sorted keys)
    for s in capture:
        assert list(got[1][s]) == list(want[1][s]), s  # same layers, same order
        for i in want[1][s]:
            _close(got[1][s][i], want[1][s][i])
    assert len(got[2]) == len(want[2]) == cfg.n_layers + 1
    for a, b in zip(got[2], want[2], strict=True):
        _close(a, b)
    if want_attn:
        for a, b in zip(got[3], want[3], strict=True):
            _close(a, b)
    else:
        assert got[3] is None and want[3] is None
    assert float(jnp.abs(want[0]).max()) > 0
