"""Clips through the data pipeline: moving-shapes shards, the image + video mixture, latent caching
and the run config of a video run."""

from collections import Counter

import numpy as np
import pytest
import torch

from unimodal.codecs import PixelCodec
from unimodal.data.cache_latents import cache_latents
from unimodal.data.config import DataConfig
from unimodal.data.motion import MotionConfig, MotionWorld
from unimodal.data.motion_checker import MotionChecker
from unimodal.data.motion_shards import write_motion_shards
from unimodal.data.reader import build_train_loader, iter_samples
from unimodal.data.synthetic import World
from unimodal.data.write_shards import write_synthetic_shards
from unimodal.layout import SequenceLayout
from unimodal.tokenizer import Tokenizer
from unimodal.training.config import load_run_config
from unimodal.video import VideoSampling, to_model_clip


@pytest.fixture(scope="module")
def tokenizer():
    texts = []
    for sample in [World().sample(i) for i in range(100)] + [MotionWorld().sample(i) for i in range(100)]:
        texts += [sample.caption] + [f"question: {q['question']} answer: {q['answer']}" for q in sample.qa]
    return Tokenizer.train(texts, vocab_size=200)


@pytest.fixture(scope="module")
def layout(tokenizer):
    return SequenceLayout(tokenizer, 8, patch_frames=8)  # 32 px frames: 4x4 patches of 8 frames


@pytest.fixture(scope="module")
def motion_shards(tmp_path_factory):
    return write_motion_shards(tmp_path_factory.mktemp("motion"), 48, max_count=12, progress=False).pattern


@pytest.fixture(scope="module")
def still_shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("still"), 48, max_count=12, progress=False).pattern


def test_motion_shards_give_the_rendered_clips_back(motion_shards):
    world = MotionWorld()
    checker = MotionChecker(world.config)
    samples = list(iter_samples(motion_shards, 32, video=VideoSampling(8, 10.0)))
    assert len(samples) == 48
    for index, sample in enumerate(samples):
        truth = world.sample(index)
        assert sample.caption == truth.caption and sample.metadata["qa"] == truth.qa
        assert torch.equal(sample.image, to_model_clip(truth.frames, 32))  # GIF is lossless, still clips included
        frames = ((sample.image.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert checker.check(frames, truth.objects)["all_correct"]


def test_clips_longer_than_asked_take_the_centred_window(motion_shards):
    samples = list(iter_samples(motion_shards, 32, video=VideoSampling(4, 10.0)))
    truth = MotionWorld().sample(0).frames
    assert torch.equal(samples[0].image, to_model_clip(truth[2:6], 32))


def test_a_too_short_clip_is_skipped_and_counted(motion_shards):
    from unimodal.data.skips import SkipCounter

    counter = SkipCounter()
    assert list(iter_samples(motion_shards, 32, counter=counter, video=VideoSampling(12, 10.0))) == []
    assert counter.as_dict() == {"short_clip": 48}


def mixed_config(still, motion, **overrides):
    values = dict(train_shards=still, video_shards=motion, media_weights={"image": 1.0, "video": 3.0}, batch_size=8,
                  num_workers=1, shuffle_buffer=8, epoch_batches=10, seed=0)
    return DataConfig(**{**values, **overrides})


def kinds(batch):
    return Counter("clip" if item.dim() == 4 else "image" for item in batch.images)


def test_the_media_mixture_follows_its_weights_and_resumes_exactly(still_shards, motion_shards, tokenizer, layout):
    cfg = mixed_config(still_shards, motion_shards)
    batches = []
    for batch in build_train_loader(cfg, tokenizer, layout).endless():
        batches.append(batch)
        if len(batches) == 15:
            break
    counts = sum((kinds(b) for b in batches), Counter())
    share = counts["clip"] / sum(counts.values())
    assert 0.6 < share < 0.9, counts  # 3:1 by weight
    first = build_train_loader(cfg, tokenizer, layout)
    for step, _ in enumerate(first.endless()):
        if step == 6:
            break
    state = first.state_dict()
    resumed = build_train_loader(cfg, tokenizer, layout)
    resumed.load_state_dict(state)
    rest = []
    for batch in resumed.endless():
        rest.append(batch)
        if len(rest) == 8:
            break
    for got, expected in zip(rest, batches[7:15]):
        assert torch.equal(got.input_ids, expected.input_ids)
        for a, b in zip(got.images, expected.images, strict=True):
            assert torch.equal(a, b)


def test_video_only_and_zero_weight_readers(still_shards, motion_shards, tokenizer, layout):
    only_clips = build_train_loader(mixed_config("", motion_shards), tokenizer, layout)
    assert set(kinds(next(iter(only_clips)))) == {"clip"}
    no_clips = build_train_loader(mixed_config(still_shards, motion_shards, media_weights={"image": 1.0, "video": 0.0}),
                                  tokenizer, layout)
    assert set(kinds(next(iter(no_clips)))) == {"image"}
    with pytest.raises(ValueError, match="media_weights"):
        mixed_config(still_shards, motion_shards, media_weights={"audio": 1.0})


def test_cached_clip_latents_read_back_as_the_clips(motion_shards, tmp_path):
    summary = cache_latents(motion_shards, tmp_path / "latents", PixelCodec(), 32, batch_size=5, progress=False,
                            video=VideoSampling(8))
    cached = list(iter_samples(summary.pattern, 32, latents=True))
    pixels = list(iter_samples(motion_shards, 32, video=VideoSampling(8)))
    assert len(cached) == len(pixels) == 48
    for latent, clip in zip(cached, pixels):
        assert latent.image.shape == (3, 8, 32, 32)
        assert torch.allclose(latent.image, clip.image)


def test_a_video_run_records_its_clips_in_the_model(tmp_path):
    config = load_run_config("configs/tiny_video.yaml", [f"output_dir={tmp_path}", "data.num_frames=8"])
    assert (config.model.num_frames, config.model.video_fps, config.model.patch_frames) == (8, 10.0, 8)
    assert config.synthetic.media == ["video"] and config.eval.final.suite == "video"
    joint = load_run_config("configs/tiny_joint.yaml")
    assert joint.synthetic.media == ["image", "video"] and joint.eval.final_video.suite == "video"
    image_only = load_run_config("configs/tiny.yaml")
    assert image_only.model.num_frames == 1
    with pytest.raises(ValueError, match="synthetic.media"):
        load_run_config("configs/tiny.yaml", ["synthetic.media=[audio]"])
    with pytest.raises(ValueError, match="eval.every"):
        load_run_config("configs/tiny_video.yaml", ["eval.every=100"])


def test_motion_world_config_matches_the_run(tmp_path):
    from unimodal.training import pipeline

    config = load_run_config("configs/tiny_video.yaml", [f"output_dir={tmp_path}", "data.num_frames=4", "model.patch_frames=4"])
    world = pipeline.motion_config(config)
    assert isinstance(world, MotionConfig) and (world.num_frames, world.image_size) == (4, 32)
    pipeline.resolve_shards(config)
    assert config.data.video_shards.endswith("video/train") and not config.data.train_shards
    assert np.asarray(MotionWorld(world).sample(0).frames).shape == (4, 32, 32, 3)
