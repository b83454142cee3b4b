"""The public API on tiny random models: cached inference equals recomputation, batching and seeds
do not change results, save -> load reproduces them, and bad input fails with a clear error."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from unimodal.api import UniModal
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.images import to_model_tensor
from unimodal.model import UniModalModel
from unimodal.sampling import decode_text

NEVER_EOS = -1  # an <eos> id no token matches: decoding runs the full max_new_tokens
QUESTIONS = ["what colour is the circle?", "how many shapes are there?", "what?"]  # different lengths
PROMPTS = ["a red circle", "a small green triangle in the center", "a large yellow square on the left"]


def make_api(tokenizer, seed=0, **overrides) -> UniModal:
    config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, **overrides)
    torch.manual_seed(seed)
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():  # zero-initialised; make images depend on the model
        torch.nn.init.normal_(param, std=0.1)
    return UniModal(model, tokenizer, PixelCodec())


@pytest.fixture(scope="module")
def api(tokenizer) -> UniModal:
    return make_api(tokenizer)


def picture(seed, size=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=generator)  # floats are read as [0, 1]


def pictures(num):
    return [picture(seed) for seed in range(num)]


def decode_with_logits(api, prompts, latents, eos_id, max_new_tokens, use_cache):
    """decode_text's token ids and the (steps, R, V) logits it chose them from."""
    logits = []
    hook = api.model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out.clone()))
    try:
        ids = decode_text(api.model, api.layout, prompts, max_new_tokens, use_cache=use_cache, eos_id=eos_id)
    finally:
        hook.remove()
    return ids, torch.stack(logits)


def vqa_prompts(api, images, questions):
    latents = api._encode_images(images, "images")
    return [api.layout.vqa_prompt(latent, q) for latent, q in zip(latents, questions)], latents


# ----------------------------------------------------------------------------- text decoding
def test_kv_cached_decoding_gives_the_tokens_of_uncached_decoding(api):
    prompts, latents = vqa_prompts(api, pictures(3), QUESTIONS)
    assert len({len(p) for p in prompts}) == 3  # left padding is exercised
    for eos_id in (api.tokenizer.eos_id, NEVER_EOS):
        cached, cached_logits = decode_with_logits(api, prompts, latents, eos_id, 16, use_cache=True)
        full, full_logits = decode_with_logits(api, prompts, latents, eos_id, 16, use_cache=False)
        assert cached == full
        assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    assert all(len(row) == 16 for row in cached)  # NEVER_EOS forced every step
    # The API (cache on) returns exactly these tokens as text.
    expected, _ = decode_with_logits(api, prompts, latents, api.tokenizer.eos_id, 16, use_cache=True)
    assert api.answer(pictures(3), QUESTIONS) == [api.tokenizer.decode(row).strip() for row in expected]


def test_batched_decoding_with_left_padding_equals_one_at_a_time(api):
    images = pictures(3)
    assert api.caption(images, max_new_tokens=8) == [api.caption([image], max_new_tokens=8)[0] for image in images]
    assert api.answer(images, QUESTIONS) == [api.answer([i], [q])[0] for i, q in zip(images, QUESTIONS)]
    # Numerically: each row's logits at every step match the row decoded alone.
    prompts, latents = vqa_prompts(api, images, QUESTIONS)
    batched_ids, batched_logits = decode_with_logits(api, prompts, latents, NEVER_EOS, 12, use_cache=True)
    for row in range(3):
        alone_ids, alone_logits = decode_with_logits(api, prompts[row: row + 1], latents[row: row + 1], NEVER_EOS,
                                                     12, use_cache=True)
        assert alone_ids[0] == batched_ids[row]
        assert_close(batched_logits[:, row], alone_logits[:, 0], atol=1e-5, rtol=1e-5)


def test_sampled_decoding_is_seeded(api):
    images = pictures(2)
    kwargs = dict(temperature=1.0, top_p=0.9, max_new_tokens=8)
    first = api.caption(images, seed=3, **kwargs)
    assert first == api.caption(images, seed=3, **kwargs)
    assert first != api.caption(images, seed=4, **kwargs)


