"""Video clips in and out: the one clip sampling rule (`read_video`, `read_frames_npy`), clips to model
tensors (`to_model_clip`), frames from whatever the Python API is given (`as_clip_frames`), and clips
written back (`save_video`, `encode_gif`).

The clip sampling rule (training shards, the API and evaluation all read clips through it): a clip
of `num_frames` frames is sampled at `fps` frames per second by sample-and-hold. Frame k is the
frame on screen at time `start + k / fps`: the last decoded frame whose presentation time is <= that
time (+ `TIME_EPSILON`). The window of `num_frames / fps` seconds is centred in the clip:
`start = (duration - num_frames / fps) / 2`, floored at 0, where duration = the last frame's
presentation time + its duration (times counted from the first frame). A clip shorter than the
window raises `ShortClipError`. Sampling by time, not by frame count, is required for GIFs: Pillow
merges identical consecutive GIF frames into one frame with the summed duration, so an 8-frame GIF
of one still image reads back as 1 frame of 800 ms, and still samples to 8 frames at 10 fps.

Decoders: GIF (and animated PNG / WebP) through Pillow, every frame converted to RGB by the image
input rule (`unimodal.images.open_image`: alpha on white); everything else (mp4, webm, mkv, mov,
avi) through PyAV, the optional `video` extra (`pip install 'unimodal[video]'`), imported only when
such a clip is read or written.
"""

from __future__ import annotations

import bisect
import io
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unimodal.extras import require_extra
from unimodal.images import ImageGeometry, _check_unit_range, open_image, to_model_tensor

DEFAULT_FPS = 10.0
VIDEO_SUFFIXES = ("gif", "mp4", "webm", "mkv", "mov", "avi")  # clip files a shard sample may hold as KEY.<suffix>
FRAMES_SUFFIX = "frames.npy"  # pre-decoded (F, H, W, 3) uint8 frames, already at the sampling rate
PILLOW_SUFFIXES = ("gif", "png", "apng", "webp")  # animated images Pillow decodes; the rest go to PyAV
SAVE_SUFFIXES = ("gif", "mp4", "webm", "mkv")  # what `save_video` writes
# Matroska/WebM store times in whole milliseconds, so a frame due at 66.67 ms sits at 67 ms; 1 ms is
# still far below any frame interval (4 ms at 240 fps).
TIME_EPSILON = 1e-3
# A GIF/APNG/WebP frame without a delay (or a zero delay) is shown for 100 ms, as browsers do.
DEFAULT_FRAME_MS = 100.0
# Encoder per container: the first one this PyAV build has (the pip wheels ship libx264 and libvpx-vp9).
_ENCODERS = {"mp4": ("libx264", "mpeg4"), "mkv": ("libx264", "mpeg4"), "webm": ("libvpx-vp9", "libvpx")}
_CONTAINER_FORMATS = {"mp4": "mp4", "mkv": "matroska", "webm": "webm"}
# Near-transparent quality: constant-quality modes (x264 CRF 18, VP9 CRF 30 with no bitrate cap).
_ENCODER_OPTIONS = {"libx264": {"crf": "18"}, "libvpx-vp9": {"crf": "30", "b:v": "0"}, "libvpx": {"crf": "10", "b:v": "1M"}}

ClipSource = Any  # list of frames, (F, H, W, 3) / (F, 3, H, W) array or tensor, or a video path / bytes


class ShortClipError(ValueError):
    """A clip lasts less than the `num_frames / fps` seconds its sampled window needs."""


@dataclass(frozen=True)
class VideoSampling:
    """How clips are sampled into model inputs: `num_frames` frames at `fps` frames per second (the
    clip sampling rule of this module's docstring)."""

    num_frames: int = 8
    fps: float = DEFAULT_FPS

    def __post_init__(self) -> None:
        _check_sampling(self.num_frames, self.fps)


def _check_sampling(num_frames: int | None, fps: float) -> None:
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral)
                                   or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int (or None for every frame), got {num_frames!r}")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")


