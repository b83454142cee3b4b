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


def test_clips_train_with_their_own_shift_and_images_with_the_image_shift():
    """`clip_time_shift` shifts the times of clips (C, F, H, W) and `time_shift` those of images in the
    same batch: each item's time is the unshifted draw mapped through its kind's shift."""
    from unimodal.objective import Objective

    config = ModelConfig.preset("debug", patch_frames=2, num_frames=4, prediction="sample",
                                time_shift=3.0, clip_time_shift=8.0)
    items = [torch.zeros(3, 16, 16), torch.zeros(3, 4, 16, 16), torch.zeros(3, 16, 16), torch.zeros(3, 4, 16, 16)]
    is_target = torch.ones(4, dtype=torch.bool)
    noised = Objective(config).noise(items, is_target, torch.Generator().manual_seed(0))
    unshifted = Objective(ModelConfig.preset("debug", patch_frames=2, num_frames=4, prediction="sample",
                                             time_shift=1.0)).noise(items, is_target, torch.Generator().manual_seed(0))
    expected = shift_time(unshifted.timesteps, torch.tensor([3.0, 8.0, 3.0, 8.0]))
    torch.testing.assert_close(noised.timesteps, expected)
    # without clip_time_shift a clip takes the image shift
    same = Objective(ModelConfig.preset("debug", patch_frames=2, num_frames=4, prediction="sample", time_shift=3.0))
    torch.testing.assert_close(same.noise(items, is_target, torch.Generator().manual_seed(0)).timesteps,
                               shift_time(unshifted.timesteps, 3.0))


def test_clips_sample_with_the_clip_shift_and_images_with_the_image_shift(tokenizer):
    """A model with time_shift 3 and clip_time_shift 8 generates the clips of the same weights with
    time_shift 8, and the images of the same weights with time_shift 3."""
    from unimodal.api import UniModal
    from unimodal.codecs import PixelCodec
    from unimodal.model import UniModalModel

    def api(**shifts) -> UniModal:
        config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, patch_frames=2, num_frames=4,
                                    prediction="sample", **shifts)
        torch.manual_seed(0)
        model = UniModalModel(config)
        for param in model.denoise_head.parameters():  # zero-initialised; make samples depend on the model
            torch.nn.init.normal_(param, std=0.1)
        return UniModal(model, tokenizer, PixelCodec())

    both, clip_only, image_only = api(time_shift=3.0, clip_time_shift=8.0), api(time_shift=8.0), api(time_shift=3.0)
    prompts = ["a red circle moves from left to right", "a blue square"]
    clip = dict(num_frames=4, num_steps=3, seed=1, output_type="pt")
    torch.testing.assert_close(both.generate(prompts, **clip), clip_only.generate(prompts, **clip))
    assert not torch.allclose(both.generate(prompts, **clip), image_only.generate(prompts, **clip))
    image = dict(num_steps=3, seed=1, output_type="pt")
    torch.testing.assert_close(both.generate(prompts, **image), image_only.generate(prompts, **image))


def test_clip_time_shift_is_validated():
    for bad in (0, -1.0, float("nan"), "8", True):
        with pytest.raises(ValueError, match="clip_time_shift"):
            ModelConfig.preset("debug", clip_time_shift=bad)