# ----------------------------------------------------------------------------- image generation
@pytest.mark.parametrize("scheduler", ["euler", "dpmsolver++"])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_cached_prefix_sampling_equals_recomputing_the_prefix(api, scheduler, guidance_scale):
    kwargs = dict(num_steps=4, guidance_scale=guidance_scale, scheduler=scheduler, seed=1, output_type="pt")
    cached = api.generate(PROMPTS, use_cache=True, **kwargs)  # prompts of different lengths: padded prefixes
    recomputed = api.generate(PROMPTS, use_cache=False, **kwargs)
    assert cached.shape == (3, 3, 16, 16)
    assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)


def test_prompt_and_guidance_change_the_image(api):
    """Guards the equalities above against a model whose output ignores its input."""
    kwargs = dict(num_steps=4, seed=0, output_type="pt")
    base = api.generate(PROMPTS[:2], **kwargs)
    other_prompt = api.generate([PROMPTS[0], PROMPTS[2]], **kwargs)
    unguided = api.generate(PROMPTS[:2], guidance_scale=1.0, **kwargs)
    assert_close(base[0], other_prompt[0], atol=1e-5, rtol=1e-5)  # same prompt, same seed
    assert (base[1] - other_prompt[1]).abs().max() > 1e-3  # same seed, another prompt
    assert (base - unguided).abs().max() > 1e-3


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_a_seed_gives_the_same_image_alone_and_in_a_batch(api, guidance_scale):
    """Prompt i of a batch uses the noise of seed + i (see UniModal.generate)."""
    kwargs = dict(num_steps=4, guidance_scale=guidance_scale, output_type="pt")
    batch = api.generate(PROMPTS, seed=7, **kwargs)
    assert_close(batch, api.generate(PROMPTS, seed=7, **kwargs), atol=0, rtol=0)  # repeatable
    for i, prompt in enumerate(PROMPTS):
        assert_close(batch[i], api.generate([prompt], seed=7 + i, **kwargs)[0], atol=1e-5, rtol=1e-5)
    assert (batch - api.generate(PROMPTS, seed=8, **kwargs)).abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", ["euler", "dpmsolver++"])
def test_generate_calls_the_callback_once_per_step_and_keeps_the_images(api, scheduler):
    """`callback(step, num_steps)` reports progress (the demo's progress bar) and changes nothing."""
    kwargs = dict(num_steps=5, scheduler=scheduler, seed=3, output_type="pt")
    calls = []
    reported = api.generate(PROMPTS[:2], callback=lambda step, total: calls.append((step, total)), **kwargs)
    assert calls == [(step, 5) for step in range(1, 6)]
    assert_close(reported, api.generate(PROMPTS[:2], **kwargs), atol=0, rtol=0)


def test_generate_returns_pil_images_of_any_allowed_size(api):
    images = api.generate(PROMPTS[:2], num_steps=2)
    assert [im.size for im in images] == [(16, 16)] * 2 and all(im.mode == "RGB" for im in images)
    wide = api.generate(PROMPTS[:1], num_steps=3, height=8, width=24, output_type="pt", use_cache=True)
    assert wide.shape == (1, 3, 8, 24) and wide.min() >= -1 and wide.max() <= 1
    recomputed = api.generate(PROMPTS[:1], num_steps=3, height=8, width=24, output_type="pt", use_cache=False)
    assert_close(wide, recomputed, atol=1e-5, rtol=1e-5)
    assert api.generate(PROMPTS[:1], num_steps=2, height=8, width=24)[0].size == (24, 8)


