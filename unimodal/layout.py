"""The sequence layout: where text, <boi>, image patches and <eoi> go, and who attends to whom.

Training (data/) and inference (sampling) both build their sequences here, so they cannot drift.

    generation  <bos> caption <boi> p p … p <eoi> <eos>         image patches noised, denoise loss
    caption     <bos> <boi> p p … p <eoi> caption <eos>         lm loss on caption + <eos>
    vqa         <bos> <boi> p … p <eoi> question: Q answer: A <eos>   lm loss on A + <eos>
    text        <bos> text <eos>                                lm loss on every token

Dimension legend: B sequences, T padded length, N images in the batch, C/H/W image or latent
channels/height/width, P = num_image_tokens patch positions per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from .tokenizer import Tokenizer

IGNORE_INDEX = -100  # label value that the LM loss skips (torch's cross_entropy default)


@dataclass
class Example:
    """One unpadded sequence. Image patch positions hold `pad_id` in `input_ids`."""

    input_ids: list[int]
    lm_labels: list[int]  # lm_labels[i] is the token position i must predict, or IGNORE_INDEX
    images: list[torch.Tensor] = field(default_factory=list)  # each (C, H, W)
    image_starts: list[int] = field(default_factory=list)  # index of each image's first patch
    image_is_target: list[bool] = field(default_factory=list)  # True: noised and denoised

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    """A padded batch: what `UniModalModel.forward` and the objective consume."""

    input_ids: torch.Tensor  # (B, T) long
    lm_labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where no loss
    attention_mask: torch.Tensor  # (B, 1, T, T) bool, True = may attend
    lengths: torch.Tensor  # (B,) long, real tokens per row (right padding)
    images: torch.Tensor  # (N, C, H, W) float: pixels in [-1, 1], or latents when already encoded
    image_batch_index: torch.Tensor  # (N,) long, the row holding image n
    image_starts: torch.Tensor  # (N,) long, position of image n's first patch
    image_is_target: torch.Tensor  # (N,) bool, generation targets (noised, denoise loss)

    @property
    def num_images(self) -> int:
        return int(self.image_starts.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move every tensor to `device`; `dtype` applies to the float image tensor only."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "images" and dtype is not None:
                moved[f.name] = value.to(device=device, dtype=dtype)
            else:
                moved[f.name] = value.to(device)
        return Batch(**moved)

    def with_images(self, images: torch.Tensor) -> Batch:
        return replace(self, images=images)

    def select(self, rows: Sequence[int], length: int) -> Batch:
        """The sub-batch of `rows` (in that order), cut to the first `length` positions; the rows'
        real tokens must fit (right padding). Masks and image indices are carried over, not rebuilt."""
        rows_t = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        if rows_t.numel() == 0 or int(self.lengths[rows_t].max()) > length:
            raise ValueError(f"select needs at least one row, each at most {length} tokens long")
        new_row = torch.full((self.input_ids.shape[0],), -1, dtype=torch.long, device=rows_t.device)
        new_row[rows_t] = torch.arange(rows_t.numel(), device=rows_t.device)
        image_rows = new_row[self.image_batch_index]  # (N,): -1 for images of rows left out
        keep = (image_rows >= 0).nonzero().flatten()
        keep = keep[image_rows[keep].argsort(stable=True)]  # images in their new rows' order
        return Batch(self.input_ids[rows_t, :length], self.lm_labels[rows_t, :length],
                     self.attention_mask[rows_t][:, :, :length, :length], self.lengths[rows_t],
                     self.images[keep], image_rows[keep], self.image_starts[keep], self.image_is_target[keep])

    def split_by_length(self, max_parts: int, row_multiple: int = 1, length_multiple: int = 1) -> list[Batch]:
        """Split a right-padded batch into `max_parts` sub-batches of rows of similar length (fewer
        only when it has too few rows), each padded only to its own longest row, choosing the split
        that pads the fewest positions.

        A batch that mixes short and long sequences (captions and generations of ~90 tokens, VQA
        with 8 turns of ~170) otherwise spends a third of its compute on padding. Run each part and
        merge the losses with `unimodal.model.combine_outputs`: the result equals the unsplit batch's.
        `max_parts` 1 returns `[self]` without looking at the lengths. The number of parts depends on
        the row count alone, min(max_parts, ceil(rows / row_multiple)), never on the lengths: under
        ZeRO-3 every forward call is a collective, so all ranks must make the same number of them.

        `row_multiple` and `length_multiple` keep the parts' shapes to a few: every part but the last
        has a multiple of `row_multiple` rows, and each part's length is rounded up to a multiple of
        `length_multiple` (at most the batch's own length: collate with `pad_to_multiple_of`). Free
        shapes differ almost every step, and on the CPU every new shape costs (kernels are built per
        shape), more than the extra padding does (docs/experiments/2026-11-25-benchmarks-cpu-gpu.md).
        """
        if max_parts <= 1:
            return [self]
        lengths = self.lengths.tolist()
        total = int(self.input_ids.shape[1])
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        padded = [min(_round_up(lengths[i], length_multiple), total) for i in order]
        ends = _fewest_padded_cuts(padded, max_parts, row_multiple)
        if len(ends) == 1:
            return [self]  # one part: the batch as it is, rows in their order
        parts, start = [], 0
        for end in ends:
            parts.append(self.select(order[start:end], padded[end - 1]))
            start = end
        return parts


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fewest_padded_cuts(sorted_lengths: list[int], max_parts: int, row_multiple: int = 1) -> list[int]:
    """End indices of exactly min(`max_parts`, U) contiguous groups of ascending `sorted_lengths`
    that minimise the padded size, sum over groups of (rows x longest row), every group but the last
    ending at a multiple of `row_multiple` (U: the number of such ends). Dynamic programming over
    the candidate cuts: O(k·U²)."""
    count = len(sorted_lengths)
    # Every allowed end, also inside runs of equal lengths, and exactly `parts` groups even where fewer
    # pad as little: the count then follows from the row count alone, the same on every rank.
    ends = [j for j in range(1, count + 1) if j == count or j % row_multiple == 0]
    points = [0] + ends
    parts = min(max_parts, len(ends))
    inf = float("inf")
    # cost[k][b]: the least padded size of the rows before points[b] in k groups; cut[k][b] the
    # index into points where the last of those groups starts
    cost = [[inf] * len(points) for _ in range(parts + 1)]
    cut = [[0] * len(points) for _ in range(parts + 1)]
    cost[0][0] = 0
    for k in range(1, parts + 1):
        for b in range(1, len(points)):
            longest = sorted_lengths[points[b] - 1]
            for a in range(k - 1, b):
                candidate = cost[k - 1][a] + (points[b] - points[a]) * longest
                if candidate < cost[k][b]:
                    cost[k][b], cut[k][b] = candidate, a
    last = len(points) - 1
    chosen, b = [], last
    for k in range(parts, 0, -1):
        chosen.append(points[b])
        b = cut[k][b]
    return chosen[::-1]


class SequenceLayout:
    """Builds examples for each task and collates them into padded batches.

    Args:
        tokenizer: supplies the special-token ids and text encoding.
        num_image_tokens: patch positions per image (`ModelConfig.num_image_tokens`).
    """

    def __init__(self, tokenizer: Tokenizer, num_image_tokens: int):
        if num_image_tokens <= 0:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens

    def _ids(self, text: str | Sequence[int]) -> list[int]:
        return self.tokenizer.encode(text) if isinstance(text, str) else [int(i) for i in text]

    def _image_block(self) -> list[int]:
        tok = self.tokenizer
        return [tok.boi_id] + [tok.pad_id] * self.num_image_tokens + [tok.eoi_id]

    @staticmethod
    def question_text(question: str) -> str:
        return f"question: {question} answer:"

    # ---- training examples ----
    def generation(self, text: str | Sequence[int], image: torch.Tensor) -> Example:
        """Text → image. Pass empty text for the unconditional (classifier-free guidance) case."""
        example = self.generation_prompt(text, image)
        example.input_ids += [self.tokenizer.eos_id]
        example.lm_labels += [IGNORE_INDEX]
        return example

    def caption(self, image: torch.Tensor, text: str | Sequence[int]) -> Example:
        """Image → text, with the LM loss on the caption and the closing <eos>."""
        return self._teach_text(self.caption_prompt(image), self._ids(text))

    def vqa(self, image: torch.Tensor, question: str, answer: str) -> Example:
        """Image + question → answer, with the LM loss on the answer and <eos> only."""
        return self.vqa_turns(image, [(question, answer)])

    def vqa_turns(self, image: torch.Tensor, pairs: Sequence[tuple[str, str]]) -> Example:
        """Several question–answer turns about one image:
        `<bos> <boi> P <eoi> question: Q1 answer: A1 <eos> question: Q2 answer: A2 <eos> …`.
        The first turn is exactly the inference prompt; later turns add answer supervision per
        image for a few tokens each (the image itself is the expensive part of the sequence)."""
        if not pairs:
            raise ValueError("vqa_turns needs at least one (question, answer) pair")
        (question, answer), *rest = pairs
        example = self._teach_text(self.vqa_prompt(image, question), self._ids(answer))
        for question, answer in rest:
            question_ids = self._ids(self.question_text(question))
            example.input_ids += question_ids
            example.lm_labels += [IGNORE_INDEX] * len(question_ids)
            example = self._teach_text(example, self._ids(answer))
        return example

    def text(self, text: str | Sequence[int]) -> Example:
        """Plain language modelling."""
        prompt = Example(input_ids=[self.tokenizer.bos_id], lm_labels=[IGNORE_INDEX])
        return self._teach_text(prompt, self._ids(text))

    def _teach_text(self, prompt: Example, target_ids: list[int]) -> Example:
        targets = target_ids + [self.tokenizer.eos_id]
        # Position i predicts token i+1: the prompt's last position predicts the first target.
        labels = prompt.lm_labels[:-1] + targets
        return replace(prompt, input_ids=prompt.input_ids + targets, lm_labels=labels + [IGNORE_INDEX])

    # ---- inference prompts (sequences the model continues) ----
    def caption_prompt(self, image: torch.Tensor) -> Example:
        ids = [self.tokenizer.bos_id] + self._image_block()
        return Example(ids, [IGNORE_INDEX] * len(ids), [image], [2], [False])

    def vqa_prompt(self, image: torch.Tensor, question: str) -> Example:
        example = self.caption_prompt(image)
        question_ids = self._ids(self.question_text(question))
        example.input_ids += question_ids
        example.lm_labels += [IGNORE_INDEX] * len(question_ids)
        return example

    def generation_prompt(self, text: str | Sequence[int], image: torch.Tensor) -> Example:
        """<bos> text <boi> P patches <eoi>; `image` is the (noised) latent placed in the patches."""
        text_ids = [self.tokenizer.bos_id] + self._ids(text)
        ids = text_ids + self._image_block()
        return Example(ids, [IGNORE_INDEX] * len(ids), [image], [len(text_ids) + 1], [True])

    # ---- batching ----
    def collate(self, examples: Sequence[Example], pad_to_multiple_of: int = 1) -> Batch:
        """Right-pad examples into a `Batch` and build the attention mask."""
        if not examples:
            raise ValueError("collate needs at least one example")
        lengths = [len(e) for e in examples]
        total = _round_up(max(lengths), pad_to_multiple_of)
        pad = self.tokenizer.pad_id
        input_ids = torch.full((len(examples), total), pad, dtype=torch.long)
        lm_labels = torch.full((len(examples), total), IGNORE_INDEX, dtype=torch.long)
        images, batch_index, starts, is_target = [], [], [], []
        for row, example in enumerate(examples):
            if len(example.lm_labels) != len(example.input_ids):
                raise ValueError("Example.lm_labels must have one entry per input id")
            input_ids[row, : len(example)] = torch.tensor(example.input_ids)
            lm_labels[row, : len(example)] = torch.tensor(example.lm_labels)
            images += example.images
            batch_index += [row] * len(example.images)
            starts += example.image_starts
            is_target += example.image_is_target
        lengths_t = torch.tensor(lengths)
        batch_index_t = torch.tensor(batch_index, dtype=torch.long)
        starts_t = torch.tensor(starts, dtype=torch.long)
        image_tensor = torch.stack(images) if images else torch.zeros(0, 3, 1, 1)
        valid = torch.arange(total)[None, :] < lengths_t[:, None]
        mask = build_attention_mask(valid, batch_index_t, starts_t, self.num_image_tokens)
        return Batch(input_ids, lm_labels, mask, lengths_t, image_tensor, batch_index_t, starts_t,
                     torch.tensor(is_target, dtype=torch.bool))


def image_position_ids(batch_size: int, total_length: int, image_batch_index: torch.Tensor,
                       image_starts: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """(B, T) long: the index n of the image each position belongs to, or -1 for text/padding."""
    owner = torch.full((batch_size, total_length), -1, dtype=torch.long, device=image_starts.device)
    if image_starts.numel():
        offsets = torch.arange(num_image_tokens, device=image_starts.device)
        columns = image_starts[:, None] + offsets  # (N, P)
        rows = image_batch_index[:, None].expand_as(columns)
        ids = torch.arange(image_starts.shape[0], device=image_starts.device)[:, None].expand_as(columns)
        owner[rows, columns] = ids
    return owner


def rope_positions(valid: torch.Tensor, image_batch_index: torch.Tensor, image_starts: torch.Tensor,
                   num_image_tokens: int, image_rope: str = "sequence") -> torch.Tensor:
    """(B, T) long RoPE position ids; `valid` (B, T) marks real tokens, so left padding works.

    Each real token advances the position by one, except, with `image_rope="shared"`, the patches
    after the first of each image: they all take the first patch's position and the text after the
    image continues one past it. Padding repeats its neighbour's position (it is masked anyway).
    """
    advances = valid.long()
    if image_rope == "shared" and image_starts.numel() and num_image_tokens > 1:
        later_patches = image_starts[:, None] + torch.arange(1, num_image_tokens, device=valid.device)  # (N, P-1)
        rows = image_batch_index[:, None].expand_as(later_patches)
        advances = advances.index_put((rows, later_patches), torch.zeros((), dtype=torch.long, device=valid.device))
    return (advances.cumsum(-1) - 1).clamp(min=0)


def build_attention_mask(valid: torch.Tensor, image_batch_index: torch.Tensor, image_starts: torch.Tensor,
                         num_image_tokens: int) -> torch.Tensor:
    """(B, 1, T, T) bool mask: causal, bidirectional inside each image, never onto padding.

    `valid` (B, T) marks real tokens, so left padding (batched decoding) works as well as right.
    A padding query attends only to itself: a row with no allowed key would make SDPA return NaN.
    """
    batch_size, total_length = valid.shape
    positions = torch.arange(total_length, device=valid.device)
    causal = positions[None, :, None] >= positions[None, None, :]  # (1, T, T)
    owner = image_position_ids(batch_size, total_length, image_batch_index, image_starts, num_image_tokens)
    same_image = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)  # (B, T, T)
    mask = (causal | same_image) & valid[:, None, :] & valid[:, :, None]
    padded_self = (~valid)[:, :, None] & torch.eye(total_length, dtype=torch.bool, device=valid.device)
    return (mask | padded_self)[:, None]
