"""Attention and positions built from a batch's spans, on the model's device.

The loader ships spans (where each example and each media item sits, `unimodal.layout.Batch`); the
model turns them into per-position ids here and builds the attention at forward time:

- an example attends causally within itself and never to another example packed in the same row;
- the positions of one media item attend to each other both ways (Transfusion §2.2);
- padding forms one more "example" of its row, so every query has at least one key (SDPA returns
  NaN for a query that may attend to nothing).

Two forms of the same rule: a dense boolean mask for `scaled_dot_product_attention` (the CPU path:
FlexAttention has no CPU backward), and a block-sparse FlexAttention `BlockMask` for CUDA, where
the T×T mask is never materialised and fully masked blocks are skipped.

Dimension legend: B rows, T positions (keys: S), N media items, E examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PADDING = -1  # example id of padding positions; item id of text positions


@dataclass
class TokenSegments:
    """Per-position ids: which example (-1: padding) and which media item (-1: none) it belongs to."""

    example_ids: torch.Tensor  # (B, T) long
    item_ids: torch.Tensor  # (B, T) long


def token_segments(num_rows: int, length: int, example_rows: torch.Tensor, example_starts: torch.Tensor,
                   example_lengths: torch.Tensor, image_rows: torch.Tensor, image_starts: torch.Tensor,
                   image_num_tokens: torch.Tensor) -> TokenSegments:
    """Spans (E examples, N items) -> per-position ids, vectorised (no loop over examples)."""
    device = example_rows.device
    return TokenSegments(_paint(num_rows, length, example_rows, example_starts, example_lengths, device),
                         _paint(num_rows, length, image_rows, image_starts, image_num_tokens, device))


def span_positions(rows: torch.Tensor, starts: torch.Tensor, sizes: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spans (each `sizes[n]` positions from `starts[n]` in row `rows[n]`) -> every position they
    cover, span after span: (owner, row, column), (Σ sizes,) long each."""
    owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), sizes)
    first = torch.cumsum(sizes, 0) - sizes  # where each span begins in the flat list
    offsets = torch.arange(owner.shape[0], device=rows.device) - first[owner]
    return owner, rows[owner], starts[owner] + offsets


def _paint(num_rows: int, length: int, rows: torch.Tensor, starts: torch.Tensor, sizes: torch.Tensor,
           device) -> torch.Tensor:
    """(B, T) long: span index at each position it covers, PADDING elsewhere."""
    ids = torch.full((num_rows, length), PADDING, dtype=torch.long, device=device)
    if rows.numel() == 0:
        return ids
    owner, flat_rows, columns = span_positions(rows, starts, sizes)
    ids[flat_rows, columns] = owner
    return ids


def segments_of(batch) -> TokenSegments:
    """`token_segments` of a `unimodal.layout.Batch`."""
    return token_segments(batch.num_rows, int(batch.input_ids.shape[1]), batch.example_rows, batch.example_starts,
                          batch.example_lengths, batch.image_rows, batch.image_starts, batch.image_num_tokens)


def positions(segments: TokenSegments, shared_item_position: bool = False) -> torch.Tensor:
    """(B, T) long RoPE position ids: each example counts from 0 at its first position.

    With `shared_item_position`, the positions of a media item after its first all take the first
    one's position, and what follows the item continues one past it. Padding repeats a neighbour's
    position (it is masked anyway).
    """
    example_ids, item_ids = segments.example_ids, segments.item_ids
    real = example_ids != PADDING
    advances = real.long()
    if shared_item_position:
        previous = torch.nn.functional.pad(item_ids, (1, 0), value=PADDING)[:, :-1]
        later_patch = (item_ids != PADDING) & (item_ids == previous)
        advances = advances.masked_fill(later_patch, 0)
    counts = advances.cumsum(-1)
    previous_example = torch.nn.functional.pad(example_ids, (1, 0), value=PADDING)[:, :-1]
    first = real & (example_ids != previous_example)
    # the count before each example's first position, carried forward over the example (counts
    # never decrease along a row, so a running maximum carries it)
    base = torch.where(first, counts - advances, torch.zeros_like(counts)).cummax(-1).values
    return (counts - base - 1).clamp(min=0)


def allowed(example_q: torch.Tensor, example_k: torch.Tensor, item_q: torch.Tensor, item_k: torch.Tensor,
            q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """The rule, elementwise (broadcasts): same example, and causal or inside one media item."""
    same_item = (item_q == item_k) & (item_q != PADDING)
    return (example_q == example_k) & ((q_index >= k_index) | same_item)


def dense_mask(segments: TokenSegments, query_start: int = 0) -> torch.Tensor:
    """(B, 1, T - query_start, T) bool mask, True = may attend, for the queries from `query_start` on
    (a cached prefix's keys come first; the queries are the positions after it)."""
    example_ids, item_ids = segments.example_ids, segments.item_ids
    length = example_ids.shape[1]
    index = torch.arange(length, device=example_ids.device)
    mask = allowed(example_ids[:, query_start:, None], example_ids[:, None, :], item_ids[:, query_start:, None],
                   item_ids[:, None, :], index[query_start:, None], index[None, :])
    return mask[:, None]


def block_mask(segments: TokenSegments, block_size: int = 128):
    """A FlexAttention `BlockMask` with the same rule as `dense_mask` (CUDA training path)."""
    from torch.nn.attention.flex_attention import create_block_mask

    example_ids, item_ids = segments.example_ids, segments.item_ids
    num_rows, length = example_ids.shape

    def mask_mod(b, h, q, k):
        return allowed(example_ids[b, q], example_ids[b, k], item_ids[b, q], item_ids[b, k], q, k)

    # Compiled on CUDA, so the T×T mask is built block by block and never materialised whole.
    return create_block_mask(mask_mod, num_rows, None, length, length, device=example_ids.device,
                             BLOCK_SIZE=block_size, _compile=example_ids.device.type == "cuda")


ATTENTION_BACKENDS = ("auto", "sdpa", "flex")


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" is FlexAttention on CUDA and SDPA elsewhere (flex has no CPU backward)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


__all__ = ["ATTENTION_BACKENDS", "TokenSegments", "block_mask", "dense_mask", "positions", "resolve_backend",
           "segments_of", "span_positions", "token_segments"]
