import itertools
import random

import pytest
import torch

from unimodal.layout import IGNORE_INDEX, SequenceLayout, _fewest_padded_cuts, build_attention_mask, rope_positions


def test_examples_place_tokens_and_labels(tokenizer):
    layout = SequenceLayout(tokenizer, num_image_tokens=4)
    img = torch.zeros(3, 8, 8)
    caption_ids = tokenizer.encode("a red circle")
    example = layout.caption(img, "a red circle")
    boi, eoi = tokenizer.boi_id, tokenizer.eoi_id
    assert example.input_ids == [tokenizer.bos_id, boi, *[tokenizer.pad_id] * 4, eoi, *caption_ids, tokenizer.eos_id]
    # position i predicts token i + 1: <eoi> predicts the first caption token, the last one <eos>
    assert example.lm_labels == [IGNORE_INDEX] * 6 + caption_ids + [tokenizer.eos_id, IGNORE_INDEX]
    assert example.image_starts == [2] and example.image_is_target == [False]

    generation = layout.generation("a red circle", img)
    assert generation.image_starts == [2 + len(caption_ids)] and generation.image_is_target == [True]
    assert set(generation.lm_labels) == {IGNORE_INDEX}

    vqa = layout.vqa(img, "what colour is the circle?", "red")
    labelled = [label for label in vqa.lm_labels if label != IGNORE_INDEX]
    assert labelled == tokenizer.encode("red") + [tokenizer.eos_id]


def test_mask_is_causal_bidirectional_in_images_and_ignores_padding():
    valid = torch.tensor([[True] * 7 + [False]])
    # one image of 3 patches at positions 2..4 in a length-8 row with one padding slot
    mask = build_attention_mask(valid, torch.tensor([0]), torch.tensor([2]), num_image_tokens=3)[0, 0]
    assert mask.shape == (8, 8)
    assert mask[2, 4] and mask[4, 2]  # patches see each other both ways
    assert not mask[1, 2]  # text before the image does not see it
    assert mask[5, 2:5].all()  # text after the image sees all of it
    assert not mask[:, 7][:7].any()  # nobody attends to padding
    assert mask[7, 7] and mask[7].sum() == 1  # a padding query sees only itself (no NaN rows)
    expected_text = torch.tril(torch.ones(2, 2, dtype=torch.bool))
    assert torch.equal(mask[:2, :2], expected_text)


def test_collate_pads_and_indexes_several_images(tokenizer):
    layout = SequenceLayout(tokenizer, num_image_tokens=4)
    first, second = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    two_images = layout.caption(first, "a")
    two_images.input_ids += [tokenizer.boi_id] + [tokenizer.pad_id] * 4 + [tokenizer.eoi_id]
    two_images.lm_labels += [IGNORE_INDEX] * 6
    two_images.images.append(second)
    two_images.image_starts.append(len(two_images.input_ids) - 5)
    two_images.image_is_target.append(True)
    batch = layout.collate([layout.text("a red circle"), two_images], pad_to_multiple_of=8)
    assert batch.input_ids.shape[1] % 8 == 0
    assert batch.image_batch_index.tolist() == [1, 1]
    assert batch.image_is_target.tolist() == [False, True]
    assert torch.equal(batch.images[1], second)
    mask = batch.attention_mask[1, 0]
    start = batch.image_starts[1]
    assert mask[start, start + 3] and not mask[start - 1, start]
    with pytest.raises(ValueError, match="at least one"):
        layout.collate([])


def test_vqa_turns_teach_every_answer_and_start_like_the_prompt(tokenizer):
    layout = SequenceLayout(tokenizer, num_image_tokens=4)
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


def test_rope_positions_sequence_and_shared_with_left_padding():
    # Row 0: <bos> <boi> 3 patches <eoi> a b; row 1: two pads, then <boi> 3 patches <eoi> (left padded).
    valid = torch.tensor([[True] * 8, [False, False] + [True] * 6])
    batch_index, starts = torch.tensor([0, 1]), torch.tensor([2, 3])
    sequence = rope_positions(valid, batch_index, starts, 3, "sequence")
    assert sequence.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 1, 2, 3, 4, 5]]
    shared = rope_positions(valid, batch_index, starts, 3, "shared")
    # Every patch takes its image's first position; what follows continues one past it.
    assert shared.tolist() == [[0, 1, 2, 2, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1, 2, 3]]
    none = rope_positions(valid[:1], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3, "shared")
    assert none.tolist() == [list(range(8))]


def mixed_length_examples(layout, tokenizer):
    """Short and long sequences with images in different places: text, captions, many-turn VQA."""
    img = [torch.full((3, 8, 8), float(value)) for value in range(5)]
    turns = [("what colour is the circle?", "red"), ("how many shapes are there?", "2")] * 3
    return [layout.caption(img[0], "a red circle"), layout.vqa_turns(img[1], turns), layout.text("a"),
            layout.generation("a large blue square", img[2]), layout.vqa_turns(img[3], turns),
            layout.caption(img[4], "a small green triangle")]


