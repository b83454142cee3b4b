"""Image-side adapters: patchify, patch embedding with 2-D position and timestep, the denoise head.

Dimension legend: N images, C latent channels, H/W latent height/width, p patch_size,
P = (H/p)·(W/p) patches per image, D model width.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed
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
        # Positions are interpolated relative to the training grid (base_size), so other image
        # sizes reuse the same frequencies (DiT/SD3 style); tables are built once per grid shape.
        self.base_grid = config.patches_per_side
        self._pos_tables: dict[tuple[int, int], torch.Tensor] = {}

    def position_embedding(self, grid_height: int, grid_width: int, device, dtype) -> torch.Tensor:
        """(1, grid_height·grid_width, D) fixed 2-D sin-cos table, row-major like `patchify`."""
        key = (grid_height, grid_width)
        if key not in self._pos_tables:
            table = get_2d_sincos_pos_embed(self.width, (grid_height, grid_width), base_size=self.base_grid,
                                            output_type="pt")
            self._pos_tables[key] = table.float()[None]
        return self._pos_tables[key].to(device=device, dtype=dtype)

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(N,) t in [0, 1] -> (N, D)."""
        features = self.time_features(timesteps * NUM_TRAIN_TIMESTEPS)
        return self.time_embed(features.to(self.time_embed.linear_1.weight.dtype))

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns patch tokens (N, P, D) and the time embedding (N, D) for the denoise head."""
        dtype = self.time_embed.linear_1.weight.dtype
        patches = patchify(latents, self.patch_size).to(dtype)  # (N, P, C·p·p)
        pos = self.position_embedding(latents.shape[2] // self.patch_size, latents.shape[3] // self.patch_size,
                                      latents.device, dtype)  # (1, P, D)
        time = self.embed_time(timesteps)  # (N, D)
        tokens = self.proj(patches) + pos + time[:, None]  # (N, P, D)
        return tokens, time


class DenoiseHead(nn.Module):
    """Backbone states at image positions -> per-patch prediction, modulated by the noise level
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

    def forward(self, hidden: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """(N, P, D), (N, D) -> (N, P, C·p·p)."""
        shift, scale = self.modulation(time).chunk(2, dim=-1)  # (N, D) each
        return self.proj(self.norm(hidden) * (1 + scale[:, None]) + shift[:, None])
