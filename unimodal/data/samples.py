"""Raw shard samples -> decoded samples (image, clip or latent tensor, caption, metadata).

A raw sample is a dict of bytes by suffix (`shards.iter_shard`). Its media is an image
(KEY.png|jpg|jpeg|webp) or a clip: a video file KEY.gif|mp4|webm|mkv|mov|avi, or pre-decoded frames
KEY.frames.npy, sampled by the clip sampling rule of `unimodal.video` (`VideoSampling`: frames and
fps). Decoding is the expensive step of the reader, so everything that can reject a sample without
decoding (missing caption, missing image or clip) is checked first. Anything that fails is counted in
a `SkipCounter` and returns None.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unimodal.images import ImageGeometry, to_model_tensor
from unimodal.video import (
    FRAMES_SUFFIX,
    VIDEO_SUFFIXES,
    ShortClipError,
    VideoSampling,
    read_frames_npy,
    read_video,
    to_model_clip,
)

from . import skips
from .classes import CLASS_SUFFIX, ClassCaptions, class_caption
from .shards import RawSample

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp")  # looked up in this order
LATENT_SUFFIX = "latent.npy"  # written by unimodal.data.cache_latents
CLIP_SUFFIXES = (FRAMES_SUFFIX, *VIDEO_SUFFIXES)  # looked up in this order


@dataclass
class DecodedSample:
    key: str
    # (3, H, W) float in [-1, 1] (square, or a native aspect bucket), a clip (3, F, H, W) sized alike, or (C, h, w) latent
    image: torch.Tensor
    caption: str
    metadata: dict[str, Any] = field(default_factory=dict)  # the KEY.json object ({} without one)


def image_suffix(raw: RawSample) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if s in raw), None)


def clip_suffix(raw: RawSample) -> str | None:
    return next((s for s in CLIP_SUFFIXES if s in raw), None)


def decode_image(data: bytes, image_size: int | ImageGeometry) -> torch.Tensor:
    """Encoded image bytes -> (3, H, W) float in [-1, 1]: the project's one input rule
    (`unimodal.images.open_image`: EXIF orientation, alpha on white, 16-bit scaled), then sized by
    `image_size` (an int: image_size² square; an `ImageGeometry`: square or native aspect bucket),
    exactly as `UniModal.caption` does for the same bytes."""
    return to_model_tensor(data, image_size)


def decode_clip(data: bytes, suffix: str, image_size: int | ImageGeometry, video: VideoSampling) -> torch.Tensor:
    """KEY.<suffix> clip bytes (a `VIDEO_SUFFIXES` file, or `FRAMES_SUFFIX` frames) -> (3, F, H, W)
    float in [-1, 1]: `video.num_frames` frames by the clip sampling rule (`unimodal.video`), each
    sized by `image_size` as `decode_image` sizes an image. Raises ShortClipError for a clip shorter
    than its window, ValueError for bytes that cannot be decoded, ImportError without PyAV (non-GIF)."""
    if suffix == FRAMES_SUFFIX:
        frames = read_frames_npy(data, video.num_frames)
    else:
        frames = read_video(data, video.num_frames, video.fps, suffix=suffix)
    return to_model_clip(frames, image_size)


def decode_latent(data: bytes) -> torch.Tensor:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim not in (3, 4):
        raise ValueError(f"a latent must be (C, h, w), or (C, F, h, w) for a clip, got shape {array.shape}")
    return torch.from_numpy(array.astype(np.float32, copy=False))


def _json_captions(raw: RawSample) -> list[str]:
    """The non-empty captions of KEY.json: its "caption" string, else its "captions" list."""
    try:
        metadata = json.loads(raw["json"]) if "json" in raw else {}
    except ValueError:
        return []  # counted as bad_json below
    if not isinstance(metadata, dict):
        return []
    found = metadata.get("caption")
    found = [found] if isinstance(found, str) else metadata.get("captions")
    return [c.strip() for c in found if isinstance(c, str) and c.strip()] if isinstance(found, list) else []


def sample_caption(raw: RawSample, rng: random.Random | None = None) -> str:
    """The caption of a raw sample: KEY.txt (UTF-8) when present and non-empty, else KEY.json's
    "caption", else one of KEY.json's "captions" list (drawn with `rng`; the first without one, as
    the eval suites do, which keep them all as references). "" when there is none."""
    caption = raw.get("txt", b"")
    try:
        caption = caption.decode("utf-8").strip() if isinstance(caption, bytes) else str(caption).strip()
    except UnicodeDecodeError:
        caption = ""
    if caption:
        return caption
    captions = _json_captions(raw)
    if not captions:
        return ""
    return captions[rng.randrange(len(captions))] if rng is not None else captions[0]


def decode_sample(raw: RawSample, image_size: int | ImageGeometry, counter: skips.SkipCounter, latents: bool = False,
                  rng: random.Random | None = None, classes: ClassCaptions | None = None, *,
                  video: VideoSampling | None = None) -> DecodedSample | None:
    """Decode one raw sample, or count why it is skipped and return None.

    Accepted: an image (KEY.png|jpg|jpeg|webp, suffixes in any case, decoded by the project's one
    input rule `unimodal.images.open_image`), a clip (KEY.frames.npy or KEY.gif|mp4|webm|mkv|mov|avi,
    sampled by `video`, `VideoSampling()` when None: 8 frames at 10 fps; `decode_clip`), which wins
    when a sample holds both, or KEY.latent.npy with `latents`; a caption (`sample_caption`: KEY.txt
    or KEY.json "caption"/"captions"; `rng` draws among several; else, for a class-labelled sample,
    KEY.cls named by `classes`: `unimodal.data.classes`) and an optional KEY.json object. Skipped and
    counted: missing_caption, missing_class_names/bad_class/class_out_of_range (a KEY.cls that
    `classes` cannot name), missing_image (no image and no clip)/missing_latent, bad_json,
    corrupt_image/corrupt_video/corrupt_latent, short_clip (a clip shorter than num_frames / fps).
    Raises ImportError for a non-GIF clip without PyAV (`pip install 'unimodal[video]'`): a missing
    extra is not a broken sample.
    """
    where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
    caption = sample_caption(raw, rng)
    if not caption and CLASS_SUFFIX in raw:
        caption = class_caption(raw, classes, counter, where)
        if caption is None:
            return None
    if not caption:
        counter.skip(skips.MISSING_CAPTION, where)
        return None
    if latents:
        if LATENT_SUFFIX not in raw:
            counter.skip(skips.MISSING_LATENT, where)
            return None
    elif image_suffix(raw) is None and clip_suffix(raw) is None:
        counter.skip(skips.MISSING_IMAGE, f"{where} has only {sorted(k for k in raw if not k.startswith('__'))}")
        return None
    metadata: dict[str, Any] = {}
    if "json" in raw:
        try:
            metadata = json.loads(raw["json"])
            if not isinstance(metadata, dict):
                raise ValueError(f"expected a JSON object, got {type(metadata).__name__}")
        except ValueError as exn:
            counter.skip(skips.BAD_JSON, f"{where}: {exn}")
            return None
    if latents:
        try:
            tensor = decode_latent(raw[LATENT_SUFFIX])
        except Exception as exn:  # numpy raises several types for garbage bytes
            counter.skip(skips.CORRUPT_LATENT, f"{where}: {type(exn).__name__}: {exn}")
            return None
    elif clip_suffix(raw) is not None:
        suffix = clip_suffix(raw)
        try:
            tensor = decode_clip(raw[suffix], suffix, image_size, video or VideoSampling())
        except ShortClipError as exn:
            counter.skip(skips.SHORT_CLIP, f"{where}: {exn}")
            return None
        except ImportError:
            raise  # PyAV missing: every such clip would fail, so say what to install instead of skipping
        except Exception as exn:  # Pillow and PyAV raise many types for bad bytes; read_video wraps most in ValueError
            counter.skip(skips.CORRUPT_VIDEO, f"{where}.{suffix}: {type(exn).__name__}: {exn}")
            return None
    else:
        try:
            tensor = decode_image(raw[image_suffix(raw)], image_size)
        except Exception as exn:  # PIL raises OSError, SyntaxError, ValueError, ... for bad bytes
            counter.skip(skips.CORRUPT_IMAGE, f"{where}: {type(exn).__name__}: {exn}")
            return None
    return DecodedSample(key=raw["__key__"], image=tensor, caption=caption, metadata=metadata)
