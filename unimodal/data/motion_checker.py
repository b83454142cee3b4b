"""Read a moving-shapes clip back (`unimodal.data.motion`): shape, colour and direction of each object,
scored against a target like the still `Checker` scores an image.

    MotionChecker(MotionConfig()).check(generated_frames, sample.objects)   # {"count", ..., "all_correct"}
    clip_frames(frames)   # any common clip form -> (F, H, W, 3) uint8
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .checker import Checker, score_objects, to_uint8_rgb
from .motion import (
    MOTION_ATTRIBUTES,
    MotionConfig,
    MovingObject,
    as_moving_objects,
    parse_motion_caption,
)

CLIP_LAYOUTS = ("FHWC", "FCHW", "CFHW")


def clip_frames(frames: Any, layout: str | None = None) -> np.ndarray:
    """A clip in any common form -> (F, H, W, 3) uint8.

    Accepts an (F, H, W, 3) uint8 array, a list of PIL images or (H, W, 3) / (3, H, W) arrays, and
    4-D float arrays/tensors in [-1, 1] laid out (F, H, W, 3), (F, 3, H, W) or the model's (3, F, H, W).
    `layout` ("FHWC", "FCHW", "CFHW") says which for a 4-D input; None infers it from where the
    3 channels are, and raises ValueError when that is ambiguous (3 frames channel-first) or the
    input is not a clip.
    """
    if isinstance(frames, (list, tuple)):
        if layout is not None:
            raise ValueError("layout applies to a 4-D array or tensor, not to a list of frames")
        rgb = [to_uint8_rgb(frame) for frame in frames]
        if not rgb:
            raise ValueError("a clip needs at least one frame, got an empty list")
        if len({frame.shape for frame in rgb}) != 1:
            raise ValueError(f"the frames of a clip must share one size, got {sorted({f.shape for f in rgb})}")
        return np.stack(rgb)
    array = frames.detach().cpu() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4:
        raise ValueError(f"a clip is a 4-D array/tensor (F, H, W, 3), (F, 3, H, W) or (3, F, H, W), "
                         f"or a list of frames; got shape {tuple(array.shape)}")
    shape = tuple(array.shape)
    if layout is None:
        if shape[-1] == 3:
            layout = "FHWC"
        elif shape[1] == 3 and shape[0] != 3:
            layout = "FCHW"
        elif shape[0] == 3 and shape[1] != 3:
            layout = "CFHW"
        else:
            raise ValueError(f"cannot tell frames from channels in a clip of shape {shape}; pass layout= one of {CLIP_LAYOUTS}")
    if layout not in CLIP_LAYOUTS:
        raise ValueError(f"unknown clip layout {layout!r}; expected one of {CLIP_LAYOUTS}")
    if layout == "CFHW":
        array = array.transpose(0, 1) if isinstance(array, torch.Tensor) else array.transpose(1, 0, 2, 3)
    channels = shape[-1] if layout == "FHWC" else shape[1 if layout == "FCHW" else 0]
    if channels != 3:
        raise ValueError(f"a clip of layout {layout} needs 3 channels, got shape {shape}")
    return np.stack([to_uint8_rgb(frame) for frame in array])


def _label_components(classes: np.ndarray) -> np.ndarray:
    """(F, H, W) int pixel classes (-1 = none) -> (F, H, W) int64 ids of 4-connected same-class
    components within each frame (-1 = none). Vectorised max-label propagation: a clip has F frames,
    so the still checker's per-pixel Python flood fill would dominate reading time."""
    ids = np.where(classes >= 0, np.arange(classes.size).reshape(classes.shape), -1)
    same_rows = (classes[:, 1:] == classes[:, :-1]) & (classes[:, 1:] >= 0)  # pixel and the one above
    same_cols = (classes[:, :, 1:] == classes[:, :, :-1]) & (classes[:, :, 1:] >= 0)  # pixel and its left one
    while True:
        before = ids.copy()
        np.maximum(ids[:, 1:], np.where(same_rows, ids[:, :-1], -1), out=ids[:, 1:])
        np.maximum(ids[:, :-1], np.where(same_rows, ids[:, 1:], -1), out=ids[:, :-1])
        np.maximum(ids[:, :, 1:], np.where(same_cols, ids[:, :, :-1], -1), out=ids[:, :, 1:])
        np.maximum(ids[:, :, :-1], np.where(same_cols, ids[:, :, 1:], -1), out=ids[:, :, :-1])
        if np.array_equal(before, ids):
            return ids


