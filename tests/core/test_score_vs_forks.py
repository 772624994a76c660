"""TEMPORARY (deleted with the forks): core's packed scorer equals each fork's outputs on fixed inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.core import MODELS, init
from jaxlm.core.score import prefill_prefix, score_packed
from jaxlm.core.transformer import stack_layers
from tests.core.test_score import _packed


@pytest.mark.parametrize("name", ["smollm2-135m_test", "gptj-tiny_test", "cerebras-gpt-tiny_test"])
@pytest.mark.parametrize("shared", [0, 6])
def test_core_scorer_equals_fastlm_and_recscorer_core_and_local(name, shared):
    from jaxlm.agents.recsys import fastlm
    from jaxlm.agents.recsys.scoring import _prefill, _score_rows
    from jaxlm.llm.local import _score_packed

    cfg = MODELS.get(name)
    params = init(jax.random.PRNGKey(0), cfg)
    _, common, arrs, spans = _packed(cfg, shared, seed=4)
    arrs = tuple(map(jnp.asarray, arrs))
    mask = np.zeros(arrs[3].shape, bool)
    for i, sp in enumerate(spans):
        mask[i, sp[0][0]:sp[-1][1]] = True
    sp_ = fastlm.prepare_params(params, cfg)
    st = stack_layers(params)
    if shared:
        ids = jnp.asarray([common])
        k, v = fastlm.prefill(sp_, ids, jnp.arange(shared)[None], *fastlm.empty_prefix(cfg), cfg=cfg, chunk=16)
        old_fast = fastlm.score_rows(sp_, *arrs, k, v, np.arange(shared)[None], cfg=cfg, chunk=16)
        old_core = _score_rows(params, _prefill(params, ids, cfg=cfg), *arrs, cfg=cfg)
        pre_new = prefill_prefix(st, ids, cfg=cfg, scan=True)
        new_fast = score_packed(st, *arrs, pre_new, cfg=cfg, scan=True, chunk=16)
        new_core = score_packed(params, *arrs, prefill_prefix(params, ids, cfg=cfg), cfg=cfg)
    else:
        old_fast = fastlm.score_rows(sp_, *arrs, *fastlm.empty_prefix(cfg), cfg=cfg, chunk=16)
        old_core = _score_rows(params, None, *arrs, cfg=cfg)
        old_local = _score_packed(params, *arrs, cfg=cfg)
        new_fast = score_packed(st, *arrs, cfg=cfg, scan=True, chunk=16)
        new_core = score_packed(params, *arrs, cfg=cfg)
        np.testing.assert_allclose(np.asarray(new_core)[mask], np.asarray(old_local)[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_fast)[mask], np.asarray(old_fast)[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_core)[mask], np.asarray(old_core)[mask], rtol=1e-5, atol=1e-5)
