"""The sequence layout: where text, <boi>, media patches and <eoi> go, for training and inference.

Every sequence the project runs is built here (training examples, caption/VQA prompts, generation
prompts with their classifier-free-guidance rows, left-padded decoding batches), so training and
inference cannot drift.

    generation  <bos> caption <boi> p p … p <eoi> <eos>         media patches noised, denoise loss
    caption     <bos> <boi> p p … p <eoi> caption <eos>         lm loss on caption + <eos>
    vqa         <bos> <boi> p … p <eoi> question: Q answer: A <eos>   lm loss on A + <eos>
    text        <bos> text <eos>                                lm loss on every token

A media item is a latent grid of `frames × rows × cols` patches with its own size (frames = 1 for an
image, a (C, H, W) tensor; a clip is (C, F, H, W)); it takes `frames · rows · cols` positions. A
`Batch` is a set of rows, each holding one or more examples (packed, `SequenceLayout.pack`) and
right-padded, or one left-padded prompt each
(`SequenceLayout.left_pad`). It carries *spans* (where each example and each item sits), never a
T×T mask: the model builds its attention from the spans on its own device (`unimodal.attention`).

Dimension legend: B rows, T padded length, E examples, N media items, C/F/H/W channels/frames/
height/width of an item (pixels, or latents when already encoded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from .tokenizer import Tokenizer

IGNORE_INDEX = -100  # label value that the LM loss skips (torch's cross_entropy default)


@dataclass
class Example:
    """One unpadded sequence. Media patch positions hold `pad_id` in `input_ids`."""

    input_ids: list[int]
    lm_labels: list[int]  # lm_labels[i] is the token position i must predict, or IGNORE_INDEX
    images: list[torch.Tensor] = field(default_factory=list)  # each (C, H, W) or a clip (C, F, H, W), any size
    image_starts: list[int] = field(default_factory=list)  # index of each item's first patch
    image_is_target: list[bool] = field(default_factory=list)  # True: noised and denoised
    image_grids: list[tuple[int, int, int]] = field(default_factory=list)  # (frames, rows, cols) per item

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    """Rows of examples and their spans: what `UniModalModel.forward` and the objective consume.

    Examples never attend to one another, even when packed into one row; each restarts its
    positions at 0. `images` are the media items in order (any sizes); `image_grids` their patch
    grids, so item n occupies `image_grids[n].prod()` positions from `image_starts[n]` in row
    `image_rows[n]`.
    """

    input_ids: torch.Tensor  # (B, T) long
    lm_labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where no loss
    example_rows: torch.Tensor  # (E,) long, the row holding example e
    example_starts: torch.Tensor  # (E,) long, its first position in that row
    example_lengths: torch.Tensor  # (E,) long, its length
    example_index: torch.Tensor  # (E,) long, its index in the list the batch was made from (packing reorders)
    images: list[torch.Tensor]  # N tensors (C, H, W) or (C, F, H, W): pixels in [-1, 1], or latents
    image_rows: torch.Tensor  # (N,) long
    image_starts: torch.Tensor  # (N,) long, position of item n's first patch
    image_grids: torch.Tensor  # (N, 3) long, (frames, rows, cols) of patches
    image_is_target: torch.Tensor  # (N,) bool, generation targets (noised, denoise loss)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.example_rows.shape[0])

    @property
    def image_num_tokens(self) -> torch.Tensor:
        """(N,) long: positions each item occupies."""
        return self.image_grids.prod(-1) if self.num_images else self.image_grids.new_zeros(0)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) positions in the batch."""
        return int(self.example_lengths.sum())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move every tensor to `device`; `dtype` applies to the media items only."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "images":
                moved[f.name] = [item.to(device=device, dtype=dtype) for item in value]
            else:
                moved[f.name] = value.to(device)
        return Batch(**moved)

    def with_images(self, images: Sequence[torch.Tensor]) -> Batch:
        if len(images) != self.num_images:
            raise ValueError(f"with_images needs {self.num_images} items, got {len(images)}")
        return replace(self, images=list(images))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_rows(lengths: Sequence[int], max_tokens_per_row: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: indices of `lengths` grouped into rows of at most
    `max_tokens_per_row` tokens (a longer sequence gets a row of its own). Rows come out in order of
    their first (longest) example; within a row, examples keep their original order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        size = lengths[index]
        best = -1
        for row, room in enumerate(free):  # the row this example fills most tightly
            if size <= room and (best < 0 or room < free[best]):
                best = row
        if best < 0:
            rows.append([index])
            free.append(max_tokens_per_row - size)
        else:
            rows[best].append(index)
            free[best] -= size
    return [sorted(row) for row in rows]


class SequenceLayout:
    """Builds examples for each task and batches them.

    Args:
        tokenizer: supplies the special-token ids and text encoding.
        patch_size: values per patch side in the tensors handed to this layout: the model's
            `downsample_factor · patch_size` for pixels, its `patch_size` for latents. An item of
            H×W takes (H / patch_size)·(W / patch_size) positions; sizes it does not divide raise.
        patch_frames: frames per patch of a clip (`ModelConfig.patch_frames`): a clip of F frames
            takes F / patch_frames patch frames, an image one.
    """

    def __init__(self, tokenizer: Tokenizer, patch_size: int, patch_frames: int = 1):
        for name, value in (("patch_size", patch_size), ("patch_frames", patch_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.patch_frames = patch_frames

    @classmethod
    def for_model(cls, tokenizer: Tokenizer, config, latents: bool = False) -> SequenceLayout:
        """The layout of a `ModelConfig`'s items: pixels (`latents=False`) or latents already encoded."""
        return cls(tokenizer, config.input_patch_size(latents), config.patch_frames)

    def grid(self, image: torch.Tensor) -> tuple[int, int, int]:
        """(patch frames, rows, cols) of a (C, H, W) image (1 patch frame) or a (C, F, H, W) clip
        (F / patch_frames). Raises ValueError for sizes the patches do not divide."""
        if image.dim() not in (3, 4):
            raise ValueError(f"a media item is (C, H, W) or (C, F, H, W); got shape {tuple(image.shape)}")
        height, width = int(image.shape[-2]), int(image.shape[-1])
        frames = int(image.shape[1]) if image.dim() == 4 else self.patch_frames
        if height % self.patch_size or width % self.patch_size or height == 0 or width == 0 or frames == 0:
            raise ValueError(f"a media item of {height}x{width} is not a whole number of "
                             f"{self.patch_size}x{self.patch_size} patches")
        if frames % self.patch_frames:
            raise ValueError(f"a clip of {frames} frames is not a whole number of {self.patch_frames}-frame patches "
                             f"(patch_frames); pass a multiple of {self.patch_frames} frames")
        return frames // self.patch_frames, height // self.patch_size, width // self.patch_size

    def _ids(self, text: str | Sequence[int]) -> list[int]:
        return self.tokenizer.encode(text) if isinstance(text, str) else [int(i) for i in text]

    def _media(self, prefix: list[int], image: torch.Tensor, is_target: bool, close: bool = True) -> Example:
        """`prefix <boi> patches [<eoi>]`, the item placed after <boi>."""
        frames, rows, cols = grid = self.grid(image)
        tok = self.tokenizer
        ids = prefix + [tok.boi_id] + [tok.pad_id] * (frames * rows * cols) + ([tok.eoi_id] if close else [])
        return Example(ids, [IGNORE_INDEX] * len(ids), [image], [len(prefix) + 1], [is_target], [grid])

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
        return self._media([self.tokenizer.bos_id], image, is_target=False)

    def vqa_prompt(self, image: torch.Tensor, question: str) -> Example:
        example = self.caption_prompt(image)
        question_ids = self._ids(self.question_text(question))
        example.input_ids += question_ids
        example.lm_labels += [IGNORE_INDEX] * len(question_ids)
        return example

    def generation_prompt(self, text: str | Sequence[int], image: torch.Tensor, close: bool = True) -> Example:
        """`<bos> text <boi> patches <eoi>`; `image` is the (noised) latent placed in the patches.
        `close=False` leaves out the <eoi>, which sampling does not need (the item never sees it)."""
        return self._media([self.tokenizer.bos_id] + self._ids(text), image, is_target=True, close=close)

    def guided_generation_prompts(self, texts: Sequence[str | Sequence[int]], images: Sequence[torch.Tensor],
                                  guidance: bool) -> list[Example]:
        """The rows image sampling runs: one generation prompt per text, then, with classifier-free
        guidance, the same items after an empty text (the unconditional rows, as trained with caption
        dropout). Without <eoi>: sampling reads the item's states only."""
        prompts = [self.generation_prompt(t, image, close=False) for t, image in zip(texts, images)]
        if guidance:
            prompts += [self.generation_prompt("", image, close=False) for image in images]
        return prompts

    # ---- batching ----
    def collate(self, examples: Sequence[Example], pad_to_multiple_of: int = 1) -> Batch:
        """One example per row, right-padded to the longest (rounded up to `pad_to_multiple_of`)."""
        return self._batch([[i] for i in range(len(examples))], examples, pad_to_multiple_of)

    def pack(self, examples: Sequence[Example], max_tokens_per_row: int, pad_to_multiple_of: int = 1,
             row_multiple: int = 1) -> Batch:
        """Pack examples into rows of at most `max_tokens_per_row` positions (best-fit decreasing,
        `pack_rows`), right-padded to the longest row rounded up to `pad_to_multiple_of`. With
        `row_multiple` > 1, empty (all-padding) rows are added up to a multiple of it, which keeps
        the number of distinct batch shapes small (each new shape costs on the CPU). Every example
        keeps its own positions and attention: the result trains exactly as the examples one by one."""
        if max_tokens_per_row <= 0:
            raise ValueError(f"max_tokens_per_row must be positive, got {max_tokens_per_row}")
        rows = pack_rows([len(e) for e in examples], max_tokens_per_row)
        rows += [[] for _ in range(_round_up(len(rows), row_multiple) - len(rows))]
        return self._batch(rows, examples, pad_to_multiple_of)

    def left_pad(self, prompts: Sequence[Example]) -> Batch:
        """One prompt per row, left-padded so that every row's next token lands in the same column."""
        return self._batch([[i] for i in range(len(prompts))], prompts, 1, left=True)

    def _batch(self, rows: Sequence[Sequence[int]], examples: Sequence[Example], pad_to_multiple_of: int,
               left: bool = False) -> Batch:
        if not examples:
            raise ValueError("a batch needs at least one example")
        row_lengths = [sum(len(examples[i]) for i in row) for row in rows]
        total = _round_up(max(row_lengths), pad_to_multiple_of)
        pad = self.tokenizer.pad_id
        input_ids = torch.full((len(rows), total), pad, dtype=torch.long)
        lm_labels = torch.full((len(rows), total), IGNORE_INDEX, dtype=torch.long)
        ex_rows, ex_starts, ex_lengths, ex_index = [], [], [], []
        images, image_rows, image_starts, grids, is_target = [], [], [], [], []
        for row, members in enumerate(rows):
            start = total - row_lengths[row] if left else 0
            for index in members:
                example = examples[index]
                if len(example.lm_labels) != len(example.input_ids):
                    raise ValueError("Example.lm_labels must have one entry per input id")
                end = start + len(example)
                input_ids[row, start:end] = torch.tensor(example.input_ids)
                lm_labels[row, start:end] = torch.tensor(example.lm_labels)
                ex_rows.append(row)
                ex_starts.append(start)
                ex_lengths.append(len(example))
                ex_index.append(index)
                example_grids = example.image_grids or [self.grid(image) for image in example.images]
                images += example.images
                image_rows += [row] * len(example.images)
                image_starts += [start + s for s in example.image_starts]
                grids += [tuple(g) for g in example_grids]
                is_target += example.image_is_target
                start = end
        long = dict(dtype=torch.long)
        return Batch(input_ids, lm_labels, torch.tensor(ex_rows, **long), torch.tensor(ex_starts, **long),
                     torch.tensor(ex_lengths, **long), torch.tensor(ex_index, **long), images, torch.tensor(image_rows, **long),
                     torch.tensor(image_starts, **long), torch.tensor(grids, **long).reshape(-1, 3),
                     torch.tensor(is_target, dtype=torch.bool))


__all__ = ["IGNORE_INDEX", "Batch", "Example", "SequenceLayout", "pack_rows"]
