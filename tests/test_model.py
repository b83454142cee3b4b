"""Numeric tests of the mixed-modal model: masks, heads, losses, learning, save/load."""

import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaForCausalLM

from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.diffusion import make_process
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel, combine_outputs, noise_images
from unimodal.pretrained import load_export, save_export


def build(config, seed=0):
    torch.manual_seed(seed)
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():  # zero-initialised; make image outputs visible
        torch.nn.init.normal_(param, std=0.02)
    return model.eval()


def image(config, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, config.image_size, config.image_size, generator=generator) * 2 - 1


def zero_times(batch):
    return torch.zeros(batch.num_images)


def test_text_only_equals_plain_causal_lm(tokenizer, debug_config):
    model = build(debug_config)
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    batch = layout.collate([layout.text("a small green triangle in the center")])
    ours = model(batch, zero_times(batch)).lm_logits
    reference = LlamaForCausalLM(model.decoder.config)
    reference.model.load_state_dict(model.decoder.state_dict())
    reference.lm_head.load_state_dict(model.lm_head.state_dict())
    expected = reference.eval()(input_ids=batch.input_ids).logits
    assert_close(ours, expected)


def test_image_attention_is_bidirectional_inside_and_causal_outside(tokenizer, debug_config):
    model = build(debug_config)
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    picture = image(debug_config, 1)
    example = layout.generation("a red circle", picture)
    start = example.image_starts[0]
    first_patch, last_patch = start, start + debug_config.num_image_tokens - 1

    def states(img):
        batch = layout.collate([layout.generation("a red circle", img)])
        batch.image_is_target[:] = False
        return model(batch, zero_times(batch)).lm_logits[0]

    changed = picture.clone()
    changed[:, -debug_config.patch_size:, -debug_config.patch_size:] += 0.5  # only the last patch
    before, after = states(picture), states(changed)
    assert_close(before[:first_patch], after[:first_patch])  # text before the image: untouched
    assert (before[first_patch] - after[first_patch]).abs().max() > 1e-4  # earlier patch sees later
    assert (before[last_patch + 1] - after[last_patch + 1]).abs().max() > 1e-4  # <eoi> sees the image