# ---- the sampling rule ----
def sample_indices(times: Sequence[float], duration: float, num_frames: int, fps: float = DEFAULT_FPS) -> list[int]:
    """Indices of the frames the clip sampling rule takes: frame k is the last one whose time (seconds,
    non-decreasing, the first at 0) is <= `start + k / fps` (+ `TIME_EPSILON`), with the
    `num_frames / fps` second window centred in `duration` seconds. Indices repeat where the clip
    holds a frame longer than 1 / fps. Raises ShortClipError when duration < num_frames / fps."""
    _check_sampling(num_frames, fps)
    window = num_frames / fps
    if duration + TIME_EPSILON < window:
        raise ShortClipError(f"the clip lasts {duration:.3f} s, shorter than the {window:.3f} s that {num_frames} "
                             f"frames at {fps:g} fps need; pass fewer frames or a lower fps")
    start = max(0.0, (duration - window) / 2)
    return [max(0, bisect.bisect_right(times, start + k / fps + TIME_EPSILON) - 1) for k in range(num_frames)]


# ---- reading ----
def read_video(source: str | os.PathLike | bytes, num_frames: int | None, fps: float = DEFAULT_FPS,
               suffix: str | None = None) -> np.ndarray:
    """A video file -> (F, H, W, 3) uint8 RGB frames by the clip sampling rule (module docstring).

    Args:
        source: a path, or the encoded bytes of a clip.
        num_frames: frames to sample (F = num_frames); None = every decoded frame at its native
            timing, except that a GIF/APNG/WebP frame lasting several 1 / fps steps is repeated
            round(duration × fps) times (at least once), which undoes Pillow's merging of identical
            consecutive frames for a GIF written at `fps`.
        fps: sampling rate in frames per second.
        suffix: the file type of `bytes` ("gif", "mp4", "webm", ...; a path's own suffix is used
            otherwise). GIF, PNG and WebP bytes are recognised by their magic bytes too.

    Raises:
        ShortClipError: the clip is shorter than num_frames / fps seconds.
        ValueError: bytes the decoder cannot read (its message included), or no video frames.
        FileNotFoundError: a path that is not a file.
        ImportError: a non-GIF clip without PyAV (`pip install 'unimodal[video]'`).
    """
    _check_sampling(num_frames, fps)
    opened: str | io.BytesIO
    if isinstance(source, (bytes, bytearray, memoryview)):
        opened = io.BytesIO(source)
        head = opened.getvalue()[:16]
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no video file at {path}")
        with open(path, "rb") as handle:
            head = handle.read(16)
        opened, suffix = str(path), suffix or path.suffix
    else:
        raise TypeError(f"read_video takes a path or encoded bytes, got {type(source).__name__}")
    pillow = _pillow_magic(head) or (suffix or "").lower().lstrip(".") in PILLOW_SUFFIXES
    times, durations, frames, to_rgb = _decode_pillow(opened) if pillow else _decode_av(opened)
    if num_frames is None:
        repeats = [max(1, round(d * fps)) for d in durations] if pillow else [1] * len(frames)
        indices = [i for i, r in enumerate(repeats) for _ in range(r)]
    else:
        indices = sample_indices(times, times[-1] + durations[-1], num_frames, fps)
    converted: dict[int, np.ndarray] = {}  # a frame held for several steps is converted once
    for index in indices:
        if index not in converted:
            converted[index] = to_rgb(frames[index])
    return np.stack([converted[i] for i in indices])


def _pillow_magic(head: bytes) -> bool:
    """GIF, PNG (APNG) or WebP magic bytes."""
    return head[:6] in (b"GIF87a", b"GIF89a") or head[:8] == b"\x89PNG\r\n\x1a\n" or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _decode_pillow(source: str | io.BytesIO):
    """(times, durations in seconds, (H, W, 3) uint8 frames, identity) of a GIF/APNG/WebP."""
    times, durations, frames, now = [], [], [], 0.0
    try:
        with Image.open(source) as image:
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                image.load()  # WebP sets a frame's duration only when the frame is loaded
                milliseconds = float(image.info.get("duration") or DEFAULT_FRAME_MS)  # see DEFAULT_FRAME_MS
                times.append(now)
                durations.append(milliseconds / 1000)
                now += milliseconds / 1000
                frames.append(np.asarray(open_image(image)))  # the image input rule: alpha on white
    except Exception as exn:  # Pillow raises OSError, SyntaxError, EOFError, ValueError, ... for bad bytes
        raise ValueError(f"could not decode the animated image: {type(exn).__name__}: {exn}") from exn
    return times, durations, frames, lambda frame: frame


