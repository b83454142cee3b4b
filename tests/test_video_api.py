"""Clips through the public API and the shell: every clip form captions alike, clips batch with
images, generated clips are seeded per prompt and survive save -> load."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.api import UniModal
from unimodal.cli import main as cli_main
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.model import UniModalModel
from unimodal.video import read_video, save_video

PROMPTS = ["a red circle moves from left to right", "a blue square stays still", "a green triangle"]


@pytest.fixture(scope="module")
def api(tokenizer) -> UniModal:
    # the video job's settings: temporal patches, x-prediction, the MLP denoise head
    config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, patch_frames=2, num_frames=4,
                                prediction="sample", denoise_head="mlp")
    torch.manual_seed(0)
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():  # zero-initialised; make clips depend on the model
        torch.nn.init.normal_(param, std=0.1)
    return UniModal(model, tokenizer, PixelCodec())


def frames(seed, num_frames=4, size=16) -> np.ndarray:
    """(F, H, W, 3) uint8 with few colours (GIF stores them exactly)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, size=(num_frames, size, size, 3)) * 255).astype(np.uint8)


def test_every_clip_form_gives_the_caption_of_its_frame_tensor(api, tmp_path):
    clip = frames(0)
    tensor = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255  # (F, C, H, W) in [0, 1]
    path = save_video(list(clip), tmp_path / "clip.gif")
    forms = [tensor, clip, [Image.fromarray(f) for f in clip], str(path), path.read_bytes()]
    captions = [api.caption([form], max_new_tokens=6) for form in forms]
    assert all(c == captions[0] for c in captions), captions
    answers = [api.answer([form], ["which way does the red circle move?"], max_new_tokens=4) for form in forms[:3]]
    assert all(a == answers[0] for a in answers)


def test_clips_and_images_caption_in_one_batch_as_one_by_one(api):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    items = [frames(1), image, frames(2)]
    together = api.caption(items, max_new_tokens=6)
    assert together == [api.caption([item], max_new_tokens=6)[0] for item in items]


def test_a_video_file_is_sampled_to_the_models_clip_length(api, tmp_path):
    long = frames(3, num_frames=10)
    path = save_video(list(long), tmp_path / "long.gif")
    assert api.caption([str(path)], max_new_tokens=6) == api.caption([long[3:7]], max_new_tokens=6)  # the centred 4


def test_generated_clips_are_seeded_per_prompt_and_shaped(api):
    clips = api.generate(PROMPTS, num_frames=4, num_steps=2, seed=3)
    assert len(clips) == 3 and all(len(c) == 4 and c[0].size == (16, 16) for c in clips)
    alone = api.generate(PROMPTS[1:2], num_frames=4, num_steps=2, seed=4)
    assert [np.asarray(f).tolist() for f in alone[0]] == [np.asarray(f).tolist() for f in clips[1]]
    tensor = api.generate(PROMPTS[:2], num_frames=4, num_steps=2, seed=3, output_type="pt")
    assert tensor.shape == (2, 4, 3, 16, 16) and 0 <= tensor.min() and tensor.max() <= 1
    assert np.array_equal(np.asarray(clips[0][2]), (tensor[0, 2] * 255).round().byte().permute(1, 2, 0).numpy())


@pytest.mark.parametrize("num_frames", [3, 0, -2, 2.0, True])
def test_bad_frame_counts_are_refused(api, num_frames):
    with pytest.raises(ValueError, match="num_frames"):
        api.generate(PROMPTS[:1], num_frames=num_frames, num_steps=1)


def test_a_clip_the_temporal_patches_do_not_divide_is_refused(api):
    with pytest.raises(ValueError, match="patch_frames"):
        api.caption([frames(0, num_frames=3)])


def test_save_then_load_gives_the_same_clips(api, tmp_path):
    api.save_pretrained(tmp_path / "export")
    loaded = UniModal.from_pretrained(tmp_path / "export")
    assert (loaded.config.patch_frames, loaded.config.num_frames) == (2, 4)
    a = api.generate(PROMPTS[:1], num_frames=4, num_steps=2, output_type="pt")
    b = loaded.generate(PROMPTS[:1], num_frames=4, num_steps=2, output_type="pt")
    assert torch.equal(a, b)


def test_the_shell_generates_and_captions_clips(api, tmp_path, capsys):
    api.save_pretrained(tmp_path / "export")
    model = str(tmp_path / "export")
    assert cli_main(["generate", *PROMPTS[:2], "--model", model, "--num-frames", "4", "--num-steps", "2",
                     "--out", str(tmp_path / "grid.gif"), "--out-dir", str(tmp_path / "clips")]) == 0
    grid = read_video(tmp_path / "grid.gif", None)
    assert grid.shape[0] == 4  # one grid per frame
    written = sorted((tmp_path / "clips").glob("*.gif"))
    assert len(written) == 2 and read_video(written[0], 4).shape == (4, 16, 16, 3)
    capsys.readouterr()
    assert cli_main(["caption", str(written[0]), "--model", model, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith(str(written[0]) + "\t")
    with pytest.raises(SystemExit):
        cli_main(["generate", "x", "--model", model, "--num-frames", "4", "--out", str(tmp_path / "grid.png")])