def test_split_by_length_equals_collating_each_group(tokenizer):
    layout = SequenceLayout(tokenizer, num_image_tokens=4)
    examples = mixed_length_examples(layout, tokenizer)
    batch = layout.collate(examples)
    parts = batch.split_by_length(2)
    assert len(parts) == 2
    lengths = [len(e) for e in examples]
    long_rows = {i for i, n in enumerate(lengths) if n == max(lengths)}
    assert parts[1].lengths.tolist() == [max(lengths)] * len(long_rows)  # the two VQA rows, together
    padded = sum(part.input_ids.numel() for part in parts)
    assert padded < batch.input_ids.numel() and sum(p.input_ids.shape[0] for p in parts) == len(examples)
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    start = 0
    for part in parts:
        rows = order[start:start + part.input_ids.shape[0]]
        start += len(rows)
        alone = layout.collate([examples[i] for i in rows])
        for name in ("input_ids", "lm_labels", "attention_mask", "lengths", "images", "image_batch_index",
                     "image_starts", "image_is_target"):
            assert torch.equal(getattr(part, name), getattr(alone, name)), name
    assert batch.split_by_length(1) == [batch]  # one part is the batch itself, rows unsorted


def test_split_by_length_with_row_and_length_multiples(tokenizer):
    """Parts of a multiple of `row_multiple` rows (the last excepted), each padded to a multiple of
    `length_multiple`: what collating the part's rows with that `pad_to_multiple_of` gives."""
    layout = SequenceLayout(tokenizer, num_image_tokens=4)
    examples = mixed_length_examples(layout, tokenizer)
    batch = layout.collate(examples, pad_to_multiple_of=8)
    assert batch.input_ids.shape[1] % 8 == 0
    parts = batch.split_by_length(2, row_multiple=4, length_multiple=8)
    assert [part.input_ids.shape[0] for part in parts] == [4, 2]  # 4 short rows, then the two VQA rows
    lengths = [len(e) for e in examples]
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    start = 0
    for part in parts:
        assert part.input_ids.shape[1] % 8 == 0
        rows = order[start:start + part.input_ids.shape[0]]
        start += len(rows)
        alone = layout.collate([examples[i] for i in rows], pad_to_multiple_of=8)
        for name in ("input_ids", "lm_labels", "attention_mask", "lengths", "images", "image_batch_index",
                     "image_starts", "image_is_target"):
            assert torch.equal(getattr(part, name), getattr(alone, name)), name
    # A row multiple that fits no cut leaves the batch whole.
    assert batch.split_by_length(2, row_multiple=8, length_multiple=8) == [batch]


def test_fewest_padded_cuts_minimises_padding_in_as_many_parts_as_the_rows_allow():
    """Exactly min(max_parts, allowed ends) parts, whatever the lengths: ranks whose batches differ in
    lengths but not in rows make the same number of forward calls (tests/test_distributed.py)."""
    assert _fewest_padded_cuts([1, 1, 1, 10, 10], 2) == [3, 5]
    assert _fewest_padded_cuts([1, 1, 1, 10, 10], 1) == [5]
    assert _fewest_padded_cuts([1, 5, 5, 9], 3) == [1, 3, 4]
    assert _fewest_padded_cuts([4, 4, 4], 3) == [1, 2, 3]  # equal rows too: splitting them pads no more
    assert _fewest_padded_cuts([1, 1, 1, 10, 10], 4) == [1, 2, 3, 5]
    assert _fewest_padded_cuts([2, 3], 8) == [1, 2]  # never more parts than rows
    assert _fewest_padded_cuts([5] * 5, 3, row_multiple=2) == [2, 4, 5]
    assert _fewest_padded_cuts([5] * 5, 4, row_multiple=2) == [2, 4, 5]  # three ends allowed

    def padded(lengths, ends):
        starts = [0] + ends[:-1]
        return sum((end - start) * lengths[end - 1] for start, end in zip(starts, ends))

    rng = random.Random(0)
    for _ in range(200):  # against every way of cutting a short sorted list
        lengths = sorted(rng.randint(1, 9) for _ in range(rng.randint(1, 7)))
        parts = rng.randint(1, 4)
        cuts = [list(c) + [len(lengths)] for r in range(parts) for c in itertools.combinations(range(1, len(lengths)), r)]
        ends = _fewest_padded_cuts(lengths, parts)
        assert len(ends) == min(parts, len(lengths)) and ends[-1] == len(lengths)
        assert padded(lengths, ends) == min(padded(lengths, c) for c in cuts if len(c) == len(ends))
        multiple = rng.randint(2, 3)  # cuts only after a multiple of rows, inside runs of equal lengths too
        allowed = [c for c in cuts if all(end % multiple == 0 for end in c[:-1])]
        ends = _fewest_padded_cuts(lengths, parts, multiple)
        assert len(ends) == min(parts, -(-len(lengths) // multiple))
        assert ends in allowed and padded(lengths, ends) == min(padded(lengths, c) for c in allowed if len(c) == len(ends))
    assert _fewest_padded_cuts([1] * 5 + [10] * 3, 2, row_multiple=2) == [4, 8]  # inside the run of 1s