class MotionChecker:
    """Detects the moving objects of a `MotionConfig` clip (GenEval-like scoring for video).

    Per frame, pixels are classified with the still `Checker.classify_pixels`; per colour, the
    pixels of all its components except specks (below `min_area_fraction` of a shape's box) are the
    object in that frame. An object is present if found in at least half the frames; its shape is
    the majority vote over those frames of the template-IoU shape, templates drawn at the world's one
    shape side (a smear beside a shape does not resize them); its track is the
    centroid per frame; its direction comes from the least-squares slope of the track: "still" if the
    displacement over the clip is below `still_fraction` x the expected travel on both axes, else the
    dominant axis and its sign (x grows to the right, y downwards).

    Args:
        config: the world whose palette, shapes, size and speed to expect (the canvas and frame count
            come from each clip: shape sides from its shorter side, the travel from its frames).
        max_colour_distance, min_area_fraction: as for `Checker`.
        still_fraction: displacement threshold as a fraction of `speed * (F - 1)`.
    """

    def __init__(self, config: MotionConfig | None = None, max_colour_distance: float | None = None,
                 min_area_fraction: float = 0.25, still_fraction: float = 0.35):
        self.config = config or MotionConfig()
        self.checker = Checker(self.config.world_config(), max_colour_distance=max_colour_distance,
                               min_area_fraction=min_area_fraction)
        self.colour_names = list(self.config.colours)
        self.min_area_fraction = min_area_fraction
        self.still_fraction = still_fraction

    def read(self, frames: Any, layout: str | None = None) -> list[dict[str, Any]]:
        """Per detected object (palette order): {"shape", "colour", "direction", "track": (F, 2) float
        centroids (x, y) in pixels, NaN where not found, "displacement": (dx, dy) px over the clip}.

        `frames` as `clip_frames` accepts; ValueError for fewer than 2 frames or frames under 8 px.
        """
        clip = clip_frames(frames, layout)
        num_frames, height, width = clip.shape[:3]
        if num_frames < 2:
            raise ValueError(f"a clip needs >= 2 frames to show motion, got {num_frames}")
        if min(width, height) < 8:
            raise ValueError(f"frames of {width}x{height} px (WxH) are too small to read shapes")
        # classify_pixels works per pixel, so the frames stacked as one tall image are classified in one call
        classes = self.checker.classify_pixels(clip.reshape(num_frames * height, width, 3)).reshape(num_frames, height, width)
        side = self.config.side_at(width, height)
        min_area = max(2, int(self.min_area_fraction * side**2))
        ids = _label_components(classes)
        sizes = np.bincount(ids[ids >= 0], minlength=classes.size)
        classes = np.where((ids >= 0) & (sizes[np.maximum(ids, 0)] >= min_area), classes, -1)  # specks dropped
        travel = self.config.speed * (num_frames - 1)
        times = np.arange(num_frames, dtype=np.float64)
        found = []
        for colour_index, colour in enumerate(self.colour_names):
            track = np.full((num_frames, 2), np.nan)
            votes: Counter[str] = Counter()
            for f in range(num_frames):
                pixels = np.argwhere(classes[f] == colour_index)
                if len(pixels):
                    track[f] = pixels[:, ::-1].mean(0) + 0.5  # (x, y) of the pixel centres
                    votes[self.checker.shape_of(pixels, side)] += 1
            seen = ~np.isnan(track[:, 0])
            if 2 * seen.sum() < num_frames:
                continue
            shape = max(self.config.shapes, key=lambda s: (votes[s], -self.config.shapes.index(s)))
            if seen.sum() >= 2:  # least-squares slope (px/frame) over the frames where it was found
                t = times[seen] - times[seen].mean()
                slope = (t[:, None] * (track[seen] - track[seen].mean(0))).sum(0) / (t**2).sum()
            else:
                slope = np.zeros(2)
            dx, dy = slope * (num_frames - 1)
            if max(abs(dx), abs(dy)) < self.still_fraction * travel:
                direction = "still"
            elif abs(dx) >= abs(dy):
                direction = "right" if dx > 0 else "left"
            else:
                direction = "down" if dy > 0 else "up"
            found.append({"shape": shape, "colour": colour, "direction": direction, "track": track,
                          "displacement": (float(dx), float(dy))})
        return found

    def detect(self, frames: Any, layout: str | None = None) -> list[MovingObject]:
        """The objects of the clip, in palette order of their colour (see `read`)."""
        return [MovingObject(o["shape"], o["colour"], o["direction"]) for o in self.read(frames, layout)]

    def check(self, frames: Any, target: str | Iterable[MovingObject | Mapping[str, str]],
              layout: str | None = None) -> dict[str, Any]:
        """Compare the detected clip with `target` (objects, their JSON dicts, or a caption).

        Each attribute compares multisets, so it is right even if objects are bound wrongly:
        `count`, `colour`, `shape`, `direction`; `all_correct` needs the multiset of full
        (shape, colour, direction) objects to match exactly. `object_accuracy` = matched full
        objects / max(#target, #detected). `detected` = the detected objects' JSON dicts.
        """
        objects = parse_motion_caption(target, self.config) if isinstance(target, str) else as_moving_objects(target)
        return score_objects(self.detect(frames, layout), objects, MOTION_ATTRIBUTES)


__all__ = ["CLIP_LAYOUTS", "MotionChecker", "clip_frames"]
