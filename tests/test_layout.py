import random

import pytest
import torch

from unimodal import attention
from unimodal.layout import IGNORE_INDEX, SequenceLayout, pack_rows


def test_examples_place_tokens_and_labels(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    img = torch.zeros(3, 8, 8)  # 2 x 2 patches
    caption_ids = tokenizer.encode("a red circle")
    example = layout.caption(img, "a red circle")
    boi, eoi = tokenizer.boi_id, tokenizer.eoi_id
    assert example.input_ids == [tokenizer.bos_id, boi, *[tokenizer.pad_id] * 4, eoi, *caption_ids, tokenizer.eos_id]
    # position i predicts token i + 1: <eoi> predicts the first caption token, the last one <eos>
    assert example.lm_labels == [IGNORE_INDEX] * 6 + caption_ids + [tokenizer.eos_id, IGNORE_INDEX]
    assert example.image_starts == [2] and example.image_is_target == [False] and example.image_grids == [(1, 2, 2)]

    generation = layout.generation("a red circle", img)
    assert generation.image_starts == [2 + len(caption_ids)] and generation.image_is_target == [True]
    assert set(generation.lm_labels) == {IGNORE_INDEX}

    vqa = layout.vqa(img, "what colour is the circle?", "red")
    labelled = [label for label in vqa.lm_labels if label != IGNORE_INDEX]
    assert labelled == tokenizer.encode("red") + [tokenizer.eos_id]


def test_items_of_any_grid_take_rows_times_cols_positions(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    wide = layout.caption_prompt(torch.zeros(3, 8, 24))  # 2 x 6 patches
    assert wide.image_grids == [(1, 2, 6)] and len(wide.input_ids) == 1 + 1 + 12 + 1
    with pytest.raises(ValueError, match="not a whole number of 4x4 patches"):
        layout.caption_prompt(torch.zeros(3, 8, 10))


def segments_of(layout, examples, **pack):
    batch = layout.pack(examples, **pack) if pack else layout.collate(examples)
    return batch, attention.segments_of(batch)


def test_mask_is_causal_bidirectional_in_images_and_ignores_padding(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    caption = layout.caption(torch.zeros(3, 4, 12), "a")  # <bos> <boi> 3 patches <eoi> a <eos>
    batch, segments = segments_of(layout, [caption, layout.text("a red circle and a blue square at the top left")])
    mask = attention.dense_mask(segments)[0, 0]
    length = len(caption)
    assert mask.shape[0] == batch.input_ids.shape[1] > length  # row 0 is padded
    assert mask[2, 4] and mask[4, 2]  # patches see each other both ways
    assert not mask[1, 2]  # text before the image does not see it
    assert mask[5, 2:5].all()  # text after the image sees all of it
    assert not mask[:length, length:].any()  # nobody attends to padding
    assert mask[length, length]  # a padding query sees at least itself (no NaN rows)
    assert torch.equal(mask[:2, :2], torch.tril(torch.ones(2, 2, dtype=torch.bool)))


def test_packed_examples_never_see_each_other_and_restart_positions(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    first = layout.caption(torch.zeros(3, 4, 8), "a red")
    second = layout.generation("a blue", torch.zeros(3, 4, 4))
    batch, segments = segments_of(layout, [first, second], max_tokens_per_row=64)
    assert batch.num_rows == 1 and batch.example_starts.tolist() == [0, len(first)]
    mask = attention.dense_mask(segments)[0, 0]
    a, b = len(first), len(first) + len(second)
    assert not mask[a:b, :a].any() and not mask[:a, a:b].any()
    for shared in (False, True):
        packed = attention.positions(segments, shared)[0]
        alone = [attention.positions(segments_of(layout, [e])[1], shared)[0, : len(e)] for e in (first, second)]
        assert torch.equal(packed[:b], torch.cat(alone))


def test_positions_sequence_and_shared_with_left_padding(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    long_prompt = layout.vqa_prompt(torch.zeros(3, 4, 12), "what")
    short_prompt = layout.caption_prompt(torch.zeros(3, 4, 12))  # <bos> <boi> 3 patches <eoi>
    batch = layout.left_pad([long_prompt, short_prompt])
    segments = attention.segments_of(batch)
    offset = len(long_prompt) - len(short_prompt)
    sequence = attention.positions(segments)[1, offset:]
    assert sequence.tolist() == list(range(len(short_prompt)))
    shared = attention.positions(segments, shared_item_position=True)[1, offset:]
    # Every patch takes its item's first position; what follows continues one past it.
    assert shared.tolist() == [0, 1, 2, 2, 2, 3]


def test_collate_pads_and_indexes_several_images(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    first, second = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    two_images = layout.caption(first, "a")
    two_images.input_ids += [tokenizer.boi_id] + [tokenizer.pad_id] * 4 + [tokenizer.eoi_id]
    two_images.lm_labels += [IGNORE_INDEX] * 6
    two_images.images.append(second)
    two_images.image_starts.append(len(two_images.input_ids) - 5)
    two_images.image_is_target.append(True)
    two_images.image_grids.append((1, 2, 2))
    batch = layout.collate([layout.text("a red circle"), two_images], pad_to_multiple_of=8)
    assert batch.input_ids.shape[1] % 8 == 0
    assert batch.image_rows.tolist() == [1, 1]
    assert batch.image_is_target.tolist() == [False, True]
    assert torch.equal(batch.images[1], second)
    mask = attention.dense_mask(attention.segments_of(batch))[1, 0]
    start = batch.image_starts[1]
    assert mask[start, start + 3] and not mask[start - 1, start]
    with pytest.raises(ValueError, match="at least one"):
        layout.collate([])


def test_vqa_turns_teach_every_answer_and_start_like_the_prompt(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    img = torch.zeros(3, 8, 8)
    pairs = [("what colour is the circle?", "red"), ("how many shapes are there?", "2")]
    example = layout.vqa_turns(img, pairs)
    prompt = layout.vqa_prompt(img, pairs[0][0])
    assert example.input_ids[: len(prompt)] == prompt.input_ids
    labelled = [label for label in example.lm_labels if label != IGNORE_INDEX]
    eos = tokenizer.eos_id
    assert labelled == tokenizer.encode("red") + [eos] + tokenizer.encode("2") + [eos]
    assert layout.vqa(img, *pairs[0]).input_ids == example.input_ids[: len(prompt) + len(tokenizer.encode("red")) + 1]
    with pytest.raises(ValueError, match="at least one"):
        layout.vqa_turns(img, [])


def test_guided_generation_prompts_are_conditional_then_unconditional_rows(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    items = [torch.zeros(3, 4, 8), torch.zeros(3, 4, 8)]
    prompts = layout.guided_generation_prompts(["a red circle", "a"], items, guidance=True)
    assert len(prompts) == 4
    assert prompts[2].input_ids == [tokenizer.bos_id, tokenizer.boi_id] + [tokenizer.pad_id] * 2
    assert prompts[0].input_ids[-3:] == [tokenizer.boi_id] + [tokenizer.pad_id] * 2  # no <eoi> while sampling
    batch = layout.left_pad(prompts)
    assert (batch.image_starts == batch.input_ids.shape[1] - 2).all()  # every item in the last columns
    assert len(layout.guided_generation_prompts(["a"], items[:1], guidance=False)) == 1


def test_pack_rows_is_best_fit_decreasing_and_never_overfills():
    assert pack_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack_rows([9, 2], 8) == [[0], [1]]  # too long for a row: a row of its own
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 10) for _ in range(rng.randint(1, 12))]
        rows = pack_rows(lengths, 12)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 12 or len(row) == 1 for row in rows)
        assert len(rows) <= len(lengths)
        # never worse than first-fit decreasing's bound: at most 11/9 OPT + 1 rows, OPT >= total / 12
        assert len(rows) <= 11 / 9 * max(1, -(-sum(lengths) // 12)) + 1


def test_pack_adds_empty_rows_to_a_row_multiple_and_pads_length(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    examples = [layout.text("a red circle"), layout.caption(torch.zeros(3, 8, 8), "a")]
    batch = layout.pack(examples, max_tokens_per_row=8, pad_to_multiple_of=16, row_multiple=4)
    assert batch.input_ids.shape == (4, 16)
    assert batch.num_examples == 2 and batch.num_tokens == sum(len(e) for e in examples)
    assert sorted(batch.example_index.tolist()) == [0, 1]


def test_a_clip_is_one_item_of_frames_times_rows_times_cols_positions(tokenizer):
    layout = SequenceLayout(tokenizer, patch_size=4)
    clip = layout.caption(torch.zeros(3, 3, 8, 12), "a")  # 3 frames of 2 x 3 patches
    assert clip.image_grids == [(3, 2, 3)] and clip.input_ids.count(tokenizer.pad_id) == 18
    batch = layout.collate([clip, layout.generation("a", torch.zeros(3, 8, 8))])
    assert batch.image_grids.tolist() == [[3, 2, 3], [1, 2, 2]] and batch.image_num_tokens.tolist() == [18, 4]
    mask = attention.dense_mask(attention.segments_of(batch))[0, 0]
    start = int(batch.image_starts[0])
    assert mask[start, start + 17] and mask[start + 17, start]  # first and last frame see each other
