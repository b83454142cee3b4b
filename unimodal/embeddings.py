"""Media-side adapters: patchify, patch embedding with 2-D position and timestep, the denoise head.

Media items come in any size: images (C, H, W) and clips (C, F, H, W), whose frames are patched
`patch_frames` at a time (frame-major order). Everything here works on the *flat* list of all items' patches
(`patchify_items`), so items of different grids share one matmul.

Dimension legend: N items, C latent channels, F frames, H/W an item's latent height/width, p
patch_size, pf patch_frames, P_n = (F/pf)·(H/p)·(W/p) patches of item n, S = Σ P_n patches in all, D model
width, E = C·pf·p·p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.embeddings import (
    TimestepEmbedding,
    Timesteps,
    get_1d_sincos_pos_embed_from_grid,
    get_2d_sincos_pos_embed_from_grid,
)
from torch import nn

from .config import ModelConfig
from .diffusion import NUM_TRAIN_TIMESTEPS


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, P, C·p·p), patches in row-major order."""
    num, channels, height, width = latents.shape
    x = latents.reshape(num, channels, height // patch_size, patch_size, width // patch_size, patch_size)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (N, H/p, W/p, C, p, p)
    return x.reshape(num, (height // patch_size) * (width // patch_size), channels * patch_size**2)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """(N, P, C·p·p) -> (N, C, H, W), the inverse of `patchify`."""
    num = patches.shape[0]
    x = patches.reshape(num, height // patch_size, width // patch_size, channels, patch_size, patch_size)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (N, C, H/p, p, W/p, p)
    return x.reshape(num, channels, height, width)


def shape_groups(items: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of `items` grouped by shape, groups in order of first appearance: equal shapes run as
    one stacked tensor."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(index)
    return list(groups.values())


def _as_clip(item: torch.Tensor, patch_frames: int = 1) -> torch.Tensor:
    """(C, H, W) -> (C, patch_frames, H, W), the image repeated (one patch frame); a clip
    (C, F, H, W) as it is."""
    if item.dim() == 3:
        return item[:, None].expand(-1, patch_frames, -1, -1) if patch_frames > 1 else item[:, None]
    return item


def _check_frames(frames: int, patch_frames: int) -> None:
    if frames % patch_frames:
        raise ValueError(f"a clip of {frames} frames is not a whole number of {patch_frames}-frame patches "
                         f"(patch_frames); pass a multiple of {patch_frames} frames")


def patchify_items(items: Sequence[torch.Tensor], patch_size: int, patch_frames: int = 1) -> torch.Tensor:
    """N items, (C, H_n, W_n) or (C, F_n, H_n, W_n) -> (S, C·pf·p·p): every item's patches, item after
    item, patch frame after patch frame, row-major within a frame. A patch holds `patch_frames`
    consecutive frames of a p×p area (pf = 1: one frame); an image is one patch frame of its frame
    repeated pf times. Raises ValueError for a clip whose frames pf does not divide."""
    if len(items) == 0:
        raise ValueError("patchify_items needs at least one item")
    clips = [_as_clip(item, patch_frames) for item in items]
    parts: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
    p, pf = patch_size, patch_frames
    for group in shape_groups(clips):
        stacked = torch.stack([clips[i] for i in group])  # (n, C, F, H, W)
        num, channels, frames, height, width = stacked.shape
        _check_frames(frames, pf)
        x = stacked.reshape(num, channels, frames // pf, pf, height // p, p, width // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (n, F/pf, H/p, W/p, C, pf, p, p)
        patches = x.reshape(num, -1, channels * pf * p * p)  # (n, P, E)
        if len(group) == len(items):
            return patches.flatten(0, 1)
        for row, index in enumerate(group):
            parts[index] = patches[row]
    return torch.cat(parts)


def unpatchify_like(patches: torch.Tensor, like: torch.Tensor, patch_size: int, patch_frames: int = 1) -> torch.Tensor:
    """(R, P, C·pf·p·p) -> a tensor shaped like `like`: (R, C, H, W) images (the prediction averaged
    over the pf copies of the frame) or (R, C, F, H, W) clips. The inverse of `patchify_items` for
    R items of one shape."""
    p, pf = patch_size, patch_frames
    image = like.dim() == 4
    rows, channels = like.shape[:2]
    frames = pf if image else like.shape[2]
    height, width = like.shape[-2:]
    x = patches.reshape(rows, frames // pf, height // p, width // p, channels, pf, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(rows, channels, frames, height, width)
    return x.mean(2) if image else x


def unpatchify_items(patches: torch.Tensor, grids: torch.Tensor, patch_size: int, channels: int,
                     patch_frames: int = 1, still: Sequence[bool] | None = None) -> list[torch.Tensor]:
    """(S, C·pf·p·p) and grids (N, 3) -> N items, the inverse of `patchify_items`: (C, H, W) for an
    image, (C, F, H, W) for a clip. `still[n]` says item n is an image (default: one patch frame);
    an image's pf copies are averaged."""
    items = []
    for n, (piece, (frames, rows, cols)) in enumerate(zip(patches.split(grids.prod(-1).tolist()), grids.tolist())):
        is_image = still[n] if still is not None else frames == 1
        like = piece.new_empty((1, channels, rows * patch_size, cols * patch_size) if is_image
                               else (1, channels, frames * patch_frames, rows * patch_size, cols * patch_size))
        items.append(unpatchify_like(piece[None], like, patch_size, patch_frames)[0])
    return items


def patch_owner(grids: torch.Tensor) -> torch.Tensor:
    """(S,) long: the item each patch belongs to."""
    return torch.repeat_interleave(torch.arange(grids.shape[0], device=grids.device), grids.prod(-1))


POSITION_GRIDS = ("interpolated", "centered")


def position_coordinates(rows: int, cols: int, base_grid: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows,), (cols,) float coordinates of a grid's patch rows and columns.

    - "interpolated": each axis is stretched to span `base_grid` positions, whatever its length
      (DiT / SD3's `base_size` rule, diffusers' `get_2d_sincos_pos_embed`): a grid of another size
      reuses the trained range of positions, but its aspect ratio does not show in them.
    - "centered": one unit per patch on both axes, centred on the grid's middle (as SD3 crops the
      centre of a larger position table): an item's size and aspect ratio show in its positions,
      and a grid larger than any trained extends past the trained range.
    """
    if mode == "interpolated":
        return (torch.arange(rows, dtype=torch.float64) / (rows / base_grid),
                torch.arange(cols, dtype=torch.float64) / (cols / base_grid))
    if mode == "centered":
        return (torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2,
                torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2)
    raise ValueError(f"unknown position grid {mode!r}; choose one of {POSITION_GRIDS}")


class PatchEmbed(nn.Module):
    """Noised latent patches -> model width, plus a fixed 2-D sin-cos position embedding and an
    embedding of the noise level. `linear` is Transfusion's default adapter; `mlp` is a cheap
    stand-in for its stronger (U-Net) adapters."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.hidden_size
        self.patch_size = config.patch_size
        if config.patch_adapter == "linear":
            self.proj = nn.Linear(config.patch_dim, width)
        else:
            self.proj = nn.Sequential(nn.Linear(config.patch_dim, width), nn.GELU(), nn.Linear(width, width))
        self.time_features = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.width = width
        self.base_grid = config.patches_per_side
        self.position_grid = config.position_grid
        self._pos_tables: dict[tuple[int, int], torch.Tensor] = {}  # one fixed table per grid shape

    def position_embedding(self, grid_height: int, grid_width: int, device, dtype) -> torch.Tensor:
        """(grid_height·grid_width, D) fixed 2-D sin-cos table, row-major like `patchify`."""
        key = (grid_height, grid_width)
        if key not in self._pos_tables:
            ys, xs = position_coordinates(grid_height, grid_width, self.base_grid, self.position_grid)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, rows, cols): x first, as diffusers
            table = get_2d_sincos_pos_embed_from_grid(self.width, grid.reshape(2, 1, grid_height, grid_width),
                                                      output_type="pt")
            self._pos_tables[key] = table.float()
        return self._pos_tables[key].to(device=device, dtype=dtype)

    def frame_embedding(self, frames: int, device, dtype) -> torch.Tensor:
        """(frames, D) fixed 1-D sin-cos table of the frame index, for clips; an image (one frame)
        gets none, so images embed exactly as before clips existed (factorised (t, h, w) positions)."""
        if frames == 1:
            return torch.zeros(1, self.width, device=device, dtype=dtype)
        table = get_1d_sincos_pos_embed_from_grid(self.width, torch.arange(frames, dtype=torch.float64),
                                                  output_type="pt")
        return table.to(device=device, dtype=dtype)

    def positions_for(self, grids: torch.Tensor, device, dtype) -> torch.Tensor:
        """(S, D): each item's positions, item after item: the 2-D table of its (rows, cols) for every
        frame, plus the frame's own embedding."""
        tables = {}
        parts = []
        for frames, rows, cols in grids.tolist():
            key = (frames, rows, cols)
            if key not in tables:
                spatial = self.position_embedding(rows, cols, device, dtype)  # (rows·cols, D)
                temporal = self.frame_embedding(frames, device, dtype)  # (frames, D)
                tables[key] = (temporal[:, None] + spatial[None]).flatten(0, 1)  # frame-major, as patchify_items
            parts.append(tables[key])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(N,) t in [0, 1] -> (N, D)."""
        features = self.time_features(timesteps * NUM_TRAIN_TIMESTEPS)
        return self.time_embed(features.to(self.time_embed.linear_1.weight.dtype))

    def forward(self, patches: torch.Tensor, grids: torch.Tensor, timesteps: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (S, E), grids (N, 3), timesteps (N,) -> patch tokens (S, D) and the time
        embedding of each item (N, D), which the denoise head is modulated by."""
        dtype = self.time_embed.linear_1.weight.dtype
        time = self.embed_time(timesteps)  # (N, D)
        tokens = self.proj(patches.to(dtype)) + self.positions_for(grids, patches.device, dtype)
        return tokens + time[patch_owner(grids)], time


class DenoiseHead(nn.Module):
    """Backbone states at media positions -> per-patch prediction, modulated by the noise level
    (DiT's adaLN final layer; zero-initialised so training starts from predicting zero).

    `denoise_head="linear"` projects each state onto the patch values, so a patch wider than the
    model (a clip's 8-frame patches: 384 values from 192) can only hold predictions in a subspace of
    the model's width; "mlp" (linear, GELU, linear through 4× the width) has no such limit."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.hidden_size
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        if config.denoise_head == "mlp":
            self.proj = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, config.patch_dim))
            last = self.proj[-1]
        else:
            self.proj = last = nn.Linear(width, config.patch_dim)
        for layer in (self.modulation[1], last):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor, time: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """hidden (S, D) at the patches, time (N, D) per item, owner (S,) each patch's item -> (S, C·p·p)."""
        shift, scale = self.modulation(time).chunk(2, dim=-1)  # (N, D) each
        return self.proj(self.norm(hidden) * (1 + scale[owner]) + shift[owner])
