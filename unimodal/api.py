"""The public Python API: load a trained model, then `caption`, `answer` and `generate`.

    from unimodal import UniModal
    model = UniModal.from_pretrained("runs/tiny/export")
    model.caption(images)                          # -> list[str]; images and clips, in one batch
    model.answer(images, questions)                # -> list[str]
    model.generate(prompts, num_steps=25, guidance_scale=3.0, seed=0)   # -> list[PIL.Image]
    model.generate(prompts, num_frames=8)          # -> list of clips, each a list of PIL frames

A clip is a list of frames (paths, PIL images or arrays), an (F, C, H, W) or (F, H, W, C) array or
tensor with F > 1, or the path / bytes of a video file (GIF, or MP4/WebM/... with PyAV:
`pip install 'unimodal[video]'`); `unimodal.video.save_video(frames, "clip.gif")` writes one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .codecs import decode_batch, encode_items
from .diffusion import default_scheduler_name, make_process
from .images import to_model_tensor, to_pil
from .layout import SequenceLayout
from .model import UniModalModel
from .pretrained import load_export, save_export
from .sampling import decode_text, sample_latents
from .tokenizer import Tokenizer
from .video import as_clip_frames, is_clip, to_model_clip


class UniModal:
    """A model, its tokenizer and its latent codec, ready for inference (eval mode, no grad)."""

    def __init__(self, model: UniModalModel, tokenizer: Tokenizer, codec):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.codec = codec
        self.config = model.config
        self.layout = SequenceLayout.for_model(tokenizer, model.config, latents=True)
        self.process = make_process(model.config)

    # ---- loading / saving ----
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> UniModal:
        """Load an export folder (safetensors only; nothing is unpickled)."""
        model, tokenizer, codec = load_export(folder, device)
        api = cls(model, tokenizer, codec)
        return api.to(device, dtype) if dtype is not None else api

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_export(folder, self.model, self.tokenizer, self.codec)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> UniModal:
        """Move to `device`; `dtype` (e.g. torch.bfloat16) casts the model's weights."""
        self.model.to(device=device, dtype=dtype) if dtype is not None else self.model.to(device)
        self.codec.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- understanding ----
    def caption(self, images: Sequence[Any], max_new_tokens: int = 32, temperature: float = 0.0,
                top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Describe each image or clip. Images may be paths, encoded bytes, PIL images, numpy arrays or
        tensors in any usual layout and size, decoded by the project's one input rule
        (`unimodal.images.to_model_tensor`: EXIF orientation, alpha on white, value range by dtype
        with floats in [0, 1]), then sized by the model's rule (`ModelConfig.image_geometry()`:
        center-cropped to its square, or, for `image_resize="native"`, kept at their aspect ratio in
        the nearest bucket of about the same pixel count); images of several sizes batch together.
        A clip (see the module docstring) has each frame sized by the same rule; a video file is
        sampled to `ModelConfig.num_frames` frames at `ModelConfig.video_fps` (`unimodal.video.read_video`),
        frames given directly are used as they are (a multiple of `patch_frames` of them).
        Raises ValueError for NaN/inf `temperature`/`top_p` or out-of-range values."""
        latents = self._encode_images(images, "images")
        prompts = [self.layout.caption_prompt(latent) for latent in latents]
        return self._decode(prompts, max_new_tokens, temperature, top_p, seed)

    def answer(self, images: Sequence[Any], questions: Sequence[str], max_new_tokens: int = 16,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
        """Answer one question per image or clip (same handling as `caption`)."""
        questions = _check_texts(questions, "questions")
        latents = self._encode_images(images, "images")
        if len(questions) != len(latents):
            raise ValueError(f"answer needs one question per image: got {len(latents)} images and "
                             f"{len(questions)} questions")
        prompts = [self.layout.vqa_prompt(latent, q) for latent, q in zip(latents, questions)]
        return self._decode(prompts, max_new_tokens, temperature, top_p, seed)

    @torch.no_grad()
    def _decode(self, prompts, max_new_tokens, temperature, top_p, seed, use_cache=True) -> list[str]:
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        _check_finite(temperature=temperature, top_p=top_p)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (1 = no nucleus cut), got {top_p}")
        generator = torch.Generator().manual_seed(seed)
        ids = decode_text(self.model, self.layout, prompts, max_new_tokens, temperature, top_p, generator,
                          use_cache=use_cache)
        return [self.tokenizer.decode(row).strip() for row in ids]

    @torch.no_grad()
    def _encode_images(self, images: Sequence[Any], name: str) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.dim() in (4, 5):  # a batch of images, or of clips
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"{name} must be a list of images or clips (paths, bytes, PIL, numpy or tensors; a clip "
                            f"is a list of frames, an (F, C, H, W) array or a video file), got {type(images).__name__}")
        if not images:
            raise ValueError(f"{name} is empty: pass at least one image")
        pixels = [self._media_tensor(item).to(self.device) for item in images]
        return [latent.to(self.dtype) for latent in encode_items(self.codec, pixels)]  # N × (C, h, w) or (C, F, h, w)

    def _media_tensor(self, item: Any) -> torch.Tensor:
        """One image -> (3, H, W), one clip -> (3, F, H, W), in [-1, 1], sized by the model's rule."""
        geometry = self.config.image_geometry()
        if not is_clip(item):
            return to_model_tensor(item, geometry)
        frames = as_clip_frames(item, self.config.num_frames if self.config.num_frames > 1 else None,
                                self.config.video_fps)
        return to_model_clip(frames, geometry)  # a frame count patch_frames does not divide: the layout says so

    # ---- generation ----
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], num_steps: int = 25, guidance_scale: float = 3.0, seed: int = 0,
                 height: int | None = None, width: int | None = None, scheduler: str | None = None,
                 output_type: str = "pil", progress: bool = False, use_cache: bool = True,
                 callback: Callable[[int, int], None] | None = None, num_frames: int | None = None):
        """Generate one image per prompt, or one clip of `num_frames` frames per prompt.

        Prompt i uses the noise of `seed + i`, so a prompt gives the same image alone or in a batch.
        `guidance_scale` 1 disables classifier-free guidance; above 1 the conditional and the
        empty-prompt sequences run in one batch. `scheduler`: "euler" (flow default) or
        "dpmsolver++" (good at few steps); "ddim"/"ddpm" for ddpm models. `output_type`: "pil"
        (list of PIL images) or "pt" (tensor (N, 3, H, W) in [0, 1], the range image inputs are read in).
        `callback(step, num_steps)`, if given, is called after each sampling step (step = 1 ..
        num_steps), e.g. to drive a progress bar. `num_frames` (None = an image): with a count,
        each prompt gives a clip, a list of `num_frames` PIL frames (write it with
        `unimodal.video.save_video`), or with "pt" a tensor (N, F, 3, H, W) in [0, 1]; a count must
        be a multiple of `patch_frames` (models trained on clips learnt `ModelConfig.num_frames`).
        """
        prompts = _check_texts(prompts, "prompts")
        if not isinstance(num_steps, int) or num_steps <= 0:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        _check_finite(guidance_scale=guidance_scale)
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {guidance_scale}")
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function callback(step, num_steps), got {type(callback).__name__}")
        scheduler = scheduler or default_scheduler_name(self.config)
        if scheduler not in self.process.schedulers:
            raise ValueError(f"unknown scheduler {scheduler!r}; for objective {self.config.objective!r} "
                             f"choose one of {self.process.schedulers}")
        height, width = self._latent_size(height, "height"), self._latent_size(width, "width")
        shape = (self.config.latent_channels, *self._frames(num_frames), height, width)
        # One generator per prompt: it draws the initial noise, then any noise a stochastic scheduler
        # ("ddpm") adds at each step, so prompt i is reproducible alone or in a batch.
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device, self.dtype)
        bar = tqdm(total=num_steps, desc="sampling", disable=not progress)

        def on_step(step: int, total: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(step, total)

        latents = sample_latents(self.model, self.layout, self.process, prompts, noise, num_steps, guidance_scale,
                                 scheduler, use_cache=use_cache, progress=on_step, generator=generators)
        bar.close()
        images = decode_batch(self.codec, latents.to(torch.float32) if self.dtype == torch.float32 else latents).float()
        if num_frames is None:
            return to_pil(images) if output_type == "pil" else ((images + 1) / 2).clamp(0, 1)
        clips = images.transpose(1, 2)  # (N, F, 3, H, W)
        return [to_pil(clip) for clip in clips] if output_type == "pil" else ((clips + 1) / 2).clamp(0, 1)

    def _frames(self, num_frames: int | None) -> tuple[int, ...]:
        """() for an image, (num_frames,) for a clip; ValueError for a bad count."""
        if num_frames is None:
            return ()
        if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int (or None for an image), got {num_frames!r}")
        if num_frames % self.config.patch_frames:
            raise ValueError(f"num_frames={num_frames}: this model makes clips of a multiple of "
                             f"{self.config.patch_frames} frames (patch_frames)")
        return (int(num_frames),)

    def _latent_size(self, pixels: int | None, name: str) -> int:
        if pixels is None:
            return self.config.latent_size
        multiple = self.config.downsample_factor * self.config.patch_size
        if isinstance(pixels, bool) or not isinstance(pixels, numbers.Integral):
            raise ValueError(f"{name} must be a whole number of pixels (an int), got {type(pixels).__name__} {pixels!r}")
        pixels = int(pixels)
        if pixels <= 0 or pixels % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} (downsample_factor x patch_size), "
                             f"got {pixels!r}")
        return pixels // self.config.downsample_factor


def _check_finite(**values: float) -> None:
    """NaN passes every `<`/`>` check, so each float argument is checked for NaN/inf first."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings; wrap a single one as [{texts!r}]")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} is empty: pass at least one")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must all be strings; found {bad[0]}")
    return list(texts)
