"""Numeric tests of the mixed-modal model: masks, heads, losses, learning, save/load."""

import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaForCausalLM

from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel
from unimodal.objective import Objective
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


def make_layout(tokenizer, config):
    return SequenceLayout(tokenizer, config.input_patch_size())


def scored(model, batch, seed=0):
    """Noise the batch's items (a fixed generator), forward, and the objective's losses."""
    objective = Objective(model.config)
    noised = objective.noise(batch.images, batch.image_is_target, torch.Generator().manual_seed(seed))
    return objective.losses(model(batch.with_images(noised.images), noised.timesteps), batch, noised.targets)


def test_text_only_equals_plain_causal_lm(tokenizer, debug_config):
    model = build(debug_config)
    layout = make_layout(tokenizer, debug_config)
    batch = layout.collate([layout.text("a small green triangle in the center")])
    ours = model(batch, zero_times(batch)).lm_logits
    reference = LlamaForCausalLM(model.decoder.config)
    reference.model.load_state_dict(model.decoder.state_dict())
    reference.lm_head.load_state_dict(model.lm_head.state_dict())
    expected = reference.eval()(input_ids=batch.input_ids).logits
    assert_close(ours, expected)


def test_image_attention_is_bidirectional_inside_and_causal_outside(tokenizer, debug_config):
    model = build(debug_config)
    layout = make_layout(tokenizer, debug_config)
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
    layout = make_layout(tokenizer, debug_config)
    short = layout.caption(image(debug_config, 2), "a red circle")
    long = layout.vqa(image(debug_config, 3), "how many shapes are there?", "2")
    alone = layout.collate([short])
    padded = layout.collate([short, long], pad_to_multiple_of=8)
    out_alone = model(alone, zero_times(alone))
    out_padded = model(padded, zero_times(padded))
    length = len(short)
    assert_close(out_padded.lm_logits[0, :length], out_alone.lm_logits[0], atol=1e-5, rtol=1e-5)
    assert_close(out_padded.denoise_pred[: debug_config.num_image_tokens], out_alone.denoise_pred, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_tiny_model_overfits_a_mixed_batch(tokenizer, debug_config, objective):
    debug_config.objective = objective
    torch.manual_seed(0)
    model = UniModalModel(debug_config)
    layout = make_layout(tokenizer, debug_config)
    batch = layout.collate([
        layout.generation("a red circle", image(debug_config, 4)),
        layout.caption(image(debug_config, 5), "a small green triangle in the center"),
        layout.vqa(image(debug_config, 6), "what colour is the circle?", "red"),
        layout.generation("a blue square", image(debug_config, 7)),
    ])
    # A fixed batch: fixed noise and times, so the denoise target is learnable by heart.
    objective = Objective(debug_config)
    noised = objective.noise(batch.images, batch.image_is_target, torch.Generator().manual_seed(0))
    noisy_batch = batch.with_images(noised.images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        out = objective.losses(model(noisy_batch, noised.timesteps), batch, noised.targets)
        first = first or (out.lm_loss.item(), out.denoise_loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.lm_loss.item() < 0.1 * first[0]
    assert out.denoise_loss.item() < 0.1 * first[1]


def test_save_load_reproduces_outputs_exactly(tokenizer, debug_config, tmp_path):
    model = build(debug_config)
    layout = make_layout(tokenizer, debug_config)
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


def mixed_examples(layout, config, sizes=None):
    """Short and long sequences, images of several sizes (any aspect) in different places."""
    sizes = sizes or [(config.image_size, config.image_size)] * 5
    img = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i, (h, w) in enumerate(sizes)]
    turns = [("what colour is the circle?", "red"), ("how many shapes are there?", "2")] * 4
    return [layout.caption(img[0], "a red circle"), layout.vqa_turns(img[1], turns),
            layout.generation("a large blue square", img[2]), layout.text("a small green"),
            layout.vqa_turns(img[3], turns[:3]), layout.generation("", img[4])]


def losses_and_grads(model, batch):
    model.zero_grad()
    losses = scored(model, batch)
    losses.loss.backward()
    return losses, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("sizes", [None, [(16, 16), (8, 24), (24, 8), (16, 16), (8, 16)]])
def test_packed_rows_give_the_losses_and_gradients_of_one_example_per_row(tokenizer, debug_config, sizes):
    """Packing is an exact rewrite: examples packed several to a row (with padding, empty rows and
    items of several grids) train as the same examples collated one per row."""
    model = build(debug_config).train()
    layout = make_layout(tokenizer, debug_config)
    examples = mixed_examples(layout, debug_config, sizes)
    packed = layout.pack(examples, max_tokens_per_row=96, pad_to_multiple_of=8, row_multiple=4)
    assert packed.num_rows < len(examples) and packed.input_ids.shape[1] % 8 == 0
    alone = layout.collate([examples[i] for i in packed.example_index.tolist()])  # the packed order of items
    (packed_losses, packed_grads), (alone_losses, alone_grads) = (losses_and_grads(model, b) for b in (packed, alone))
    for name in ("lm_loss", "denoise_loss", "loss"):
        assert_close(getattr(packed_losses, name), getattr(alone_losses, name), atol=1e-5, rtol=1e-5)
    assert packed_losses.num_lm_tokens == alone_losses.num_lm_tokens and packed_losses.num_target_images == 2
    for (name, _), got, expected in zip(model.named_parameters(), packed_grads, alone_grads):
        assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=name)


def test_items_of_several_sizes_in_one_batch_equal_each_alone(tokenizer, debug_config):
    model = build(debug_config)
    layout = make_layout(tokenizer, debug_config)
    items = [image(debug_config, 0), torch.rand(3, 8, 24) * 2 - 1, torch.rand(3, 24, 8) * 2 - 1]
    examples = [layout.generation("a red circle", item) for item in items]
    times = torch.tensor([0.3, 0.6, 0.9])
    batch = layout.collate(examples)
    together = model(batch, times)
    offset = 0
    for index, example in enumerate(examples):
        single = layout.collate([example])
        alone = model(single, times[index: index + 1])
        count = alone.denoise_pred.shape[0]
        assert_close(together.denoise_pred[offset: offset + count], alone.denoise_pred, atol=1e-5, rtol=1e-5)
        assert_close(together.lm_logits[index, : len(example)], alone.lm_logits[0], atol=1e-5, rtol=1e-5)
        offset += count


def test_flex_attention_gives_the_sdpa_outputs(tokenizer, debug_config):
    """The FlexAttention BlockMask path (CUDA's default) computes what the dense SDPA mask does; on
    the CPU the forward is compared (flex has no CPU backward), on CUDA gradients too."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layout = make_layout(tokenizer, debug_config)
    batch = layout.pack(mixed_examples(layout, debug_config), max_tokens_per_row=128).to(device)
    outputs = {}
    for backend in ("sdpa", "flex"):
        debug_config.attention = backend
        model = build(debug_config).to(device)
        if device == "cpu":
            with torch.no_grad():
                outputs[backend] = model(batch, torch.full((batch.num_images,), 0.5, device=device))
        else:
            losses, grads = losses_and_grads(model.train(), batch)
            outputs[backend] = (losses, grads)
    if device == "cpu":
        assert_close(outputs["flex"].lm_logits, outputs["sdpa"].lm_logits, atol=1e-4, rtol=1e-4)
        assert_close(outputs["flex"].denoise_pred, outputs["sdpa"].denoise_pred, atol=1e-4, rtol=1e-4)
    else:
        assert_close(outputs["flex"][0].loss, outputs["sdpa"][0].loss, atol=1e-4, rtol=1e-4)
        for got, expected in zip(outputs["flex"][1], outputs["sdpa"][1]):
            assert_close(got, expected, atol=1e-4, rtol=1e-3)


def test_compiled_layers_give_the_eager_losses_and_gradients(tokenizer, debug_config):
    """`compile_layers` (regional torch.compile, dynamic shapes) changes speed, not results: the
    same losses and gradients over two batches of different lengths, and the same parameter names."""
    layout = make_layout(tokenizer, debug_config)
    batches = [layout.collate([layout.caption(image(debug_config, 0), "a red circle"),
                               layout.generation("a large blue square", image(debug_config, 1))]),
               layout.collate([layout.vqa_turns(image(debug_config, 2), [("how many shapes are there?", "2")] * 3),
                               layout.generation("", image(debug_config, 3)), layout.text("a small green")])]
    eager, compiled = build(debug_config).train(), build(debug_config).train()
    names = [name for name, _ in compiled.named_parameters()]
    compiled.compile_layers()
    assert [name for name, _ in compiled.named_parameters()] == names
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for batch in batches:
        outputs = [scored(model, batch) for model in (eager, compiled)]
        assert_close(outputs[1].loss, outputs[0].loss, atol=1e-5, rtol=1e-5)
        for output in outputs:
            output.loss.backward()
        for (name, expected), param in zip(eager.named_parameters(), compiled.parameters()):
            assert_close(param.grad, expected.grad, atol=1e-5, rtol=1e-4, msg=name)
        eager.zero_grad()
        compiled.zero_grad()


def test_objective_merges_the_losses_of_parts_into_the_whole_batchs(tokenizer, debug_config):
    """`Objective.merge` weights each part's means by what they average over: two halves of a batch
    merge into the losses of the batch run whole (same noise per item)."""
    model = build(debug_config)
    layout = make_layout(tokenizer, debug_config)
    examples = mixed_examples(layout, debug_config)
    objective = Objective(debug_config)
    whole = layout.collate(examples)
    noised = objective.noise(whole.images, whole.image_is_target, torch.Generator().manual_seed(0))
    expected = objective.losses(model(whole.with_images(noised.images), noised.timesteps), whole, noised.targets)
    parts, first_item = [], 0
    for members in (examples[:2], examples[2:]):
        part = layout.collate(members)
        items = slice(first_item, first_item + part.num_images)
        first_item += part.num_images
        output = model(part.with_images(noised.images[items]), noised.timesteps[items])
        parts.append(objective.losses(output, part, noised.targets[items]))
    merged = objective.merge(parts)
    for name in ("lm_loss", "denoise_loss", "loss"):
        assert_close(getattr(merged, name), getattr(expected, name), atol=1e-5, rtol=1e-5)
    assert (merged.num_lm_tokens, merged.num_target_images) == (expected.num_lm_tokens, expected.num_target_images)


def test_clips_and_images_round_trip_and_batch_as_one_by_one(tokenizer, debug_config):
    """A clip (C, F, H, W) is one item of F frames: patchify/unpatchify invert each other, its
    frames carry their own embedding, and in a batch with images it gives what it gives alone."""
    from unimodal.embeddings import patchify_items, unpatchify_items

    items = [torch.randn(3, 3, 8, 16), torch.randn(3, 16, 16), torch.randn(3, 2, 8, 8)]
    layout = make_layout(tokenizer, debug_config)
    grids = torch.tensor([list(layout.grid(item)) for item in items])
    patches = patchify_items(items, debug_config.patch_size)
    assert patches.shape == (int(grids.prod(-1).sum()), debug_config.patch_dim)
    for got, expected in zip(unpatchify_items(patches, grids, debug_config.patch_size, 3), items):
        assert torch.equal(got, expected)
    model = build(debug_config)
    frames = model.patch_embed.positions_for(torch.tensor([[3, 2, 4]]), "cpu", torch.float32).view(3, 8, -1)
    assert not torch.allclose(frames[0], frames[1])  # the same patch in two frames: two positions
    examples = [layout.generation("a red circle", items[0]), layout.caption(items[1], "a blue square"),
                layout.vqa(items[2], "what colour is the circle?", "red")]
    together, alone = scored(model, layout.collate(examples)), [scored(model, layout.collate([e])) for e in examples]
    assert_close(together.lm_loss, (alone[1].lm_loss * alone[1].num_lm_tokens + alone[2].lm_loss * alone[2].num_lm_tokens)
                 / (alone[1].num_lm_tokens + alone[2].num_lm_tokens), atol=1e-5, rtol=1e-5)
