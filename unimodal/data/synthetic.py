"""The synthetic world: seeded images of coloured shapes with exact captions and QA pairs.

A scene is 1-3 objects (`WorldConfig.min_shapes`..`max_shapes`) on a plain background, at most one
per cell of a 3x3 grid. Each object has a shape (circle, square, triangle), a colour (6 RGB-cube
corners, far apart so a blurry generated image still snaps to the right one), a size (small/large)
and a position (the grid cell). The canvas is square by default or any W x H
(`WorldConfig.image_size=(W, H)`): the grid is scaled to it (cells of W/3 x H/3 px) and the shapes
to the shorter cell side, so "top left" and small/large mean the same on every canvas. Everything
is drawn without anti-aliasing so the checker (`data/checker.py`) reads rendered ground truth back
exactly.

    world = World(WorldConfig())
    sample = world.sample(index=7, split="train", seed=0)
    sample.image      # (H, W, 3) uint8; WorldConfig(image_size=(48, 24)) gives (24, 48, 3)
    sample.caption    # "a large red circle at the top left and a small blue square at the bottom right"
    sample.qa         # [{"question": "how many shapes are there?", "answer": "2"}, ...]
    sample.objects    # [SceneObject(shape="circle", colour="red", size="large", position="top left"), ...]

Sample `index` of (`split`, `seed`) is a pure function of those three numbers, so shards can be
written in any order or in parallel and regenerated later. Held-out (colour, shape) combinations
never appear in `train`/`eval` scenes; every `heldout` scene contains at least one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from unimodal.config import config_from_dict

SHAPES = ("circle", "square", "triangle")  # the shapes `shape_mask` can draw
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
# Caption phrase per position; the inverse is used by `parse_caption`.
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
SPLITS = {"train": 0, "eval": 1, "heldout": 2}  # seed-stream id of each split
MIN_COLOUR_DISTANCE = 100.0  # RGB distance every two palette entries (background included) must keep


@dataclass
class WorldConfig:
    """What scenes look like. The defaults are tuned to be learnable by a ~5M-parameter model at 32 px."""

    # Canvas in pixels: N for N x N, or (width, height) as PIL's Image.size; each side >= 12. A square
    # pair is stored as its int, so (32, 32) and 32 are one world and world.json keeps its old form.
    image_size: int | tuple[int, int] = 32
    min_shapes: int = 1
    max_shapes: int = 3  # at most 9 (one per grid cell)
    # Corners of the RGB cube: pairwise distance >= 255, so the checker's nearest-colour rule is robust.
    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: {
        "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
        "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)})
    shapes: tuple[str, ...] = SHAPES
    # Size name -> shape side as a fraction of the grid cell's shorter side (10 px at 32 px: small 6 px,
    # large 9 px, so two large shapes in neighbouring cells keep a 1 px gap and never touch).
    sizes: dict[str, float] = field(default_factory=lambda: {"small": 0.6, "large": 0.9})
    background: tuple[int, int, int] = (0, 0, 0)
    # (colour, shape) pairs never shown in training images; one per shape and colour, so every colour
    # and every shape is still seen in training, only not in these combinations.
    heldout: tuple[tuple[str, str], ...] = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
    jitter: int = 0  # max random offset (px) of a shape inside its cell; 0 = canonical positions

    def __post_init__(self) -> None:
        normalise_world_fields(self)
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorldConfig:
        return config_from_dict(cls, values)

    def validate(self) -> None:
        if min(self.canvas) < 12:
            raise ValueError(f"WorldConfig.image_size must be >= 12 px a side (3 cells of >= 4 px), got {self.image_size}")
        if not 1 <= self.min_shapes <= self.max_shapes <= 9:
            raise ValueError(f"WorldConfig needs 1 <= min_shapes <= max_shapes <= 9, got "
                             f"{self.min_shapes}..{self.max_shapes}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes:
            raise ValueError(f"WorldConfig.shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        if len(self.colours) < 1 or any(len(rgb) != 3 for rgb in self.colours.values()):
            raise ValueError("WorldConfig.colours must map at least one name to an (r, g, b) triple")
        palette = {**self.colours, "<background>": self.background}
        names = list(palette)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                distance = float(np.linalg.norm(np.subtract(palette[a], palette[b])))
                if distance < MIN_COLOUR_DISTANCE:
                    raise ValueError(f"WorldConfig colours {a!r} and {b!r} are only {distance:.0f} apart in RGB; "
                                     f"keep every pair >= {MIN_COLOUR_DISTANCE:.0f} so the checker can tell them apart")
        fractions = sorted(self.sizes.values())
        if not self.sizes or fractions[0] <= 0 or fractions[-1] > 1:
            raise ValueError(f"WorldConfig.sizes must map names to fractions of a cell in (0, 1], got {self.sizes}")
        sides = [self.size_px(name) for name in self.sizes]
        if len(set(sides)) != len(sides):
            raise ValueError(f"WorldConfig.sizes give equal pixel sides {sides} at image_size={self.image_size}")
        for colour, shape in self.heldout:
            if colour not in self.colours or shape not in self.shapes:
                raise ValueError(f"WorldConfig.heldout has ({colour!r}, {shape!r}), not a colour/shape of this world")
        if len(self.heldout) >= len(self.colours) * len(self.shapes):
            raise ValueError("WorldConfig.heldout holds out every (colour, shape) combination")
        if self.jitter < 0:
            raise ValueError(f"WorldConfig.jitter must be >= 0, got {self.jitter}")

    # ---- grid geometry (shared with the checker) ----
    @property
    def canvas(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return self.image_size

    def with_canvas(self, width: int, height: int) -> WorldConfig:
        """This world on a `width` x `height` canvas (grid and shape sizes follow it)."""
        if (width, height) == self.canvas:
            return self
        return replace(self, image_size=(width, height))

    @property
    def cell_width(self) -> int:
        return self.canvas[0] // 3

    @property
    def cell_height(self) -> int:
        return self.canvas[1] // 3

    @property
    def cell_size(self) -> int:
        """The shorter cell side: shape sizes scale with it, so shapes stay square and fit their cell."""
        return min(self.cell_width, self.cell_height)

    @property
    def grid_origin(self) -> tuple[int, int]:
        """(top, left) offset of the grid from the image border: the leftover pixels are split evenly."""
        width, height = self.canvas
        return (height - 3 * self.cell_height) // 2, (width - 3 * self.cell_width) // 2

    def size_px(self, size: str) -> int:
        """Side in pixels of a shape of `size`; at least 1 px smaller than a cell so shapes never touch."""
        return max(2, min(self.cell_size - 1, int(self.sizes[size] * self.cell_size)))

    @property
    def combos(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colours for s in self.shapes]


def normalise_world_fields(config) -> None:
    """The fields the still and moving worlds share, as read from YAML/JSON: image_size an int or a
    (width, height) tuple (a square pair as its int), colours/background as int triples, shapes and
    held-out pairs as tuples. Raises ValueError for a canvas that is not one or two numbers."""
    if isinstance(config.image_size, (int, np.integer)):
        config.image_size = int(config.image_size)
    else:
        canvas = tuple(int(v) for v in config.image_size)
        if len(canvas) != 2:
            raise ValueError(f"{type(config).__name__}.image_size must be an int or (width, height), got "
                             f"{config.image_size}")
        config.image_size = canvas[0] if canvas[0] == canvas[1] else canvas
    config.colours = {name: tuple(int(v) for v in rgb) for name, rgb in config.colours.items()}
    config.shapes = tuple(config.shapes)
    config.background = tuple(int(v) for v in config.background)
    config.heldout = tuple(tuple(pair) for pair in config.heldout)


class SceneObject(NamedTuple):
    """One shape of a scene; `._asdict()` is the JSON form."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass
