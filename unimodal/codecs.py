"""Latent codecs: map images in [-1, 1] to the latents the model denoises, and back.

Both codecs expose the same surface: `encode(images) -> latents`, `decode(latents) -> images`,
`latent_channels`, `downsample_factor`. They are image codecs: clips go through them frame by frame
(`encode_items`, `decode_batch`). They are frozen: no codec parameter is ever trained here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .embeddings import shape_groups

CODEC_SETTINGS_FILENAME = "codec.json"
VAE_FOLDER = "vae"

# A tiny AutoencoderKL for tests and CPU experiments: 32x32x3 -> 8x8x4 (two downsampling blocks).
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=32, sample_size=32,
)


class PixelCodec(nn.Module):
    """Identity codec: the model denoises pixels directly (tiny runs, the synthetic world)."""

    latent_channels = 3
    downsample_factor = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)

    def settings(self) -> dict:
        return {"type": "pixel"}


class VAECodec(nn.Module):
    """A diffusers `AutoencoderKL`. The model never applies `scaling_factor`/`shift_factor`
    itself (diffusers leaves it to the pipeline), so this class is the one place that does: z = (mean - shift) * scale."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, latent_channels, H/f, W/f). Uses the posterior mean, so
        encoding is deterministic (and cacheable)."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return ((posterior.mean - self.shift_factor) * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(scaled.to(self.vae.dtype)).sample.clamp(-1.0, 1.0).to(latents.dtype)

    def settings(self) -> dict:
        return {"type": "vae", "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VAECodec:
        from diffusers import AutoencoderKL

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no AutoencoderKL folder at {folder} (expected config.json and weights)")
        return cls(AutoencoderKL.from_pretrained(folder, use_safetensors=True))

    @classmethod
    def tiny(cls, seed: int = 0) -> VAECodec:
        from diffusers import AutoencoderKL

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(AutoencoderKL(**TINY_VAE_CONFIG))


def build_codec(config: ModelConfig) -> PixelCodec | VAECodec:
    """The codec a config asks for; checks that its shape matches the config."""
    if config.codec == "pixel":
        return PixelCodec()
    codec = VAECodec.from_pretrained(config.codec_path) if config.codec_path else VAECodec.tiny()
    if (codec.latent_channels, codec.downsample_factor) != (config.latent_channels, config.downsample_factor):
        raise ValueError(
            f"the VAE gives latent_channels={codec.latent_channels}, downsample_factor={codec.downsample_factor} "
            f"but ModelConfig says latent_channels={config.latent_channels}, "
            f"downsample_factor={config.downsample_factor}; set them to match")
    return codec


def _frames(items: torch.Tensor) -> torch.Tensor:
    """(n, C, F, H, W) clips -> (n·F, C, H, W) frames, the codec's input."""
    return items.transpose(1, 2).flatten(0, 1)


def _clips(frames: torch.Tensor, num: int) -> torch.Tensor:
    """(n·F, C, H, W) -> (n, C, F, H, W), the inverse of `_frames`."""
    return frames.unflatten(0, (num, -1)).transpose(1, 2)


def encode_items(codec: PixelCodec | VAECodec, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Encode media items of any sizes: images (3, H, W) -> (C, h, w), clips (3, F, H, W) -> (C, F, h, w),
    frame by frame (an image codec has no time axis; temporal compression is `patch_frames`). Items
    of one shape run as one batch."""
    out: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
    for group in shape_groups(images):
        stacked = torch.stack([images[i] for i in group])
        encoded = codec.encode(stacked) if stacked.dim() == 4 else _clips(codec.encode(_frames(stacked)), len(group))
        for row, index in enumerate(group):
            out[index] = encoded[row]
    return out


def decode_batch(codec: PixelCodec | VAECodec, latents: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> images (N, 3, H, W), or (N, C, F, h, w) -> clips (N, 3, F, H, W), frame by frame; [-1, 1]."""
    if latents.dim() == 4:
        return codec.decode(latents)
    return _clips(codec.decode(_frames(latents)), latents.shape[0])


def save_codec(codec: PixelCodec | VAECodec, folder: str | Path) -> None:
    """Write codec settings (and the VAE weights, as safetensors) into an export folder."""
    folder = Path(folder)
    (folder / CODEC_SETTINGS_FILENAME).write_text(json.dumps(codec.settings(), indent=2))
    if isinstance(codec, VAECodec):
        codec.vae.save_pretrained(folder / VAE_FOLDER, safe_serialization=True)


def load_codec(folder: str | Path) -> PixelCodec | VAECodec:
    folder = Path(folder)
    settings = json.loads((folder / CODEC_SETTINGS_FILENAME).read_text())
    if settings["type"] == "pixel":
        return PixelCodec()
    return VAECodec.from_pretrained(folder / VAE_FOLDER)
