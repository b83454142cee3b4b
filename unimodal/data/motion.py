"""The moving-shapes world: seeded clips of coloured shapes that move in straight lines, with exact captions,
QA pairs; `unimodal.data.motion_checker` reads a clip back.

It shares the still world's vocabulary (`data/synthetic.py`): the colour palette, the shape names,
`shape_mask`, the background and the held-out (colour, shape) combinations, so one model learns
images and clips together. A clip is `num_frames` frames of 1..`max_shapes` objects of distinct
colours (a colour names one object); each object has a shape, a colour and a direction (left, right,
up, down or still). A mover travels `speed` px a frame in a straight line; every track stays inside
the canvas and no two objects' boxes touch in any frame (1 px gap). Frames are drawn exactly like
still images (no anti-aliasing), so `MotionChecker` (`motion_checker.py`) reads rendered ground truth back exactly.

    world = MotionWorld(MotionConfig())
    sample = world.sample(index=7, split="train", seed=0)
    sample.frames     # (F, H, W, 3) uint8: (8, 32, 32, 3) by default
    sample.caption    # "a red circle moves from left to right and a blue square stays still"
    sample.qa         # [{"question": "how many shapes move?", "answer": "1"}, ...]
    sample.objects    # [MovingObject(shape="circle", colour="red", direction="right"), ...]
    sample.metadata() # the shard's .json: objects, qa, heldout, num_frames, fps
    MotionChecker(world.config).check(generated_frames, sample.objects)   # {"count", ..., "all_correct"}

Sample `index` of (`split`, `seed`) is a pure function of those three numbers (its own seed stream,
uncorrelated with the still world's). Held-out (colour, shape) combinations never appear in
`train`/`eval` clips; every `heldout` clip contains at least one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from unimodal.config import config_from_dict

from .checker import as_records
from .synthetic import SPLITS, WorldConfig, normalise_world_fields, shape_mask

DIRECTIONS = ("left", "right", "up", "down", "still")
# Caption phrase per direction; the inverse is used by `parse_motion_caption`.
DIRECTION_PHRASES = {
    "right": "moves from left to right", "left": "moves from right to left",
    "down": "moves from top to bottom", "up": "moves from bottom to top", "still": "stays still",
}
# Unit step per frame in image coordinates (x grows to the right, y grows downwards).
DIRECTION_STEPS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "still": (0, 0)}
OPPOSITE_DIRECTIONS = {"right": "left", "left": "right", "down": "up", "up": "down", "still": "still"}
MOTION_ATTRIBUTES = ("count", "colour", "shape", "direction")
SPLIT_STREAM_OFFSET = 100  # seed stream [seed, 100 + split, index]: motion clips never share a still scene's rng
MAX_PLACEMENT_TRIES = 1000  # whole-clip restarts before a config is called too crowded (3 shapes at 32 px need <= ~150)

_STILL = WorldConfig()  # the still world's defaults, shared so both worlds speak one vocabulary


def _round(values: np.ndarray | float) -> np.ndarray:
    """Round half up (np.round rounds half to even, which would make a 1.5 px/frame track stutter)."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


POSITION_MODES = ("lanes", "free")  # MotionConfig.positions
MAX_DIRECTION_DRAWS = 20  # directions drawn again when a clip's tracks cannot be placed


def _lanes(allowed: np.ndarray, extent: int, side: int, step: int) -> np.ndarray:
    """The lane starts along one axis among `allowed` (those that keep the track on the canvas): the
    centres of the three thirds across a mover's axis or for a still shape (`step` 0), the one start
    that centres the track along it."""
    if step == 0:
        wanted = [extent * (2 * k + 1) / 6 - side / 2 for k in range(3)]
    else:
        wanted = [(allowed[0] + allowed[-1]) / 2]
    return np.unique([allowed[np.abs(allowed - w).argmin()] for w in wanted])