class SyntheticSample:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    qa: list[dict[str, str]]
    objects: list[SceneObject]
    heldout: bool

    def metadata(self) -> dict[str, Any]:
        """The `.json` stored next to the image in a shard."""
        return {"objects": [o._asdict() for o in self.objects], "qa": self.qa, "heldout": self.heldout}


# ---- drawing ----
def shape_mask(shape: str, side: int) -> np.ndarray:
    """(side, side) bool mask of a shape filling its box; sampled at pixel centres, no anti-aliasing."""
    centres = np.arange(side) + 0.5 - side / 2  # pixel-centre offsets from the box centre
    dy, dx = centres[:, None], centres[None, :]
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        # 0.25 px inside the box edge: a clearly round outline even at 6 px (rows 2,4,6,6,4,2).
        radius = side / 2 - 0.25
        return dx**2 + dy**2 <= radius**2
    if shape == "triangle":
        # Apex up, base at the bottom: row i is (i + 1) px wide in half-steps (1,3,3,5,5,... at 9 px).
        half_width = (np.arange(side)[:, None] + 1) / 2
        return np.abs(dx) <= half_width
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def cell_box(config: WorldConfig, position: str) -> tuple[int, int]:
    """(top, left) pixel of the grid cell called `position`."""
    row, col = divmod(POSITIONS.index(position), 3)
    top, left = config.grid_origin
    return top + row * config.cell_height, left + col * config.cell_width