def test_ddpm_objective_generates_and_is_seeded(tokenizer):
    ddpm = make_api(tokenizer, objective="ddpm")
    images = ddpm.generate(PROMPTS[:2], num_steps=4)  # default scheduler: ddim
    assert [im.size for im in images] == [(16, 16)] * 2
    for scheduler in ("ddim", "ddpm"):  # ddpm adds noise at each step: it must come from the seed too
        kwargs = dict(num_steps=4, scheduler=scheduler, output_type="pt")
        cached = ddpm.generate(PROMPTS[:2], seed=3, **kwargs)
        assert cached.isfinite().all()
        assert_close(cached, ddpm.generate(PROMPTS[:2], seed=3, use_cache=False, **kwargs), atol=1e-5, rtol=1e-5)
        assert_close(cached[1], ddpm.generate(PROMPTS[1:2], seed=4, **kwargs)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown scheduler 'euler'.*'ddim'"):
        ddpm.generate(PROMPTS[:1], scheduler="euler")


# ----------------------------------------------------------------------------- save / load
def test_save_then_load_gives_the_same_captions_answers_and_images(api, tmp_path):
    folder = api.save_pretrained(tmp_path / "export")
    loaded = UniModal.from_pretrained(folder)
    images = pictures(2)
    assert loaded.caption(images) == api.caption(images)
    assert loaded.answer(images, QUESTIONS[:2]) == api.answer(images, QUESTIONS[:2])
    kwargs = dict(num_steps=3, seed=2, output_type="pt")
    assert_close(loaded.generate(PROMPTS, **kwargs), api.generate(PROMPTS, **kwargs), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="not a unimodal export folder"):
        UniModal.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- bad input
GOOD = picture(0)
BAD_INPUTS = {
    # name: (call, error type, message pattern)
    "caption of a path": (lambda m: m.caption("cat.png"), TypeError, "images must be a list of images"),
    "caption of one 3-D tensor": (lambda m: m.caption(GOOD), TypeError, "images must be a list of images"),
    "caption of nothing": (lambda m: m.caption([]), ValueError, "images is empty"),
    "caption of a missing file": (lambda m: m.caption(["no-such-cat.png"]), FileNotFoundError, "no-such-cat.png"),
    "caption of a non-image": (lambda m: m.caption([{"x": 1}]), TypeError, "expected a path, bytes, PIL.Image"),
    "caption zero tokens": (lambda m: m.caption([GOOD], max_new_tokens=0), ValueError, "max_new_tokens must be"),
    "caption negative temperature": (lambda m: m.caption([GOOD], temperature=-1.0), ValueError, "temperature must be >= 0"),
    "caption top_p zero": (lambda m: m.caption([GOOD], top_p=0.0), ValueError, r"top_p must lie in \(0, 1\]"),
    "answer of one question string": (lambda m: m.answer([GOOD], "what?"), TypeError,
                                      r"questions must be a list of strings; wrap a single one as \['what\?'\]"),
    "answer without questions": (lambda m: m.answer([GOOD], []), ValueError, "questions is empty"),
    "answer mismatched lengths": (lambda m: m.answer([GOOD, GOOD], ["what?"]), ValueError,
                                  "one question per image: got 2 images and 1 questions"),
    "answer non-string question": (lambda m: m.answer([GOOD], [3]), TypeError, "questions must all be strings"),
    "generate a bare string": (lambda m: m.generate("a red circle"), TypeError,
                               r"prompts must be a list of strings; wrap a single one"),
    "generate a tuple of ints": (lambda m: m.generate((1, 2)), TypeError, "prompts must all be strings; found int"),
    "generate a dict": (lambda m: m.generate({"a": 1}), TypeError, "prompts must be a list of strings, got dict"),
    "generate nothing": (lambda m: m.generate([]), ValueError, "prompts is empty"),
    "zero steps": (lambda m: m.generate(["x"], num_steps=0), ValueError, "num_steps must be a positive int"),
    "fractional steps": (lambda m: m.generate(["x"], num_steps=2.5), ValueError, "num_steps must be a positive int"),
    "unknown scheduler": (lambda m: m.generate(["x"], scheduler="ddim"), ValueError,
                          r"unknown scheduler 'ddim'; for objective 'flow' choose one of \('euler', 'dpmsolver\+\+'\)"),
    "bad output_type": (lambda m: m.generate(["x"], output_type="np"), ValueError, "output_type must be 'pil' or 'pt'"),
    "guidance below 1": (lambda m: m.generate(["x"], guidance_scale=0.5), ValueError,
                         r"guidance_scale must be >= 1 \(1 disables guidance\)"),
    "height not a multiple": (lambda m: m.generate(["x"], height=10), ValueError,
                              "height must be a positive multiple of 4"),
    "callback not callable": (lambda m: m.generate(["x"], num_steps=1, callback=3), TypeError,
                              r"callback must be a function callback\(step, num_steps\), got int"),
    "width not positive": (lambda m: m.generate(["x"], width=0), ValueError, "width must be a positive multiple of 4"),
    "six channels": (lambda m: m.caption([torch.rand(6, 16, 6)]), ValueError, "an image needs 1, 2, 3 or 4 channels"),
    "five channels": (lambda m: m.caption([np.zeros((16, 16, 5), np.uint8)]), ValueError,
                      "an image needs 1, 2, 3 or 4 channels"),
    "one dimension": (lambda m: m.caption([torch.rand(16)]), ValueError,
                      r"must be \(H, W\), \(H, W, C\) or \(C, H, W\); got shape \(16,\)"),
    # (F, C, H, W) inside the list is a clip now (tests/test_video_api.py); a batch of clips is not an item
    "a batch inside the list": (lambda m: m.caption([torch.rand(2, 2, 3, 16, 16)]), ValueError,
                                r"got shape \(2, 2, 3, 16, 16\)"),
    "int64 tensor": (lambda m: m.caption([torch.zeros(3, 16, 16, dtype=torch.int64)]), TypeError,
                     "image arrays must be uint8, uint16, bool or float, got torch.int64"),
    "[-1, 1] floats": (lambda m: m.caption([torch.rand(3, 16, 16) * 2 - 1]), ValueError,
                       r"must lie in \[0, 1\].*\(x \+ 1\) / 2"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(api, name):
    call, error, message = BAD_INPUTS[name]
    with pytest.raises(error, match=message):
        call(api)


# ----------------------------------------------------------------------------- image formats
RGB = np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8)
EXPECTED = torch.from_numpy(RGB).permute(2, 0, 1).float() / 255 * 2 - 1  # (3, 16, 16) in [-1, 1]
CHW01 = torch.from_numpy(RGB).permute(2, 0, 1).float() / 255
FORMATS = {
    "PIL RGB": Image.fromarray(RGB),
    "PIL RGBA, opaque": Image.fromarray(np.dstack([RGB, np.full((16, 16), 255, np.uint8)])),
    "numpy HWC uint8": RGB,
    "numpy HWC uint8, flipped view": np.ascontiguousarray(RGB[..., ::-1])[..., ::-1],  # negative strides
    "numpy CHW float [0, 1]": CHW01.numpy(),
    "tensor HWC uint8": torch.from_numpy(RGB),
    "tensor CHW float [0, 1]": CHW01,
    "tensor CHW float64 [0, 1]": CHW01.double(),
    "tensor (1, 3, H, W)": CHW01[None],
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_image_formats_give_the_same_model_tensor(name):
    tensor = to_model_tensor(FORMATS[name], 16)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert_close(tensor, EXPECTED, atol=1e-5, rtol=0)


def test_grayscale_images_fill_three_channels():
    gray = RGB[..., 0]
    expected = torch.from_numpy(gray).float()[None].expand(3, -1, -1) / 255 * 2 - 1
    for image in (Image.fromarray(gray), gray, gray[..., None], torch.from_numpy(gray), torch.from_numpy(gray)[None]):
        assert_close(to_model_tensor(image, 16), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (9, 16), (64, 64)])
def test_any_size_is_resized_and_center_cropped(shape):
    """A red centre between blue borders: the crop keeps the centre (the shorter side fills S)."""
    height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 255  # red
    border = (max(height, width) - min(height, width)) // 2 - 4  # just outside what the crop keeps
    if border > 0 and width > height:
        image[:, :border] = image[:, -border:] = (0, 0, 255)
    elif border > 0:
        image[:border] = image[-border:] = (0, 0, 255)
    for variant in (image, Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1).float() / 255):
        tensor = to_model_tensor(variant, 16)
        assert tensor.shape == (3, 16, 16) and tensor.min() >= -1 and tensor.max() <= 1
        red = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 16, 16)
        assert_close(tensor, red, atol=1e-3, rtol=0)