@dataclass
class MotionConfig:
    """What clips look like; the defaults fit 2 moving shapes on a 32 px canvas over 8 frames."""

    # Canvas in pixels: N for N x N, or (width, height) as PIL's Image.size; each side >= 16.
    image_size: int | tuple[int, int] = 32
    num_frames: int = 8  # frames per clip, >= 2
    fps: float = 10.0  # playback rate stored for writers (100 ms a frame); sampling does not use it
    min_shapes: int = 1
    max_shapes: int = 2  # at most 3, and at most the number of colours (colours are distinct in a clip)
    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(_STILL.colours))
    shapes: tuple[str, ...] = _STILL.shapes
    background: tuple[int, int, int] = _STILL.background
    heldout: tuple[tuple[str, str], ...] = _STILL.heldout  # (colour, shape) pairs never in train/eval clips
    size: float = 0.28  # shape side as a fraction of the canvas's shorter side (9 px at 32 px)
    speed: float = 2.0  # pixels per frame of a moving shape (a mover travels speed * (num_frames - 1) px)
    directions: tuple[str, ...] = DIRECTIONS  # drawn uniformly per object
    # Where shapes go: "lanes" = in the still world's 3x3 grid: a still shape centred in a cell, a
    # mover centred in a row (left/right) or column (up/down) lane on a track centred on the canvas;
    # "free" = any start that keeps the track on the canvas. Lanes give a few canonical placements, as
    # the still world has, which a tiny model learns to draw in minutes; free placements it does not.
    positions: str = "lanes"

    def __post_init__(self) -> None:
        normalise_world_fields(self)
        self.directions = tuple(self.directions)
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MotionConfig:
        """Build from a dict (e.g. YAML); unknown keys raise ValueError."""
        return config_from_dict(cls, values)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.positions not in POSITION_MODES:
            raise ValueError(f"MotionConfig.positions must be one of {POSITION_MODES}, got {self.positions!r}")
        for name in ("num_frames", "min_shapes", "max_shapes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"MotionConfig.{name} must be an int, got {value!r}")
        for name in ("fps", "size", "speed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"MotionConfig.{name} must be a finite number, got {value!r}")
        if min(self.canvas) < 16:
            raise ValueError(f"MotionConfig.image_size must be >= 16 px a side, got {self.image_size}")
        if self.num_frames < 2:
            raise ValueError(f"MotionConfig.num_frames must be >= 2 (a clip shows motion), got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"MotionConfig.fps must be positive, got {self.fps}")
        if not 1 <= self.min_shapes <= self.max_shapes <= 3:
            raise ValueError(f"MotionConfig needs 1 <= min_shapes <= max_shapes <= 3, got {self.min_shapes}..{self.max_shapes}")
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown or not self.directions or len(set(self.directions)) != len(self.directions):
            raise ValueError(f"MotionConfig.directions must be distinct names from {DIRECTIONS}, got {self.directions}")
        try:  # palette distances, shape names and held-out pairs: the still world's rules
            self.world_config()
        except ValueError as exn:
            raise ValueError(f"MotionConfig colours/shapes/background/heldout: {exn}") from None
        if not 0 < self.size < 1:
            raise ValueError(f"MotionConfig.size must be a fraction of the canvas in (0, 1), got {self.size}")
        if self.side_px < 4:
            raise ValueError(f"MotionConfig.size={self.size} gives {self.side_px} px shapes on {self.canvas}; "
                             "need >= 4 px so circle, square and triangle differ")
        if self.speed <= 0:
            raise ValueError(f"MotionConfig.speed must be positive (px per frame), got {self.speed}")
        if self.travel_px < 2:
            raise ValueError(f"MotionConfig: a mover travels speed * (num_frames - 1) = {self.travel_px:g} px; "
                             "need >= 2 px so a moving shape can be told from a still one")
        width, height = self.canvas
        reach = math.ceil(self.travel_px - 1e-9) + self.side_px  # extent of a mover's track along its axis
        for axis, length, moving in (("width", width, {"left", "right"}), ("height", height, {"up", "down"})):
            if moving & set(self.directions) and reach > length:
                raise ValueError(f"MotionConfig: a mover's track ({self.travel_px:g} px travel + {self.side_px} px side) "
                                 f"does not fit the canvas {axis} of {length} px; lower speed, num_frames or size")
        seen_colours = {c for c, s in self.combos if (c, s) not in self.heldout}
        if len(seen_colours) < self.max_shapes:
            raise ValueError(f"MotionConfig: max_shapes={self.max_shapes} objects need as many distinct colours with "
                             f"a non-held-out shape; only {sorted(seen_colours)} have one")

    # ---- geometry ----
    @property
    def canvas(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return self.image_size

    def side_at(self, width: int, height: int) -> int:
        """Shape side in pixels on a `width` x `height` canvas: `size` x the shorter side, rounded (>= 2)."""
        return max(2, int(_round(self.size * min(width, height))))

    @property
    def side_px(self) -> int:
        """Shape side in pixels on this canvas (9 at 32 px)."""
        return self.side_at(*self.canvas)

    @property
    def travel_px(self) -> float:
        """Distance in pixels a mover covers from the first frame to the last."""
        return self.speed * (self.num_frames - 1)

    @property
    def combos(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colours for s in self.shapes]

    def world_config(self) -> WorldConfig:
        """The still world with this palette, shapes, background and held-out pairs (the checker reads
        pixels with it; its image_size is the still default, which `Checker` ignores)."""
        return WorldConfig(colours=dict(self.colours), shapes=self.shapes, background=self.background,
                           heldout=self.heldout)


class MovingObject(NamedTuple):
    """One object of a clip; `._asdict()` is the JSON form."""

    shape: str
    colour: str
    direction: str


@dataclass
class MotionSample:
    """One clip with its text; everything a shard writer needs (frames, caption, `metadata()`)."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    qa: list[dict[str, str]]  # [{"question", "answer"}], each answer one word or number
    objects: list[MovingObject]  # in caption order (palette order of the colours)
    heldout: bool  # whether a held-out (colour, shape) combination is in the clip
    tracks: np.ndarray  # (N, F, 2) int64: (x, y) top-left pixel of object n (caption order) in frame f
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def metadata(self) -> dict[str, Any]:
        """The `.json` stored next to the clip in a shard."""
        return {"objects": [o._asdict() for o in self.objects], "qa": self.qa, "heldout": self.heldout,
                "num_frames": self.num_frames, "fps": self.fps}


# ---- language ----
def sort_moving_objects(objects: Iterable[MovingObject], config: MotionConfig | None = None) -> list[MovingObject]:
    """Objects in palette order of their colour (the order of `config.colours`); ValueError for an unknown colour."""
    order = {name: i for i, name in enumerate((config or MotionConfig()).colours)}
    objects = list(objects)
    unknown = [o.colour for o in objects if o.colour not in order]
    if unknown:
        raise ValueError(f"colours {unknown} are not in the palette {list(order)}")
    return sorted(objects, key=lambda o: order[o.colour])


def describe_motion(obj: MovingObject) -> str:
    """One object's phrase, e.g. "a red circle moves from left to right"; ValueError for an unknown direction."""
    if obj.direction not in DIRECTION_PHRASES:
        raise ValueError(f"unknown direction {obj.direction!r}; expected one of {DIRECTIONS}")
    return f"a {obj.colour} {obj.shape} {DIRECTION_PHRASES[obj.direction]}"


def motion_caption(objects: Iterable[MovingObject], config: MotionConfig | None = None) -> str:
    """The one canonical caption: objects in palette order of their colour, "a X, a Y and a Z"."""
    phrases = [describe_motion(o) for o in sort_moving_objects(objects, config)]
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def parse_motion_caption(caption: str, config: MotionConfig | None = None) -> list[MovingObject]:
    """Inverse of `motion_caption`: "a red circle moves from left to right and a ..." -> objects in text order.

    Tolerates case, runs of whitespace and a final period. Raises ValueError for anything else (an
    unknown word, an empty caption, two objects of one colour), so eval counts unparseable prompts
    instead of checking against a wrong target.
    """
    config = config or MotionConfig()
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a str, got {type(caption).__name__}")
    text = " ".join(caption.lower().split()).rstrip(".").strip()
    alt = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # noqa: E731
    phrases = {phrase: direction for direction, phrase in DIRECTION_PHRASES.items()}
    pattern = re.compile(rf"an? (?P<colour>{alt(config.colours)}) (?P<shape>{alt(config.shapes)}) "
                         rf"(?P<motion>{alt(phrases)})")
    objects = []
    for part in re.split(r", | and ", text):
        match = pattern.fullmatch(part.strip())
        if not match:
            raise ValueError(f"cannot parse {part!r} in caption {caption!r}; expected "
                             "'a <colour> <shape> <motion phrase>' joined by ', ' and ' and '")
        objects.append(MovingObject(match["shape"], match["colour"], phrases[match["motion"]]))
    if len({o.colour for o in objects}) != len(objects):
        raise ValueError(f"caption {caption!r} names one colour twice; a clip's objects have distinct colours")
    return objects


def as_moving_objects(objects: Iterable[MovingObject | Mapping[str, str]]) -> list[MovingObject]:
    """Accept MovingObjects or their JSON dicts ({"shape", "colour", "direction"})."""
    return as_records(objects, MovingObject)


def motion_question_answers(objects: Sequence[MovingObject], config: MotionConfig | None = None,
                            rng: np.random.Generator | None = None) -> list[dict[str, str]]:
    """Every question about the clip that has exactly one short answer (a word or a number).

    Objects have distinct colours, so "the red circle" / "the red shape" always name one object.
    The "is there a ...?" question with answer "no" asks about one absent, non-held-out combination
    drawn with `rng` (skipped when `rng` is None).
    """
    config = config or MotionConfig()
    objects = sort_moving_objects(objects, config)
    shape_counts = Counter(o.shape for o in objects)
    direction_counts = Counter(o.direction for o in objects)
    qa: dict[str, str] = {"how many shapes are there?": str(len(objects)),
                          "how many shapes move?": str(sum(o.direction != "still" for o in objects))}
    for obj in objects:
        qa[f"which way does the {obj.colour} {obj.shape} move?"] = obj.direction
        qa[f"which way does the {obj.colour} shape move?"] = obj.direction
        qa[f"what shape is the {obj.colour} object?"] = obj.shape
        if shape_counts[obj.shape] == 1:
            qa[f"what colour is the {obj.shape}?"] = obj.colour
        qa[f"does the {obj.colour} {obj.shape} move?"] = "no" if obj.direction == "still" else "yes"
        qa[f"is there a {obj.colour} {obj.shape}?"] = "yes"
        if direction_counts[obj.direction] == 1:
            phrase = DIRECTION_PHRASES[obj.direction]
            qa[f"what colour is the shape that {phrase}?"] = obj.colour
            qa[f"what shape {phrase}?"] = obj.shape
    if rng is not None:
        present = {(o.colour, o.shape) for o in objects}
        absent = [c for c in config.combos if c not in present and c not in config.heldout]
        if absent:
            colour, shape = absent[int(rng.integers(len(absent)))]
            qa[f"is there a {colour} {shape}?"] = "no"
    return [{"question": q, "answer": a} for q, a in qa.items()]


# ---- drawing ----
def render_clip(objects: Sequence[MovingObject], tracks: np.ndarray, config: MotionConfig) -> np.ndarray:
    """Draw `objects` along `tracks` ((N, F, 2) int (x, y) top-left per frame) -> (F, H, W, 3) uint8.

    Each frame is drawn like a still image: background, then each shape's `shape_mask` at its box.
    Raises ValueError if a box leaves the canvas.
    """
    tracks = np.asarray(tracks)
    if tracks.ndim != 3 or tracks.shape[0] != len(objects) or tracks.shape[2] != 2:
        raise ValueError(f"tracks must be (N={len(objects)}, F, 2), got shape {tracks.shape}")
    width, height = config.canvas
    side = config.side_px
    if tracks.size and (tracks.min() < 0 or tracks[..., 0].max() > width - side or tracks[..., 1].max() > height - side):
        raise ValueError(f"a track leaves the {width}x{height} canvas (boxes of {side} px)")
    frames = np.empty((tracks.shape[1], height, width, 3), dtype=np.uint8)
    frames[:] = config.background
    for obj, track in zip(objects, tracks):
        mask = shape_mask(obj.shape, side)
        colour = config.colours[obj.colour]
        for frame, (x, y) in zip(frames, track):
            frame[y: y + side, x: x + side][mask] = colour
    return frames


# ---- clips ----
class MotionWorld:
    """Samples clips of a `MotionConfig`; sample `index` of (`split`, `seed`) is deterministic."""

    def __init__(self, config: MotionConfig | None = None):
        self.config = config or MotionConfig()
        heldout = set(self.config.heldout)
        self._seen_combos = [c for c in self.config.combos if c not in heldout]
        self._heldout_combos = list(self.config.heldout)

    def scene(self, index: int, split: str = "train",
              seed: int = 0) -> tuple[list[MovingObject], np.ndarray, np.random.Generator]:
        """(objects in caption order, their (N, F, 2) int64 (x, y) tracks, the clip's rng after drawing them).

        Raises ValueError for an unknown split, a negative index, split="heldout" without held-out
        pairs, or a config too crowded to place the tracks (after `MAX_PLACEMENT_TRIES` restarts).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        if split == "heldout" and not self._heldout_combos:
            raise ValueError("split='heldout' needs MotionConfig.heldout to list at least one combination")
        cfg = self.config
        rng = np.random.default_rng([seed, SPLIT_STREAM_OFFSET + SPLITS[split], index])
        num = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
        objects: list[MovingObject] = []
        for i in range(num):
            if split == "heldout":
                pool = self._heldout_combos if i == 0 else cfg.combos  # at least one held-out object
            else:
                pool = self._seen_combos
            used = {o.colour for o in objects}
            pool = [c for c in pool if c[0] not in used]  # distinct colours: a colour names one object
            colour, shape = pool[int(rng.integers(len(pool)))]
            direction = cfg.directions[int(rng.integers(len(cfg.directions)))]
            objects.append(MovingObject(shape, colour, direction))
        for attempt in range(MAX_DIRECTION_DRAWS):  # with lanes, some direction mixes of 3 shapes cannot be placed
            try:
                tracks = self._place([o.direction for o in objects], rng, f"{split} clip {index} (seed {seed})")
                break
            except ValueError:
                if attempt == MAX_DIRECTION_DRAWS - 1:
                    raise
                objects = [o._replace(direction=cfg.directions[int(rng.integers(len(cfg.directions)))])
                           for o in objects]
        order = np.argsort([list(cfg.colours).index(o.colour) for o in objects], kind="stable")
        return [objects[i] for i in order], tracks[order], rng

    def _start_grid(self, direction: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (x, y) top-left start (M, 2) whose whole track stays on the canvas, and their tracks (M, F, 2)."""
        cfg = self.config
        width, height = cfg.canvas
        side, reach = cfg.side_px, math.ceil(cfg.travel_px - 1e-9)
        sx, sy = DIRECTION_STEPS[direction]
        xs = np.arange(reach if sx < 0 else 0, width - side - (reach if sx > 0 else 0) + 1)
        ys = np.arange(reach if sy < 0 else 0, height - side - (reach if sy > 0 else 0) + 1)
        if cfg.positions == "lanes":
            xs, ys = _lanes(xs, width, side, sx), _lanes(ys, height, side, sy)
        starts = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
        # Distance rounded before the sign is applied, so leftward and rightward movers travel alike.
        offsets = _round(np.arange(cfg.num_frames) * cfg.speed)[:, None] * np.array([sx, sy])  # (F, 2)
        return starts, starts[:, None, :] + offsets[None]

    def _place(self, directions: list[str], rng: np.random.Generator, what: str) -> np.ndarray:
        """Tracks (N, F, 2) for objects moving in `directions`, boxes 1 px apart in every frame.

        Each object's start is drawn uniformly among those that keep clear of the objects already
        placed (rejection sampling without the wasted draws); a dead end restarts the whole clip.
        """
        cfg = self.config
        gap = cfg.side_px + 1  # boxes closer than this on both axes overlap or touch
        grids = {d: self._start_grid(d)[1] for d in set(directions)}
        for _ in range(MAX_PLACEMENT_TRIES):
            placed: list[np.ndarray] = []
            for direction in directions:
                candidates = grids[direction]
                free = np.ones(len(candidates), dtype=bool)
                for track in placed:
                    free &= ~(np.abs(candidates - track[None]) < gap).all(-1).any(-1)
                if not free.any():
                    break
                choices = np.flatnonzero(free)
                placed.append(candidates[choices[int(rng.integers(len(choices)))]])
            else:
                return np.stack(placed).astype(np.int64)
        raise ValueError(f"could not place {len(directions)} non-overlapping tracks {directions} on a "
                         f"{cfg.canvas[0]}x{cfg.canvas[1]} canvas for {what} in {MAX_PLACEMENT_TRIES} tries; "
                         "use a larger canvas, fewer shapes (max_shapes), a smaller size or a lower speed")

    def sample(self, index: int, split: str = "train", seed: int = 0) -> MotionSample:
        """Clip `index` of (`split`, `seed`): frames, caption, QA, objects, held-out flag and tracks."""
        objects, tracks, rng = self.scene(index, split, seed)
        heldout = set(self.config.heldout)
        return MotionSample(frames=render_clip(objects, tracks, self.config),
                            caption=motion_caption(objects, self.config),
                            qa=motion_question_answers(objects, self.config, rng), objects=objects,
                            heldout=any((o.colour, o.shape) in heldout for o in objects), tracks=tracks,
                            fps=float(self.config.fps))

    def samples(self, num_samples: int, split: str = "train", seed: int = 0,
                start: int = 0) -> Iterator[MotionSample]:
        """Clips `start` .. `start + num_samples - 1` of (`split`, `seed`), in order."""
        for index in range(start, start + num_samples):
            yield self.sample(index, split, seed)


__all__ = ["MotionConfig", "MovingObject", "MotionSample", "MotionWorld", "DIRECTIONS",
           "DIRECTION_PHRASES", "OPPOSITE_DIRECTIONS", "MOTION_ATTRIBUTES", "motion_caption", "parse_motion_caption",
           "motion_question_answers", "render_clip", "as_moving_objects", "sort_moving_objects"]