def test_padding_changes_nothing(tokenizer, debug_config):
    model = build(debug_config)
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    short = layout.caption(image(debug_config, 2), "a red circle")
    long = layout.vqa(image(debug_config, 3), "how many shapes are there?", "2")
    alone = layout.collate([short])
    padded = layout.collate([short, long], pad_to_multiple_of=8)
    out_alone = model(alone, zero_times(alone))
    out_padded = model(padded, zero_times(padded))
    length = len(short)
    assert_close(out_padded.lm_logits[0, :length], out_alone.lm_logits[0], atol=1e-5, rtol=1e-5)
    assert_close(out_padded.denoise_pred[0], out_alone.denoise_pred[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_tiny_model_overfits_a_mixed_batch(tokenizer, debug_config, objective):
    debug_config.objective = objective
    torch.manual_seed(0)
    model = UniModalModel(debug_config)
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    batch = layout.collate([
        layout.generation("a red circle", image(debug_config, 4)),
        layout.caption(image(debug_config, 5), "a small green triangle in the center"),
        layout.vqa(image(debug_config, 6), "what colour is the circle?", "red"),
        layout.generation("a blue square", image(debug_config, 7)),
    ])
    # A fixed batch: fixed noise and times, so the denoise target is learnable by heart.
    noised, timesteps, target = noise_images(make_process(debug_config), batch.images, batch.image_is_target,
                                             0.0, torch.Generator().manual_seed(0))
    batch = batch.with_images(noised)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        out = model(batch, timesteps, target)
        first = first or (out.lm_loss.item(), out.denoise_loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.lm_loss.item() < 0.1 * first[0]
    assert out.denoise_loss.item() < 0.1 * first[1]


def test_save_load_reproduces_outputs_exactly(tokenizer, debug_config, tmp_path):
    model = build(debug_config)
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    batch = layout.collate([layout.generation("a red circle", image(debug_config, 8)),
                            layout.caption(image(debug_config, 9), "a red circle")])
    timesteps = torch.tensor([0.7, 0.0])
    save_export(tmp_path / "export", model, tokenizer, PixelCodec())
    loaded, loaded_tokenizer, codec = load_export(tmp_path / "export")
    assert isinstance(codec, PixelCodec) and loaded_tokenizer.vocab_size == tokenizer.vocab_size
    before, after = model(batch, timesteps), loaded(batch, timesteps)
    assert_close(after.lm_logits, before.lm_logits, rtol=0, atol=0)
    assert_close(after.denoise_pred, before.denoise_pred, rtol=0, atol=0)


TRAINING_ONLY = ("deepspeed", "webdataset", "datasets", "tensorboard", "matplotlib", "torchmetrics", "gradio",
                 "unimodal.training", "unimodal.data", "unimodal.evaluation", "training", "data", "eval")


def test_inference_round_trip_loads_no_training_stack(tokenizer, tmp_path):
    """The inference install (`pip install unimodal`: no extras) is enough to load an export and
    caption / answer / generate: that path imports none of the training, data or eval packages."""
    config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)
    save_export(tmp_path / "export", build(config), tokenizer, PixelCodec())
    code = f"""
import sys
import torch
from unimodal import UniModal
model = UniModal.from_pretrained({str(tmp_path / "export")!r})
image = torch.zeros(3, {config.image_size}, {config.image_size})
assert isinstance(model.caption([image], max_new_tokens=3)[0], str)
assert isinstance(model.answer([image], ["what?"], max_new_tokens=3)[0], str)
assert len(model.generate(["a red circle"], num_steps=2, seed=0)) == 1
import unimodal.cli
loaded = [name for name in {TRAINING_ONLY!r} if name in sys.modules]
assert not loaded, f"the inference path imported {{loaded}}"
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


@pytest.mark.parametrize("pad,split", [(1, (3, 1, 1)), (8, (3, 2, 8))])
def test_length_split_batch_gives_the_whole_batchs_losses_and_gradients(tokenizer, debug_config, pad, split):
    """`Batch.split_by_length` + `combine_outputs` is an exact rewrite of one padded forward, also
    with extra padding (`pad_to_multiple_of`, and parts of row and length multiples)."""
    model = build(debug_config).train()
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    turns = [("what colour is the circle?", "red"), ("how many shapes are there?", "2")] * 4
    examples = [layout.caption(image(debug_config, 0), "a red circle"), layout.vqa_turns(image(debug_config, 1), turns),
                layout.generation("a large blue square", image(debug_config, 2)), layout.text("a small green"),
                layout.vqa_turns(image(debug_config, 3), turns[:3]), layout.generation("", image(debug_config, 4))]
    batch = layout.collate(examples, pad_to_multiple_of=pad)
    process = make_process(debug_config)
    noised, times, target = noise_images(process, batch.images, batch.image_is_target, 0.0,
                                         torch.Generator().manual_seed(0))
    whole = model(batch.with_images(noised), times, target)
    whole.loss.backward()
    whole_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    parts, outputs = batch.with_images(noised).split_by_length(*split), []
    assert len(parts) > 1
    for part in parts:  # each part's images are some of the batch's: find them to pick times and targets
        index = [next(n for n in range(len(noised)) if torch.equal(noised[n], img)) for img in part.images]
        outputs.append(model(part, times[index], target[index]))
    merged = combine_outputs(outputs, debug_config)
    assert_close(merged.lm_loss, whole.lm_loss)
    assert_close(merged.denoise_loss, whole.denoise_loss)
    assert_close(merged.loss, whole.loss)
    assert merged.num_lm_tokens == whole.num_lm_tokens and merged.num_target_images == 2
    merged.loss.backward()
    for param, expected in zip(model.parameters(), whole_grads):
        assert_close(param.grad, expected, atol=1e-6, rtol=1e-4)


def test_compiled_layers_give_the_eager_losses_and_gradients(tokenizer, debug_config):
    """`compile_layers` (regional torch.compile, dynamic shapes) changes speed, not results: the
    same losses and gradients over two batches of different lengths, and the same parameter names."""
    layout = SequenceLayout(tokenizer, debug_config.num_image_tokens)
    batches = [layout.collate([layout.caption(image(debug_config, 0), "a red circle"),
                               layout.generation("a large blue square", image(debug_config, 1))]),
               layout.collate([layout.vqa_turns(image(debug_config, 2), [("how many shapes are there?", "2")] * 3),
                               layout.generation("", image(debug_config, 3)), layout.text("a small green")])]
    process = make_process(debug_config)
    eager, compiled = build(debug_config).train(), build(debug_config).train()
    names = [name for name, _ in compiled.named_parameters()]
    compiled.compile_layers()
    assert [name for name, _ in compiled.named_parameters()] == names
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for batch in batches:
        noised, times, target = noise_images(process, batch.images, batch.image_is_target, 0.0,
                                             torch.Generator().manual_seed(0))
        outputs = [model(batch.with_images(noised), times, target) for model in (eager, compiled)]
        assert_close(outputs[1].loss, outputs[0].loss, atol=1e-5, rtol=1e-5)
        for output in outputs:
            output.loss.backward()
        for (name, expected), param in zip(eager.named_parameters(), compiled.parameters()):
            assert_close(param.grad, expected.grad, atol=1e-5, rtol=1e-4, msg=name)
        eager.zero_grad()
        compiled.zero_grad()
