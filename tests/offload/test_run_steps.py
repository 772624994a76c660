"""swap.run_steps: the training loop behind atom_train (losses, steady time, time to target)."""

import time

import numpy as np
import pytest

from jaxlm.offload import swap


def test_run_steps_records_losses_and_first_hit():
    losses = [5.0, 4.0, 2.5, 3.5, 1.0]
    calls = []

    def step(batch):
        calls.append(batch["i"])
        time.sleep(0.002)
        return losses[batch["i"]]

    out = swap.run_steps(step, [{"i": i} for i in range(5)], target_loss=3.0)
    assert calls == [0, 1, 2, 3, 4]
    assert out["losses"] == losses and out["final_loss"] == 1.0
    assert out["time_to_target"]["step"] == 2 and out["time_to_target"]["seconds"] > 0
    assert len(out["step_s"]) == 5 and all(t > 0.0015 for t in out["step_s"])
    assert out["median_step_s"] == float(np.median(out["step_s"][1:]))


def test_run_steps_without_a_hit_and_with_no_batches():
    out = swap.run_steps(lambda b: 9.0, [{}, {}], target_loss=1.0)
    assert out["time_to_target"] is None
    assert out["median_step_s"] == out["step_s"][1]
    with pytest.raises(ValueError, match="no batches"):
        swap.run_steps(lambda b: 0.0, [])
