"""Read a synthetic-world scene back from any image and score it against a target (GenEval-like).

Pipeline on one image (H, W, 3), generated ones included (noisy, blurry):
  1. every pixel goes to the palette colour that explains it best as a colour/background mix with
     at least half coverage, or to the background (`Checker.classify_pixels`);
  2. 4-connected components per colour; components of one colour whose centroids fall in the same
     grid cell are merged (a shape broken by noise), and specks below `min_area_fraction` of a small
     shape are dropped;
  3. position = the grid cell of the centroid; shape = the template (circle/square/triangle, drawn
     exactly as the renderer does at the component's bounding box) with the best IoU; size = the
     size whose ideal pixel area for that shape is nearest (log scale) to the component's area.

    checker = Checker(WorldConfig())
    checker.detect(image) -> [SceneObject, ...]
    checker.check(image, target_objects) -> {"count", "colour", "shape", "position", "size",
                                             "all_correct": bool, "object_accuracy": float, ...}
    parse_caption("a large red circle at the top left and ...") -> [SceneObject, ...]

The grid is derived from the image's own width and height, so images of another resolution or
aspect ratio are read too (a W x H image as the world's canvas (W, H), `WorldConfig.with_canvas`).
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unimodal.images import open_image

from .synthetic import POSITION_PHRASES, POSITIONS, SceneObject, WorldConfig, shape_mask

ATTRIBUTES = ("count", "colour", "shape", "position", "size")


def _offsets(extent: int, side: int) -> range:
    """Template offsets (relative to the pixels' first row or column) from aligning the near edges to
    aligning the far edges of an `extent`-long run of pixels and a `side`-long template."""
    step = 1 if extent >= side else -1
    return range(0, extent - side + step, step)


def as_records(objects: Iterable[Any], kind: type) -> list:
    """`kind` NamedTuples (SceneObject, MovingObject) from themselves or their JSON dicts. Raises
    ValueError for a dict lacking a field, TypeError for anything else."""
    result = []
    for obj in objects:
        if isinstance(obj, kind):
            result.append(obj)
        elif isinstance(obj, Mapping):
            try:
                result.append(kind(*(obj[k] for k in kind._fields)))
            except KeyError as exn:
                raise ValueError(f"object {dict(obj)} lacks the field {exn}; need {kind._fields}") from None
        else:
            raise TypeError(f"expected a {kind.__name__} or a dict, got {type(obj).__name__}")
    return result


def as_objects(objects: Iterable[SceneObject | Mapping[str, str]]) -> list[SceneObject]:
    """Accept SceneObjects or their JSON dicts ({"shape", "colour", "size", "position"})."""
    return as_records(objects, SceneObject)


def to_uint8_rgb(image: Any) -> np.ndarray:
    """PIL image, (H, W, 3) uint8 array, or (3, H, W) float tensor/array in [-1, 1] -> (H, W, 3) uint8."""
    if hasattr(image, "convert"):  # PIL: the project's one input rule
        return np.asarray(open_image(image))
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected one image (H, W, 3) or (3, H, W), got shape {array.shape}")
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return array
    return np.clip(np.round((array.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a bool (H, W) mask -> list of (n, 2) (row, col) index arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    result = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        result.append(np.array(pixels))
    return result


class Checker:
    """Detects the objects of a `WorldConfig` scene in an image.

    Args:
        config: the world whose palette, shapes and sizes to look for (image_size is ignored: the
            grid and the shape sizes come from each image's own width and height).
        max_colour_distance: largest RGB residual with which a pixel still counts as a colour/background
            mix (see `classify_pixels`); None = 0.4 x the smallest distance between two palette
            entries (102 for the default palette).
        min_area_fraction: components smaller than this fraction of a small shape's box are specks.
    """

    def __init__(self, config: WorldConfig | None = None, max_colour_distance: float | None = None,
                 min_area_fraction: float = 0.25):
        self.config = config or WorldConfig()
        self.colour_names = list(self.config.colours)
        palette = [self.config.colours[n] for n in self.colour_names] + [self.config.background]
        self.palette = np.array(palette, dtype=np.float32)  # (K + 1, 3), background last
        pairwise = np.linalg.norm(self.palette[:, None] - self.palette[None], axis=-1)
        smallest = pairwise[~np.eye(len(palette), dtype=bool)].min() if len(palette) > 1 else 255.0
        self.max_colour_distance = max_colour_distance if max_colour_distance is not None else 0.4 * smallest
        self.min_area_fraction = min_area_fraction

    def _world_at(self, width: int, height: int) -> WorldConfig:
        """The config's grid geometry on the canvas of the image being read."""
        if min(width, height) < 12:
            raise ValueError(f"an image of {width}x{height} px (WxH) is too small to read a 3x3 grid of shapes")
        return self.config.with_canvas(width, height)

    def classify_pixels(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) int: colour index, or -1 for background / no colour.

        A pixel is read as a mix `background + alpha * (colour - background)` of each palette
        colour: it takes the colour that explains it with the smallest residual among those with
        alpha >= 0.5 (over half covered), if that residual is within `max_colour_distance`. The
        half-coverage rule keeps a blurred shape at its true extent (a plain nearest-colour rule
        with a distance threshold erodes blurred corners and apexes and turns squares into circles).
        """
        background = self.palette[-1]
        directions = self.palette[:-1] - background  # (K, 3)
        offset = image.astype(np.float32) - background  # (H, W, 3)
        alpha = np.clip(offset @ directions.T / (directions**2).sum(-1), 0.0, 1.0)  # (H, W, K)
        residual = np.linalg.norm(offset[:, :, None, :] - alpha[..., None] * directions, axis=-1)  # (H, W, K)
        residual[alpha < 0.5] = np.inf
        labels = residual.argmin(-1)
        labels[residual.min(-1) > self.max_colour_distance] = -1
        return labels

    def detect(self, image: Any) -> list[SceneObject]:
        """The objects in `image`, in row-major cell order."""
        rgb = to_uint8_rgb(image)
        height, width = rgb.shape[:2]
        world = self._world_at(width, height)
        labels = self.classify_pixels(rgb)
        smallest_side = min(world.size_px(s) for s in world.sizes)
        min_area = max(2, int(self.min_area_fraction * smallest_side**2))
        found = []
        for colour_index, colour in enumerate(self.colour_names):
            groups: dict[str, list[np.ndarray]] = {}
            for pixels in _components(labels == colour_index):
                cy, cx = pixels.mean(0) + 0.5
                groups.setdefault(self._cell(world, cy, cx), []).append(pixels)
            for position, parts in groups.items():
                pixels = np.concatenate(parts)
                if len(pixels) >= min_area:
                    shape = self._shape(pixels)
                    found.append(SceneObject(shape, colour, self._size(world, shape, len(pixels)), position))
        return sorted(found, key=lambda o: POSITIONS.index(o.position))

    @staticmethod
    def _cell(world: WorldConfig, cy: float, cx: float) -> str:
        top, left = world.grid_origin
        row = min(2, max(0, int((cy - top) // world.cell_height)))
        col = min(2, max(0, int((cx - left) // world.cell_width)))
        return POSITIONS[3 * row + col]

    def _shape(self, pixels: np.ndarray, side: int | None = None) -> str:
        """The shape whose template of side `side` overlaps the component best (IoU), the template
        tried at every offset between the component's bounding-box edges along each axis.

        `side` None = the component's longer bounding-box side (this world has two sizes); a shorter
        side (blur erodes a triangle's one-pixel apex) is then tried at every offset inside it. A world
        of one known size passes it, so a smear beside a shape does not resize the templates.
        """
        top, left = pixels.min(0)
        height, width = pixels.max(0) + 1 - (top, left)
        side = int(max(height, width)) if side is None else side
        # the pixels in a box padded by `side`, so a template fits at any offset
        box = np.zeros((height + 2 * side, width + 2 * side), dtype=bool)
        box[pixels[:, 0] - top + side, pixels[:, 1] - left + side] = True
        templates = [(shape, shape_mask(shape, side)) for shape in self.config.shapes]
        best, best_iou = self.config.shapes[0], -1.0
        for r in _offsets(height, side):
            for c in _offsets(width, side):
                window = box[side + r: side + r + side, side + c: side + c + side]
                for shape, template in templates:
                    inter = (template & window).sum()
                    iou = inter / max(1, len(pixels) + template.sum() - inter)
                    if iou > best_iou:
                        best, best_iou = shape, iou
        return best

    def shape_of(self, pixels: np.ndarray, side: int | None = None) -> str:
        """The shape name of one object's pixels: (n, 2) int (row, col) indices, n >= 1 (the template-IoU
        rule of `detect`, public for readers of other media such as `motion_checker.py`'s clips);
        `side` fixes the template side (None: the pixels' longer bounding-box side)."""
        if len(pixels) == 0:
            raise ValueError("shape_of needs at least one pixel")
        return self._shape(np.asarray(pixels), side)

    @staticmethod
    def _size(world: WorldConfig, shape: str, area: int) -> str:
        ideal = {name: shape_mask(shape, world.size_px(name)).sum() for name in world.sizes}
        return min(ideal, key=lambda name: abs(np.log(area) - np.log(ideal[name])))

    def check(self, image: Any, target_objects: Iterable[SceneObject | Mapping[str, str]]) -> dict[str, Any]:
        """Compare the detected scene with `target_objects`.

        Each attribute compares multisets, so it is right even if objects are bound wrongly:
        `count` (number of objects), `colour`, `shape`, `position`, `size`; `all_correct` needs the
        multiset of full (shape, colour, size, position) objects to match exactly (binding included).
        `object_accuracy` = matched full objects / max(#target, #detected), a partial credit.
        """
        return score_objects(self.detect(image), as_objects(target_objects), ATTRIBUTES)


def score_objects(detected: Sequence[Any], target: Sequence[Any], attributes: Sequence[str]) -> dict[str, Any]:
    """Detected against target objects (NamedTuples): "count", then one bool per other attribute
    comparing multisets (right even if objects are bound wrongly); "all_correct" (the multisets of
    whole objects match), "object_accuracy" (matched whole objects / max(#target, #detected)) and
    "detected" (their JSON dicts). `attributes[0]` is "count"."""
    result: dict[str, Any] = {"count": len(detected) == len(target)}
    for attribute in attributes[1:]:
        result[attribute] = Counter(getattr(o, attribute) for o in detected) == Counter(
            getattr(o, attribute) for o in target)
    matched = sum((Counter(detected) & Counter(target)).values())
    result["all_correct"] = Counter(detected) == Counter(target)
    result["object_accuracy"] = matched / max(1, len(target), len(detected))
    result["detected"] = [o._asdict() for o in detected]
    return result


# ---- captions ----
def _object_pattern(config: WorldConfig) -> re.Pattern:
    alt = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # noqa: E731
    phrases = {phrase: position for position, phrase in POSITION_PHRASES.items()}
    return re.compile(rf"an? (?P<size>{alt(config.sizes)}) (?P<colour>{alt(config.colours)}) "
                      rf"(?P<shape>{alt(config.shapes)}) (?P<where>{alt(phrases)})")


def parse_caption(caption: str, config: WorldConfig | None = None) -> list[SceneObject]:
    """Inverse of `synthetic.caption`: "a large red circle at the top left and a small ..." -> objects.

    Tolerates case, surrounding whitespace and a final period. Raises ValueError for anything else,
    so eval can count unparseable prompts instead of checking against a wrong target.
    """
    config = config or WorldConfig()
    text = caption.strip().lower().rstrip(".").strip()
    parts = re.split(r", | and ", text)
    pattern = _object_pattern(config)
    phrases = {phrase: position for position, phrase in POSITION_PHRASES.items()}
    objects = []
    for part in parts:
        match = pattern.fullmatch(part.strip())
        if not match:
            raise ValueError(f"cannot parse {part!r} in caption {caption!r}; expected "
                             "'a <size> <colour> <shape> <position phrase>' joined by ', ' and ' and '")
        objects.append(SceneObject(match["shape"], match["colour"], match["size"], phrases[match["where"]]))
    if len({o.position for o in objects}) != len(objects):
        raise ValueError(f"caption {caption!r} puts two objects in one cell")
    return objects


def check(image: Any, target: str | Sequence[SceneObject | Mapping[str, str]],
          config: WorldConfig | None = None) -> dict[str, Any]:
    """One-shot `Checker(config).check`; `target` may also be a caption (parsed with `parse_caption`)."""
    objects = parse_caption(target, config) if isinstance(target, str) else target
    return Checker(config).check(image, objects)


__all__ = ["Checker", "check", "parse_caption", "as_objects", "as_records", "score_objects", "to_uint8_rgb", "ATTRIBUTES"]