def render(objects: Sequence[SceneObject], config: WorldConfig,
           offsets: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Draw `objects` -> (H, W, 3) uint8. `offsets` are per-object (dy, dx) jitters inside the cell."""
    width, height = config.canvas
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = config.background
    for i, obj in enumerate(objects):
        side = config.size_px(obj.size)
        top, left = cell_box(config, obj.position)
        slack_y, slack_x = config.cell_height - side, config.cell_width - side  # room left in the cell
        dy, dx = offsets[i] if offsets is not None else (0, 0)
        top += min(max(slack_y // 2 + dy, 0), slack_y)
        left += min(max(slack_x // 2 + dx, 0), slack_x)
        mask = shape_mask(obj.shape, side)
        image[top: top + side, left: left + side][mask] = config.colours[obj.colour]
    return image


# ---- language ----
def describe(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {POSITION_PHRASES[obj.position]}"


def caption(objects: Sequence[SceneObject]) -> str:
    """The one canonical caption: objects in row-major cell order, "a X, a Y and a Z"."""
    phrases = [describe(o) for o in sort_objects(objects)]
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def sort_objects(objects: Sequence[SceneObject]) -> list[SceneObject]:
    return sorted(objects, key=lambda o: POSITIONS.index(o.position))


def question_answers(objects: Sequence[SceneObject], config: WorldConfig,
                     rng: np.random.Generator | None = None) -> list[dict[str, str]]:
    """Every question about the scene that has exactly one short answer (a word, a number, a position).

    The "is there a ...?" question with answer "no" asks about one absent, non-held-out combination
    drawn with `rng` (skipped when `rng` is None).
    """
    objects = sort_objects(objects)
    qa: dict[str, str] = {"how many shapes are there?": str(len(objects))}

    def count(**attributes: str) -> int:
        return sum(1 for o in objects if all(getattr(o, k) == v for k, v in attributes.items()))

    for shape in config.shapes:
        qa[f"how many {shape}s are there?"] = str(count(shape=shape))
    for colour in dict.fromkeys(o.colour for o in objects):
        qa[f"how many {colour} shapes are there?"] = str(count(colour=colour))
    for obj in objects:
        at = POSITION_PHRASES[obj.position]
        qa[f"what shape is {at}?"] = obj.shape
        qa[f"what colour is the shape {at}?"] = obj.colour
        qa[f"what size is the shape {at}?"] = obj.size
        if count(shape=obj.shape) == 1:
            qa[f"what colour is the {obj.shape}?"] = obj.colour
            qa[f"where is the {obj.shape}?"] = obj.position
            qa[f"what size is the {obj.shape}?"] = obj.size
        if count(colour=obj.colour) == 1:
            qa[f"what shape is the {obj.colour} object?"] = obj.shape
            qa[f"where is the {obj.colour} object?"] = obj.position
            qa[f"what size is the {obj.colour} object?"] = obj.size
        if count(colour=obj.colour, shape=obj.shape) == 1:
            qa[f"where is the {obj.colour} {obj.shape}?"] = obj.position
            qa[f"what size is the {obj.colour} {obj.shape}?"] = obj.size
        qa[f"is there a {obj.colour} {obj.shape}?"] = "yes"
    if rng is not None:
        present = {(o.colour, o.shape) for o in objects}
        absent = [c for c in config.combos if c not in present and c not in config.heldout]
        if absent:
            colour, shape = absent[int(rng.integers(len(absent)))]
            qa[f"is there a {colour} {shape}?"] = "no"
    return [{"question": q, "answer": a} for q, a in qa.items()]


# ---- scenes ----
class World:
    """Samples scenes of a `WorldConfig`; sample `index` of (`split`, `seed`) is deterministic."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        heldout = set(self.config.heldout)
        self._seen_combos = [c for c in self.config.combos if c not in heldout]
        self._heldout_combos = list(self.config.heldout)

    def scene(self, index: int, split: str = "train",
              seed: int = 0) -> tuple[list[SceneObject], list[tuple[int, int]], np.random.Generator]:
        """(objects, per-object (dy, dx) jitter offsets, the scene's rng after drawing them)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        if split == "heldout" and not self._heldout_combos:
            raise ValueError("split='heldout' needs WorldConfig.heldout to list at least one combination")
        cfg = self.config
        rng = np.random.default_rng([seed, SPLITS[split], index])
        num = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
        cells = rng.choice(9, size=num, replace=False)
        size_names = list(cfg.sizes)
        objects, offsets = [], []
        for i, cell in enumerate(cells):
            if split == "heldout":
                pool = self._heldout_combos if i == 0 else cfg.combos  # at least one held-out object
            else:
                pool = self._seen_combos
            colour, shape = pool[int(rng.integers(len(pool)))]
            size = size_names[int(rng.integers(len(size_names)))]
            objects.append(SceneObject(shape, colour, size, POSITIONS[int(cell)]))
            offsets.append(tuple(int(v) for v in rng.integers(-cfg.jitter, cfg.jitter + 1, size=2)))
        return objects, offsets, rng

    def sample(self, index: int, split: str = "train", seed: int = 0) -> SyntheticSample:
        objects, offsets, rng = self.scene(index, split, seed)
        image = render(objects, self.config, offsets)
        order = sorted(range(len(objects)), key=lambda i: POSITIONS.index(objects[i].position))
        objects = [objects[i] for i in order]
        heldout = any((o.colour, o.shape) in set(self.config.heldout) for o in objects)
        return SyntheticSample(image=image, caption=caption(objects), qa=question_answers(objects, self.config, rng),
                               objects=objects, heldout=heldout)

    def samples(self, num_samples: int, split: str = "train", seed: int = 0,
                start: int = 0) -> Iterator[SyntheticSample]:
        for index in range(start, start + num_samples):
            yield self.sample(index, split, seed)