def test_the_api_takes_a_batch_tensor_and_mixed_formats(api):
    images = pictures(3)
    expected = api.caption(images, max_new_tokens=8)
    assert api.caption(torch.stack(images), max_new_tokens=8) == expected  # (N, 3, H, W)
    mixed = [images[0], to_pil_image(images[1]), images[2][None].numpy()]
    from_mixed = api.caption(mixed, max_new_tokens=8)
    assert from_mixed[0] == expected[0] and from_mixed[2] == expected[2]
    big = torch.nn.functional.interpolate(images[0][None], scale_factor=4, mode="nearest")[0]  # 64x64 of 16x16
    assert api.caption([big], max_new_tokens=8) == expected[:1]


def to_pil_image(tensor):
    return Image.fromarray((tensor.permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy())


# ----------------------------------------------------------------------------- shared image RoPE
@pytest.fixture(scope="module")
def shared_rope_api(tokenizer) -> UniModal:
    return make_api(tokenizer, image_rope="shared")


def test_shared_image_rope_decoding_cached_batched_and_training_agree(shared_rope_api):
    api = shared_rope_api
    prompts, latents = vqa_prompts(api, pictures(3), QUESTIONS)
    cached, cached_logits = decode_with_logits(api, prompts, latents, NEVER_EOS, 8, use_cache=True)
    full, full_logits = decode_with_logits(api, prompts, latents, NEVER_EOS, 8, use_cache=False)
    assert cached == full
    assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-5)
    for row in range(3):  # left padding in the batch changes nothing
        alone_ids, alone_logits = decode_with_logits(api, prompts[row: row + 1], latents[row: row + 1], NEVER_EOS,
                                                     8, use_cache=True)
        assert alone_ids[0] == cached[row]
        assert_close(cached_logits[:, row], alone_logits[:, 0], atol=1e-5, rtol=1e-5)
    # The training forward (right-padded batch, layout positions) predicts the same first token.
    batch = api.layout.collate(prompts)
    with torch.no_grad():
        train_logits = api.model(batch, torch.zeros(3)).lm_logits  # (R, T, V)
    last = torch.stack([train_logits[row, len(prompt) - 1] for row, prompt in enumerate(prompts)])
    assert_close(last, cached_logits[0], atol=1e-5, rtol=1e-5)


def test_shared_image_rope_changes_what_the_model_computes(api, shared_rope_api):
    """Same weights, other positions: the two modes must not silently coincide."""
    shared_rope_api.model.load_state_dict(api.model.state_dict())
    prompts, latents = vqa_prompts(api, pictures(2), QUESTIONS[:2])
    _, sequence_logits = decode_with_logits(api, prompts, latents, NEVER_EOS, 2, use_cache=True)
    _, shared_logits = decode_with_logits(shared_rope_api, prompts, latents, NEVER_EOS, 2, use_cache=True)
    assert (sequence_logits - shared_logits).abs().max() > 1e-4


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_shared_image_rope_cached_prefix_sampling_equals_recomputing(shared_rope_api, guidance_scale):
    kwargs = dict(num_steps=3, guidance_scale=guidance_scale, seed=1, output_type="pt")
    cached = shared_rope_api.generate(PROMPTS, use_cache=True, **kwargs)
    recomputed = shared_rope_api.generate(PROMPTS, use_cache=False, **kwargs)
    assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
