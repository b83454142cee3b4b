"""Clips in the model: temporal patches, attention inside a clip, and clip sampling equivalences."""

import pytest
import torch
from torch.testing import assert_close

from unimodal.codecs import PixelCodec, decode_batch, encode_items
from unimodal.config import ModelConfig
from unimodal.diffusion import make_process
from unimodal.embeddings import patchify_items, unpatchify_items, unpatchify_like
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel
from unimodal.sampling import sample_latents


def build(config, seed=0):
    torch.manual_seed(seed)
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():  # zero-initialised; make media outputs visible
        torch.nn.init.normal_(param, std=0.02)
    return model.eval()


def clip(frames, size=16, seed=0):
    return torch.rand(3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def video_config(tokenizer):
    return ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, patch_frames=2, num_frames=4)


@pytest.mark.parametrize("patch_frames", [1, 2, 4])
def test_temporal_patches_round_trip(patch_frames):
    items = [torch.randn(3, 4, 8, 16), torch.randn(3, 16, 8), torch.randn(3, 8, 8, 8)]
    grids = torch.tensor([[4 // patch_frames, 2, 4], [1, 4, 2], [8 // patch_frames, 2, 2]])
    patches = patchify_items(items, 4, patch_frames)
    assert patches.shape == (int(grids.prod(-1).sum()), 3 * patch_frames * 16)
    got = unpatchify_items(patches, grids, 4, 3, patch_frames, still=[False, True, False])
    for back, item in zip(got, items):
        assert torch.equal(back, item)
    # a batch of one shape through unpatchify_like, as sampling does
    clips = torch.randn(2, 3, 8, 8, 8)
    assert torch.equal(unpatchify_like(patchify_items(list(clips), 4, patch_frames).view(2, -1, 3 * patch_frames * 16),
                                       clips, 4, patch_frames), clips)


def test_layout_counts_patch_frames_and_refuses_a_partial_one(tokenizer):
    layout = SequenceLayout(tokenizer, 4, patch_frames=2)
    assert layout.grid(clip(8)) == (4, 4, 4)
    assert layout.grid(torch.zeros(3, 16, 16)) == (1, 4, 4)  # an image is one patch frame
    with pytest.raises(ValueError, match="patch_frames"):
        layout.grid(clip(3))


def test_clip_attention_is_bidirectional_inside_and_causal_outside(tokenizer, video_config):
    model = build(video_config)
    layout = SequenceLayout.for_model(tokenizer, video_config)
    frames = clip(4)
    start = layout.generation("a red circle moves from left to right", frames).image_starts[0]
    num_tokens = 2 * (16 // video_config.patch_size) ** 2

    def states(item):
        batch = layout.collate([layout.generation("a red circle moves from left to right", item)])
        batch.image_is_target[:] = False
        output = model(batch, torch.zeros(batch.num_images))
        return output.lm_logits[0], output.denoise_pred

    changed = frames.clone()
    changed[:, -1] += 1.0  # only the last frame
    (logits, pred), (logits2, pred2) = states(frames), states(changed)
    assert_close(logits[:start], logits2[:start])  # text before the clip: untouched
    # the first patch frame (frames 0-1) sees the last frame: identical computations differ only through it
    assert (pred[0] - pred2[0]).abs().max() > 1e-6
    assert (logits[start + num_tokens] - logits2[start + num_tokens]).abs().max() > 1e-4  # <eoi> sees the clip


def test_an_image_is_the_clip_of_its_frame_repeated(tokenizer, video_config):
    """With patch_frames 2 an image enters as its frame twice and leaves as the mean of both predictions."""
    model = build(video_config)
    layout = SequenceLayout.for_model(tokenizer, video_config)
    picture = clip(1)[:, 0]
    as_image = layout.collate([layout.generation("a red circle", picture)])
    as_clip = layout.collate([layout.generation("a red circle", picture[:, None].expand(-1, 2, -1, -1).clone())])
    t = torch.tensor([0.3])
    out_image, out_clip = model(as_image, t), model(as_clip, t)
    assert_close(out_image.lm_logits, out_clip.lm_logits)
    assert_close(out_image.denoise_pred, out_clip.denoise_pred)
    grids = as_image.image_grids
    image_back = unpatchify_items(out_image.denoise_pred, grids, 4, 3, 2)[0]
    clip_back = unpatchify_items(out_clip.denoise_pred, grids, 4, 3, 2, still=[False])[0]
    assert_close(image_back, clip_back.mean(1))


@pytest.mark.parametrize("use_cache,prediction", [(True, "velocity"), (False, "velocity"), (True, "sample")])
def test_clip_sampling_batched_equals_alone_and_cached_equals_uncached(tokenizer, video_config, use_cache, prediction):
    video_config.prediction = prediction
    model = build(video_config)
    layout = SequenceLayout.for_model(tokenizer, video_config, latents=True)
    process = make_process(video_config)
    texts = ["a red circle moves from left to right", "a blue square stays still"]
    noise = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    together = sample_latents(model, layout, process, texts, noise, 3, 2.0, "euler", use_cache=use_cache)
    assert together.shape == noise.shape
    for i in range(2):
        alone = sample_latents(model, layout, process, texts[i:i + 1], noise[i:i + 1], 3, 2.0, "euler",
                               use_cache=not use_cache)
        assert_close(together[i:i + 1], alone, atol=1e-4, rtol=1e-4)


def test_codec_runs_clips_frame_by_frame():
    codec = PixelCodec()
    items = [clip(4), torch.rand(3, 16, 16), clip(4, seed=1)]
    encoded = encode_items(codec, items)
    assert [tuple(e.shape) for e in encoded] == [tuple(i.shape) for i in items]
    clips = torch.stack([items[0], items[2]])
    assert_close(decode_batch(codec, clips), clips.clamp(-1, 1))


def test_x_prediction_gives_the_velocity_and_its_loss():
    """prediction="sample": the true x0 turns into the true velocity, and the weighted error on x0 is
    the error on the velocity it implies (JiT's x-prediction with a v-loss)."""
    from unimodal.diffusion import SAMPLE_MIN_TIME, FlowMatching

    process = FlowMatching(prediction="sample")
    x0, noise = torch.randn(3, 3, 4, 8, 8), torch.randn(3, 3, 4, 8, 8)
    t = torch.tensor([0.9, 0.3, 0.01])
    x_t = process.add_noise(x0, noise, t)
    velocity = process.scheduler_output(x0, x_t, t)
    assert_close(velocity[:2], (noise - x0)[:2], atol=1e-5, rtol=1e-5)
    guess = x0 + 0.1 * torch.randn_like(x0)
    v_error = (process.scheduler_output(guess, x_t, t) - process.scheduler_output(x0, x_t, t)).pow(2).mean((1, 2, 3, 4))
    x_error = (guess - x0).pow(2).mean((1, 2, 3, 4)) * process.loss_weight(t)
    assert_close(v_error, x_error, atol=1e-4, rtol=1e-4)
    assert_close(process.loss_weight(t)[2], torch.tensor(SAMPLE_MIN_TIME ** -2))  # the divisor is clipped near t = 0
    assert torch.equal(process.target(x0, noise, t), x0)
    assert torch.equal(FlowMatching().loss_weight(t), torch.ones(3))


def test_x_prediction_needs_the_flow_objective():
    with pytest.raises(ValueError, match="prediction"):
        ModelConfig.preset("debug", objective="ddpm", prediction="sample")