def _import_av():
    require_extra("video", "av", feature="reading and writing mp4/webm/mkv/mov/avi clips (GIF needs no extra)")
    import av

    return av


def _decode_av(source: str | io.BytesIO):
    """(times, durations in seconds, av.VideoFrame frames, to-RGB) of the first video stream."""
    av = _import_av()
    decoded = []
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError("the file holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            step = 1 / float(rate) if rate else DEFAULT_FRAME_MS / 1000
            for frame in container.decode(stream):
                # a frame without a pts (some AVI streams) follows the previous one by one frame interval
                time = frame.time if frame.time is not None else (decoded[-1][0] + step if decoded else 0.0)
                decoded.append((float(time), frame))
    except Exception as exn:  # PyAV raises av.FFmpegError subclasses (InvalidDataError, ...) for bad bytes
        raise ValueError(f"could not decode the video: {type(exn).__name__}: {exn}") from exn
    if not decoded:
        raise ValueError("the video holds no decodable frames")
    decoded.sort(key=lambda item: item[0])  # presentation order (stable for equal times)
    first = decoded[0][0]  # streams may start at a non-zero pts: times count from the first frame
    times = [t - first for t, _ in decoded]
    last = decoded[-1][1]
    last_duration = float(last.duration * last.time_base) if getattr(last, "duration", None) and last.time_base else step
    durations = [b - a for a, b in zip(times, times[1:])] + [last_duration]
    return times, durations, [frame for _, frame in decoded], lambda frame: frame.to_ndarray(format="rgb24")


def read_frames_npy(data: bytes, num_frames: int | None) -> np.ndarray:
    """KEY.frames.npy bytes -> (num_frames, H, W, 3) uint8: the centred window of `num_frames`
    consecutive frames (the frames are taken as already at the sampling rate); None = all of them.

    Accepts (F, H, W, 3) uint8, or (F, H, W) uint8 grey (repeated to RGB). Raises ShortClipError
    for fewer than `num_frames` frames, ValueError for bytes numpy cannot load (pickles are refused)
    or another dtype or shape.
    """
    _check_sampling(num_frames, DEFAULT_FPS)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exn:  # numpy raises ValueError, OSError, EOFError, ... for garbage bytes
        raise ValueError(f"{FRAMES_SUFFIX} bytes numpy cannot load: {type(exn).__name__}: {exn}") from exn
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        what = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{FRAMES_SUFFIX} must hold a uint8 array, got {what}; save (F, H, W, 3) uint8 frames")
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{FRAMES_SUFFIX} must be (F, H, W, 3) or (F, H, W) uint8 frames, got shape {array.shape}")
    count = array.shape[0]
    if num_frames is None:
        return np.ascontiguousarray(array)
    if count < num_frames:
        raise ShortClipError(f"{FRAMES_SUFFIX} holds {count} frames, fewer than the {num_frames} a clip needs")
    start = (count - num_frames) // 2
    return np.ascontiguousarray(array[start: start + num_frames])


# ---- frames to model tensors and back ----
def to_model_clip(frames: np.ndarray | torch.Tensor | Sequence[Any], size: int | ImageGeometry) -> torch.Tensor:
    """Frames -> (3, F, H, W) float in [-1, 1], the model's clip input: every frame goes through
    `unimodal.images.to_model_tensor(frame, size)`, so a clip is sized exactly like an image of its
    frame size (`size`: an int for size × size, or an `ImageGeometry`).

    `frames`: an (F, H, W, 3) uint8 array (or an (F, ...) array / tensor of frames), or a list of
    frames that `to_model_tensor` accepts (PIL images, arrays, paths). Raises ValueError for no
    frames or frames of different sizes, TypeError for other types.
    """
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise ValueError(f"a clip array must be (F, H, W, 3) or (F, 3, H, W), got shape {tuple(frames.shape)}")
        frame_list = list(frames)
    elif isinstance(frames, (list, tuple)):
        frame_list = [open_image(f) if isinstance(f, (str, os.PathLike, bytes)) else f for f in frames]
    else:
        raise TypeError(f"to_model_clip takes an (F, H, W, 3) array or a list of frames, got {type(frames).__name__}")
    if not frame_list:
        raise ValueError("a clip needs at least one frame")
    sizes = [_frame_hw(frame) for frame in frame_list]
    if len(set(sizes)) > 1:
        raise ValueError(f"all frames of a clip must have one size; got (H, W) sizes {sorted(set(sizes))}")
    return torch.stack([to_model_tensor(frame, size) for frame in frame_list], dim=1)


def _frame_hw(frame: Any) -> tuple[int, int]:
    """(H, W) of a PIL image or of an array read by `to_model_tensor`'s layout rule."""
    if isinstance(frame, Image.Image):
        return frame.height, frame.width
    if not isinstance(frame, (np.ndarray, torch.Tensor)):
        raise TypeError(f"a frame must be a PIL image, array, tensor or path, got {type(frame).__name__}")
    shape = tuple(frame.shape)
    shape = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(shape) == 2:
        return shape
    if len(shape) == 3:
        channels_last = shape[0] not in (1, 2, 3, 4) and shape[-1] in (1, 2, 3, 4)  # to_model_tensor's rule
        return shape[:2] if channels_last else shape[1:]
    raise ValueError(f"a frame must be (H, W), (H, W, C) or (C, H, W); got shape {shape}")


def is_clip(item: Any) -> bool:
    """Whether an input of the Python API is a clip rather than an image: a list or tuple (of frames);
    an array or tensor of 4 dims with more than one frame ((1, C, H, W) stays an image); a path or the
    bytes of a video file (by its suffix), or of an animated image with more than one frame."""
    if isinstance(item, (list, tuple)):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4 and item.shape[0] > 1
    if isinstance(item, (str, os.PathLike)):
        suffix = Path(item).suffix.lower().lstrip(".")
        if suffix not in PILLOW_SUFFIXES:  # only these can animate: a JPEG path is not opened twice
            return suffix in VIDEO_SUFFIXES
        source: Any = item
    elif isinstance(item, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(item))
    else:
        return False
    try:
        with Image.open(source) as image:
            return getattr(image, "n_frames", 1) > 1
    except (OSError, ValueError):  # not an image Pillow reads: a video file for read_video (or a clear error there)
        return isinstance(item, (bytes, bytearray, memoryview))


def as_clip_frames(clip: ClipSource, num_frames: int | None = None, fps: float = DEFAULT_FPS) -> list[Image.Image]:
    """A clip in any form the Python API accepts -> its frames as RGB PIL images.

    - a list / tuple of frames: PIL images (any mode, converted by `open_image`), (H, W, 3) uint8
      arrays, or image paths / bytes;
    - a numpy array or torch tensor (F, 3, H, W) or (F, H, W, 3), uint8 or float in [0, 1] (the
      float rule of `to_model_tensor`: values beyond rounding outside [0, 1] are a ValueError);
    - a path or the bytes of a video file: `read_video(clip, num_frames, fps)` (None: every frame).
    Raises TypeError for other types or dtypes, ValueError for other shapes or no frames.
    """
    if isinstance(clip, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [Image.fromarray(frame) for frame in read_video(clip, num_frames, fps)]
    if isinstance(clip, (np.ndarray, torch.Tensor)):
        return [Image.fromarray(frame) for frame in _clip_array_hwc(clip)]
    if not isinstance(clip, (list, tuple)):
        raise TypeError(f"a clip must be a list of frames, an (F, H, W, 3) / (F, 3, H, W) array or tensor, or a "
                        f"video path / bytes; got {type(clip).__name__}")
    if not clip:
        raise ValueError("a clip needs at least one frame")
    frames = []
    for index, frame in enumerate(clip):
        if isinstance(frame, (Image.Image, str, os.PathLike, bytes)):
            frames.append(open_image(frame))
        elif isinstance(frame, (np.ndarray, torch.Tensor)):
            if frame.ndim != 3:
                raise ValueError(f"clip frame {index} must be (H, W, 3) or (3, H, W), got shape {tuple(frame.shape)}")
            frames.append(Image.fromarray(_clip_array_hwc(frame[None])[0]))
        else:
            raise TypeError(f"clip frame {index} is a {type(frame).__name__}; pass PIL images, (H, W, 3) uint8 "
                            "arrays or image paths")
    return frames


def _clip_array_hwc(clip: np.ndarray | torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) or (F, H, W, 3), uint8 or float in [0, 1] -> (F, H, W, 3) uint8."""
    tensor = torch.from_numpy(np.require(clip, requirements=["C", "W"])) if isinstance(clip, np.ndarray) else (
        clip.detach().cpu())
    if tensor.ndim != 4 or 3 not in (tensor.shape[1], tensor.shape[-1]) or 0 in tensor.shape:
        raise ValueError(f"a clip array must be (F, 3, H, W) or (F, H, W, 3), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] == 3:  # channels first, as to_model_tensor prefers for an ambiguous shape
        tensor = tensor.permute(0, 2, 3, 1)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous().numpy()
    if not torch.is_floating_point(tensor):
        raise TypeError(f"clip arrays must be uint8 or float in [0, 1], got {tensor.dtype}")
    tensor = tensor.float()
    _check_unit_range(tensor, "a float clip")
    return (tensor.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()


# ---- writing ----
def encode_gif(frames: ClipSource, fps: float = DEFAULT_FPS) -> bytes:
    """Frames (anything `as_clip_frames` takes) -> animated GIF bytes, looping, round(1000 / fps) ms
    per frame (GIF stores centiseconds: 33 ms is stored as 30 ms). A frame of at most 256 colours is
    stored losslessly (its own exact palette); others are quantised to 256 colours (median cut).
    Identical consecutive frames become one frame of the summed duration (Pillow's encoder), which
    the clip sampling rule reads back as the frames they were."""
    _check_sampling(None, fps)
    images = [_palette_image(np.asarray(frame)) for frame in as_clip_frames(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   disposal=2)
    return buffer.getvalue()


def _palette_image(rgb: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 -> a P image: exact for <= 256 colours, else median-cut quantised."""
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) > 256:
        return Image.fromarray(rgb).quantize(256)
    image = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), "P")
    image.putpalette(colours.astype(np.uint8).tobytes())
    return image


