"""Typed model configuration, named size presets, strict loading from dicts and YAML.

One dataclass describes the whole network: the text backbone, the image-patch adapters, the latent
codec and the training objective. Unknown keys and inconsistent values raise `ValueError` naming the
field, so a typo in a YAML file fails at load time instead of silently training the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

BACKBONE_TYPES = ("llama", "qwen2")
CODEC_TYPES = ("pixel", "vae")
OBJECTIVES = ("flow", "ddpm")
TIME_SAMPLINGS = ("logit_normal", "uniform")
IMAGE_ROPE_MODES = ("sequence", "shared")
POSITION_GRIDS = ("interpolated", "centered")  # unimodal.embeddings.position_coordinates
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")  # unimodal.attention
IMAGE_RESIZE_MODES = ("square", "native")  # unimodal.images.ImageGeometry
PREDICTIONS = ("velocity", "sample")  # unimodal.diffusion.FlowMatching


@dataclass
class ModelConfig:
    """Everything needed to build a `UniModalModel` (shapes, backbone, codec, objective)."""

    # --- backbone (a transformers decoder, called with inputs_embeds) ---
    backbone: str = "llama"  # "llama" or "qwen2": the decoder family built from config
    backbone_path: str | None = None  # local folder of a pretrained HF decoder; overrides the sizes below
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    # RoPE positions of an image's patches: "sequence" numbers them like text (one position each);
    # "shared" gives every patch of an image one position (text after it continues from there),
    # so a text token sees all patches of an image at the same distance and finds them by content
    # and the 2-D position embedding alone. It improved captions and generation in the tiny main job,
    # not VQA (docs/experiments/2026-11-26-vqa-studies.md).
    image_rope: str = "sequence"
    intermediate_size: int | None = None  # None = 4 * hidden_size rounded to 64 (SwiGLU MLP)
    vocab_size: int = 512  # overwritten by the tokenizer's size when a model is built for one
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    attn_implementation: str = "sdpa"  # our 4-D bool mask needs sdpa (eager would misread it)
    # How the mixed causal/bidirectional attention runs: "auto" = FlexAttention's block-sparse
    # kernels on CUDA, a dense SDPA mask elsewhere (flex has no CPU backward); or force one.
    attention: str = "auto"

    # --- images ---
    image_size: int = 32  # pixels per side of the square training size (the budget, with image_resize="native")
    # How inputs are sized (unimodal.images.ImageGeometry): "square" crops to image_size²; "native"
    # keeps the aspect ratio in a bucket of about image_size² pixels. Training sets it from data.image_resize.
    image_resize: str = "square"
    codec: str = "pixel"  # "pixel" (identity, tiny runs) or "vae" (diffusers AutoencoderKL)
    codec_path: str | None = None  # local AutoencoderKL folder for codec="vae"; None builds a tiny one
    latent_channels: int = 3  # 3 for the pixel codec, the VAE's latent_channels otherwise
    downsample_factor: int = 1  # image_size / latent_size: 1 for pixels, 8 for SD-style VAEs
    patch_size: int = 4  # latent pixels per patch side
    # Frames per patch of a clip (temporal patch size): a clip of F frames takes F / patch_frames
    # patch frames. An image is one patch frame, its frame repeated patch_frames times on the way in
    # and its predictions averaged over them on the way out (unimodal.embeddings).
    patch_frames: int = 1
    patch_adapter: str = "linear"  # "linear" (Transfusion default) or "mlp"
    # The denoise head's output layer: "linear" (DiT) or "mlp", for patches that hold more values than
    # the model is wide (unimodal.embeddings.DenoiseHead; a clip's temporal patches).
    denoise_head: str = "linear"
    # 2-D sin-cos positions of an item's patches (unimodal.embeddings.position_coordinates):
    # "interpolated" stretches every grid to the training grid (DiT/SD3 base_size); "centered" gives
    # one unit per patch around the item's centre. Interpolated generalised better to a canvas never
    # trained (docs/experiments/2026-11-30-spacetime-patches.md).
    position_grid: str = "interpolated"

    # --- clips ---
    # Frames of the clips the model trained on (training sets it from data.num_frames when its data
    # holds clips; 1 = images only): `caption`/`answer` sample a video file to this many frames.
    num_frames: int = 1
    video_fps: float = 10.0  # frames per second a video file is sampled at (data.video_fps; unimodal.video)

    # --- objective ---
    objective: str = "flow"  # "flow" (rectified flow, velocity target) or "ddpm" (noise prediction)
    time_sampling: str = "logit_normal"  # SD3's choice for rectified flow
    time_shift: float = 1.0  # SD3 resolution shift of the sampling/training time; 1 = none
    # The shift for clips (items of more than one frame; flow only); None = time_shift. A clip repeats its content
    # over frames, so at one noise level more of it survives than of an image: SD3's argument for
    # shifting larger inputs towards more noise (Esser et al. 2024, §5.3.2).
    clip_time_shift: float | None = None
    # What the denoise head predicts (flow): "velocity" (ε − x0) or "sample" (x0, trained with the loss
    # on the velocity it implies: JiT, Li & He 2025). "sample" denoises patches wider than the model
    # (a clip's temporal patches), where "velocity" leaves noise (unimodal.diffusion.FlowMatching).
    prediction: str = "velocity"
    lm_loss_weight: float = 1.0
    denoise_loss_weight: float = 5.0  # Transfusion's lambda
    # Images that precede their caption are noised at most this much (Transfusion: t <= 0.5 helps
    # captioning); 0 gives them clean, which is what inference does.
    condition_max_noise: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived sizes ----
    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    @property
    def patches_per_side(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Patch positions one image occupies in the sequence (without <boi>/<eoi>)."""
        return self.patches_per_side**2

    def input_patch_size(self, latents: bool = False) -> int:
        """Values per patch side of the media tensors a `SequenceLayout` is handed: pixels
        (`downsample_factor · patch_size`), or latents already encoded (`patch_size`)."""
        return self.patch_size if latents else self.downsample_factor * self.patch_size

    def image_geometry(self):
        """The input rule of this model (`unimodal.images.ImageGeometry`): size, resize mode, and
        pixels per patch side, which every native bucket's sides are multiples of."""
        from .images import ImageGeometry

        return ImageGeometry(self.image_size, self.image_resize, self.input_patch_size())

    @property
    def patch_dim(self) -> int:
        """Values per patch: latent_channels · patch_frames · patch_size²."""
        return self.latent_channels * self.patch_frames * self.patch_size**2

    @property
    def ffn_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return ((4 * self.hidden_size + 63) // 64) * 64

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        choices = {
            "backbone": BACKBONE_TYPES,
            "codec": CODEC_TYPES,
            "objective": OBJECTIVES,
            "time_sampling": TIME_SAMPLINGS,
            "patch_adapter": ("linear", "mlp"),
            "denoise_head": ("linear", "mlp"),
            "attn_implementation": ("sdpa",),
            "attention": ATTENTION_BACKENDS,
            "position_grid": POSITION_GRIDS,
            "image_resize": IMAGE_RESIZE_MODES,
            "prediction": PREDICTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        positive = ["hidden_size", "num_layers", "num_heads", "vocab_size", "image_size", "latent_channels",
                    "downsample_factor", "patch_size", "patch_frames", "max_position_embeddings", "num_frames",
                    "video_fps"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.prediction == "sample" and self.objective != "flow":
            raise ValueError("ModelConfig.prediction='sample' is for objective='flow' (DDPM predicts the noise)")
        if not math.isfinite(self.video_fps):
            raise ValueError(f"ModelConfig.video_fps must be a finite number of frames per second, got {self.video_fps}")
        if self.num_frames > 1 and self.num_frames % self.patch_frames:
            raise ValueError(f"ModelConfig.num_frames={self.num_frames} must be a multiple of patch_frames={self.patch_frames}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"ModelConfig.num_kv_heads={kv_heads} must divide num_heads={self.num_heads}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"ModelConfig.downsample_factor={self.downsample_factor} must divide "
                             f"image_size={self.image_size}")
        if self.latent_size % self.patch_size:
            raise ValueError(f"ModelConfig.patch_size={self.patch_size} must divide the latent size "
                             f"{self.latent_size} (image_size / downsample_factor)")
        if self.codec == "pixel" and (self.latent_channels != 3 or self.downsample_factor != 1):
            raise ValueError("ModelConfig.codec='pixel' needs latent_channels=3 and downsample_factor=1")
        if self.image_rope not in IMAGE_ROPE_MODES:
            raise ValueError(f"ModelConfig.image_rope must be one of {IMAGE_ROPE_MODES}, got {self.image_rope!r}")
        if not 0.0 <= self.condition_max_noise <= 1.0:
            raise ValueError(f"ModelConfig.condition_max_noise must lie in [0, 1], got {self.condition_max_noise}")
        if self.time_shift <= 0:
            raise ValueError(f"ModelConfig.time_shift must be positive, got {self.time_shift}")
        shift = self.clip_time_shift
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float))
                                  or not math.isfinite(shift) or shift <= 0):
            raise ValueError(f"ModelConfig.clip_time_shift must be a positive number or null, got {self.clip_time_shift!r}")

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict; a `preset` key starts from that preset. Unknown keys raise ValueError."""
        values = dict(values)
        base = {}
        if "preset" in values:
            base = preset_values(values.pop("preset"))
        return config_from_dict(cls, {**base, **values})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
        return cls.from_dict(values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        return cls.from_dict({**preset_values(name), **overrides})


def config_from_dict(cls, values: dict[str, Any]):
    """Instantiate dataclass `cls` from `values`, rejecting keys it does not declare."""
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__} expects a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**values)


# Named sizes. `tiny` trains on two CPU cores in minutes; `debug` is even smaller for unit tests;
# `base` is a GPU-scale model (~340M parameters in the backbone) over 256x256 images with an SD VAE.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(hidden_size=64, num_layers=2, num_heads=4, image_size=16, patch_size=4),
    # tiny: a time shift of 3 (more training at high noise, where layout and shape are decided) and
    # the MLP patch adapter lifted generation all-correct on the shapes world from 0.17 to 0.70
    # at equal steps in our sweeps (docs/experiments/2026-11-24-tiny-tuning-sweep.md).
    # Shared image RoPE positions: better captions and generation in the main job (docs/experiments/2026-11-26-vqa-studies.md).
    "tiny": dict(hidden_size=256, num_layers=6, num_heads=4, image_size=32, patch_size=4, patch_adapter="mlp",
                 time_shift=3.0, image_rope="shared"),
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, image_size=32, patch_size=2),
    "base": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8, vocab_size=32000,
                 image_size=256, codec="vae", latent_channels=4, downsample_factor=8, patch_size=2,
                 max_position_embeddings=4096, time_shift=3.0, condition_max_noise=0.5),
}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])
