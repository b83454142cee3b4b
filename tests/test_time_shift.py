"""The time shift: its defaults, its map and how the flow samplers place their steps by it
(docs/experiments/2026-11-30-own-data-time-shift.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unimodal.config import ModelConfig
from unimodal.diffusion import FlowMatching, shift_time
from unimodal.training.config import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_main_job_and_the_own_data_command_train_with_shift_3_and_logit_normal():
    """On 32x32 emoji icons shift 1 and 3 tied (FID 164.7 vs 166.9, KID 0.085 vs 0.084): the own-data
    command (configs/tiny.yaml with overrides) keeps the preset's values, as the main job does."""
    assert (ModelConfig.preset("tiny").time_shift, ModelConfig.preset("tiny").time_sampling) == (3.0, "logit_normal")
    for overrides in ([], ["synthetic.enabled=false", "eval.enabled=false", "data.train_shards=x/shard-000000.tar"]):
        config = load_run_config(CONFIGS / "tiny.yaml", overrides)
        assert (config.model.time_shift, config.model.time_sampling) == (3.0, "logit_normal")
    assert load_run_config(CONFIGS / "tiny.yaml", ["model.time_shift=1"]).model.time_shift == 1.0


def test_shift_one_is_the_identity_and_a_larger_shift_moves_time_to_noise():
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted[1:-1] > t[1:-1]).all())
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)


@pytest.mark.parametrize("scheduler", ["euler", "dpmsolver++"])
def test_the_sampler_uses_the_configured_shift(scheduler):
    """Both flow samplers place their steps by the shift: evenly spaced noise levels with 1, the same
    levels mapped through `shift_time` with 3 (more steps at high noise, a longer last step)."""
    steps = 10
    even = FlowMatching(time_shift=1.0).make_scheduler(scheduler)
    even.set_timesteps(steps)
    sigmas = even.timesteps.double() / 1000
    gaps = sigmas[:-1] - sigmas[1:]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), atol=2e-3)
    shifted = FlowMatching(time_shift=3.0).make_scheduler(scheduler)
    shifted.set_timesteps(steps)
    # all but the last call (euler's lowest level is shift(σ_min) for its own σ_min, not shift of 0.001)
    assert torch.allclose(shifted.timesteps.double()[:-1] / 1000, shift_time(sigmas[:-1], 3.0), atol=5e-3)
