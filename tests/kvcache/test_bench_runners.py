"""The Keyformer benchmark's synthetic caches follow core's KVCache layout: one timed core step
and one evicting step run on a tiny model (a layout drift broke the quick entry once)."""

import dataclasses

import jax
import numpy as np

from jaxlm.core import MODELS, init
from jaxlm.core.cache import init_cache
from jaxlm.kvcache import policy as P


def test_core_and_policy_runners_run_on_core_layout():
    from experiments.keyformer import bench as B

    cfg = dataclasses.replace(MODELS.get("smollm2-135m_test"), init_std=0.3)
    params = init(jax.random.PRNGKey(0), cfg)
    c = B.core_cache(cfg, batch=2, slots=12, filled=7)
    ref = init_cache(cfg, 2, 12)
    assert c.k.shape == ref.k.shape and c.v.shape == ref.v.shape and c.pos.shape == ref.pos.shape
    B.core_runner(params, cfg, 2, 12, 7, steps=2)()
    run, cap = B.policy_runner(params, cfg, P.Policy("h2o", budget=0.5), 16, batch=2, steps=2)
    run()
    st = B.policy_state(cfg, 2, cap, 16)
    assert st.cache.k.shape == init_cache(cfg, 2, cap).k.shape
    assert np.all(np.asarray(st.cache.pos)[..., -1] == -1)  # the last slot is the free one