def save_video(frames: ClipSource, path: str | os.PathLike, fps: float = DEFAULT_FPS) -> Path:
    """Write frames (a list of PIL images, an (F, H, W, 3) uint8 array, an (F, 3, H, W) float tensor
    in [0, 1], or anything else `as_clip_frames` takes) as a clip at `fps` frames per second.

    By the path's suffix: .gif (`encode_gif`; no extra needed), .mp4 / .mkv (H.264 yuv420p, or MPEG-4
    part 2 where this PyAV build lacks libx264) and .webm (VP9) through PyAV. yuv420p needs even
    sides, so a frame with an odd side is padded by one row / column copied from its edge. The file
    is written to a temporary sibling and renamed into place (folders are created). Returns the path.
    Raises ValueError for another suffix, ImportError for video formats without PyAV.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(f"save_video writes {', '.join('.' + s for s in SAVE_SUFFIXES)} files; got {path.name!r}")
    _check_sampling(None, fps)
    data = encode_gif(frames, fps) if suffix == "gif" else _encode_av(as_clip_frames(frames), fps, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees a half-written file
    return path


def _encode_av(frames: list[Image.Image], fps: float, suffix: str) -> bytes:
    av = _import_av()
    codec = next((name for name in _ENCODERS[suffix] if _has_encoder(av, name)), _ENCODERS[suffix][-1])
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 2997/100; MPEG-4 time bases need a small denominator
    array = np.stack([np.asarray(frame) for frame in frames])
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:  # yuv420p stores chroma at half resolution: both sides must be even
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_CONTAINER_FORMATS[suffix]) as container:
        stream = container.add_stream(codec, rate=rate, options=_ENCODER_OPTIONS.get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = max(1_000_000, int(array.shape[1] * array.shape[2] * fps))  # ~1 bit per pixel
        for index, rgb in enumerate(array):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the frames the encoder holds back
    return buffer.getvalue()


def _has_encoder(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # av.codec.codec.UnknownCodecError: this build has no such encoder
        return False
    return True
