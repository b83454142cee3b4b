"""Media-side adapters: patchify, patch embedding with 2-D position and timestep, the denoise head.

Media items come in any size; everything here works on the *flat* list of all items' patches
(`patchify_items`), so items of different grids share one matmul.

Dimension legend: N items, C latent channels, H/W an item's latent height/width, p patch_size,
P_n = (H/p)·(W/p) patches of item n, S = Σ P_n patches in all, D model width, E = C·p·p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed_from_grid
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


def patchify_items(items: Sequence[torch.Tensor], patch_size: int) -> torch.Tensor:
    """N items (C, H_n, W_n) -> (S, C·p·p): every item's patches, item after item."""
    if len(items) == 0:
        raise ValueError("patchify_items needs at least one item")
    groups = shape_groups(items)
    if len(groups) == 1:
        return patchify(torch.stack(list(items)), patch_size).flatten(0, 1)
    parts = [None] * len(items)
    for group in groups:
        patches = patchify(torch.stack([items[i] for i in group]), patch_size)  # (n, P, E)
        for row, index in enumerate(group):
            parts[index] = patches[row]
    return torch.cat(parts)


def unpatchify_items(patches: torch.Tensor, grids: torch.Tensor, patch_size: int, channels: int) -> list[torch.Tensor]:
    """(S, C·p·p) and grids (N, 2) -> N items (C, rows·p, cols·p), the inverse of `patchify_items`."""
    sizes = grids.prod(-1).tolist()
    pieces = patches.split(sizes)
    return [unpatchify(piece[None], patch_size, channels, int(rows) * patch_size, int(cols) * patch_size)[0]
            for piece, (rows, cols) in zip(pieces, grids.tolist())]


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

    def positions_for(self, grids: torch.Tensor, device, dtype) -> torch.Tensor:
        """(S, D): the position table of each item's grid, item after item."""
        tables = {}
        parts = []
        for rows, cols in grids.tolist():
            if (rows, cols) not in tables:
                tables[(rows, cols)] = self.position_embedding(rows, cols, device, dtype)
            parts.append(tables[(rows, cols)])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(N,) t in [0, 1] -> (N, D)."""
        features = self.time_features(timesteps * NUM_TRAIN_TIMESTEPS)
        return self.time_embed(features.to(self.time_embed.linear_1.weight.dtype))

    def forward(self, patches: torch.Tensor, grids: torch.Tensor, timesteps: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (S, E), grids (N, 2), timesteps (N,) -> patch tokens (S, D) and the time
        embedding of each item (N, D), which the denoise head is modulated by."""
        dtype = self.time_embed.linear_1.weight.dtype
        time = self.embed_time(timesteps)  # (N, D)
        tokens = self.proj(patches.to(dtype)) + self.positions_for(grids, patches.device, dtype)
        return tokens + time[patch_owner(grids)], time


class DenoiseHead(nn.Module):
    """Backbone states at media positions -> per-patch prediction, modulated by the noise level
    (DiT's adaLN final layer; zero-initialised so training starts from predicting zero)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.hidden_size
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj = nn.Linear(width, config.patch_dim)
        for layer in (self.modulation[1], self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor, time: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """hidden (S, D) at the patches, time (N, D) per item, owner (S,) each patch's item -> (S, C·p·p)."""
        shift, scale = self.modulation(time).chunk(2, dim=-1)  # (N, D) each
        return self.proj(self.norm(hidden) * (1 + scale[owner]) + shift[owner])
