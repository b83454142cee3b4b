"""The moving-shapes world and its checker: determinism, held-out split, tracks, captions, QA, read-back."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.data.motion import (
    DIRECTION_PHRASES,
    DIRECTION_STEPS,
    OPPOSITE_DIRECTIONS,
    MotionConfig,
    MotionWorld,
    MovingObject,
    motion_caption,
    parse_motion_caption,
)
from unimodal.data.motion_checker import MotionChecker, clip_frames
from unimodal.data.synthetic import World

SPLIT_NAMES = ("train", "eval", "heldout")


def box_blur(frames: np.ndarray) -> np.ndarray:
    """3x3 box filter per frame (edges repeated), float."""
    padded = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    return sum(padded[:, i: i + height, j: j + width] for i in range(3) for j in range(3)) / 9


def test_samples_are_deterministic_and_streams_differ():
    world = MotionWorld()
    a, b = world.sample(5, "train", seed=3), world.sample(5, "train", seed=3)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.tracks, b.tracks)
    assert a.caption == b.caption and a.qa == b.qa and a.objects == b.objects
    assert a.frames.shape == (8, 32, 32, 3) and a.frames.dtype == np.uint8 and a.tracks.shape == (len(a.objects), 8, 2)
    others = [world.sample(5, split, seed) for split, seed in [("eval", 3), ("train", 4)]]
    assert all(o.caption != a.caption or not np.array_equal(o.frames, a.frames) for o in others)
    assert [s.caption for s in world.samples(3, "eval", seed=1, start=2)] == [world.sample(i, "eval", 1).caption
                                                                               for i in (2, 3, 4)]
    # Its own seed stream: the first frames are not the still world's images of the same index.
    still = World()
    assert sum(np.array_equal(world.sample(i).frames[0], still.sample(i).image) for i in range(20)) == 0
    meta = json.loads(json.dumps(a.metadata()))
    assert meta == {"objects": [o._asdict() for o in a.objects], "qa": a.qa, "heldout": a.heldout,
                    "num_frames": 8, "fps": 10.0}
    with pytest.raises(ValueError, match="unknown split"):
        world.sample(0, "test")
    with pytest.raises(ValueError, match="index"):
        world.sample(-1)


def test_heldout_split_and_distinct_colours():
    world = MotionWorld()
    heldout = set(world.config.heldout)
    counts = Counter()
    for i in range(300):
        for split in SPLIT_NAMES:
            sample = world.sample(i, split)
            combos = [(o.colour, o.shape) for o in sample.objects]
            assert len({o.colour for o in sample.objects}) == len(sample.objects)
            assert 1 <= len(sample.objects) <= 2
            assert sample.heldout == any(c in heldout for c in combos)
            if split == "heldout":
                assert sample.heldout
            else:
                assert not sample.heldout
            counts.update(o.direction for o in sample.objects)
    assert set(counts) == set(DIRECTION_PHRASES) and min(counts.values()) > 0.1 * sum(counts.values())


@pytest.mark.parametrize("config", [MotionConfig(), MotionConfig(image_size=(48, 24)),
                                    MotionConfig(min_shapes=3, max_shapes=3), MotionConfig(speed=1.5, num_frames=6)])
def test_tracks_stay_inside_and_never_overlap(config):
    world = MotionWorld(config)
    width, height = config.canvas
    side, travel = config.side_px, int(np.floor(config.travel_px + 0.5))
    for i in range(100):
        sample = world.sample(i, SPLIT_NAMES[i % 3])
        tracks = sample.tracks
        assert tracks.min() >= 0 and tracks[..., 0].max() <= width - side and tracks[..., 1].max() <= height - side
        for obj, track in zip(sample.objects, tracks):
            step = np.array(DIRECTION_STEPS[obj.direction])
            moved = track[-1] - track[0]  # the travel, rounded half up, in every direction alike
            assert np.array_equal(np.sign(moved), step) and abs(moved).sum() == abs(step).sum() * travel
            frame = sample.frames[0]  # the shape's colour is at its box in the first frame
            box = frame[track[0, 1]: track[0, 1] + side, track[0, 0]: track[0, 0] + side]
            assert (box == config.colours[obj.colour]).all(-1).any()
        for a in range(len(tracks)):
            for b in range(a + 1, len(tracks)):
                apart = (np.abs(tracks[a] - tracks[b]) >= side + 1).any(-1)  # 1 px gap on some axis
                assert apart.all(), (i, sample.caption)
    assert config.side_px == (9 if min(config.canvas) == 32 else 7)


def test_checker_reads_truth_clips_exactly():
    for config in (MotionConfig(), MotionConfig(image_size=(48, 24))):
        world, checker = MotionWorld(config), MotionChecker(config)
        splits = SPLIT_NAMES if config.canvas == (32, 32) else ("train",)
        for split in splits:
            for i in range(300):
                sample = world.sample(i, split)
                result = checker.check(sample.frames, sample.objects)
                assert result["all_correct"] and result["object_accuracy"] == 1.0, (split, i, sample.caption, result)


def test_checker_reads_direction_through_blur_and_noise():
    config = MotionConfig()
    world, checker = MotionWorld(config), MotionChecker(config)
    rng = np.random.default_rng(0)
    scores = []
    for i in range(300):
        sample = world.sample(i, "eval")
        noisy = np.clip(np.round(box_blur(sample.frames) + rng.normal(0, 20, sample.frames.shape)), 0, 255)
        detected = checker.detect(noisy.astype(np.uint8))
        scores.append(Counter((o.colour, o.direction) for o in detected) ==
                      Counter((o.colour, o.direction) for o in sample.objects))
    assert np.mean(scores) >= 0.98


def test_checker_reads_shapes_through_a_one_pixel_smear():
    # Generated clips smear a pixel beside a moving shape's rows; with the template sized from the
    # bounding box (11 px wide) such a square reads as a circle; at the world's known 9 px it reads right.
    config = MotionConfig()
    world, checker = MotionWorld(config), MotionChecker(config)
    background = np.array(config.background, dtype=np.uint8)
    num_checked = Counter()
    for i in range(200):
        sample = world.sample(i, "eval")
        frames = sample.frames.copy()
        for obj in sample.objects:
            colour = np.array(config.colours[obj.colour], dtype=np.uint8)
            for frame in frames:
                inside = (frame == colour).all(-1)
                rows = np.nonzero(inside.any(1))[0]
                # one pixel left of the top two rows, one right of the bottom two (a sheared smear)
                for row, end in [(r, -1) for r in rows[:2]] + [(r, 1) for r in rows[-2:]]:
                    cols = np.nonzero(inside[row])[0]
                    col = cols.min() - 1 if end < 0 else cols.max() + 1
                    if 0 <= col < frame.shape[1] and (frame[row, col] == background).all():
                        frame[row, col] = colour
            num_checked[obj.shape] += 1
        assert checker.detect(frames) == sample.objects, (i, sample.caption, checker.detect(frames))
    assert min(num_checked[s] for s in config.shapes) >= 30


def test_reversed_clip_reads_as_the_opposite_direction():
    world, checker = MotionWorld(), MotionChecker()
    for i in range(100):
        sample = world.sample(i)
        reverse = [MovingObject(o.shape, o.colour, OPPOSITE_DIRECTIONS[o.direction]) for o in sample.objects]
        assert checker.detect(sample.frames[::-1]) == reverse


def test_checker_takes_other_clip_forms_and_scores_wrong_clips():
    world, checker = MotionWorld(), MotionChecker()
    sample = next(s for s in world.samples(50) if len(s.objects) == 2 and s.objects[0].direction != "still")
    tensor = torch.from_numpy(sample.frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (F, 3, H, W) in [-1, 1]
    assert checker.check(tensor, sample.caption)["all_correct"]  # a caption as the target
    assert checker.check(tensor.transpose(0, 1), sample.objects)["all_correct"]  # the model's (3, F, H, W)
    assert checker.check([Image.fromarray(f) for f in sample.frames], [o._asdict() for o in sample.objects])["all_correct"]
    assert np.array_equal(clip_frames(list(sample.frames)), sample.frames)
    with pytest.raises(ValueError, match="layout"):
        clip_frames(torch.zeros(3, 3, 32, 32))
    assert clip_frames(torch.zeros(3, 3, 32, 32), layout="CFHW").shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="2 frames"):
        checker.detect(sample.frames[:1])
    empty = checker.check(np.zeros_like(sample.frames), sample.objects)
    assert not empty["count"] and not empty["all_correct"] and empty["object_accuracy"] == 0.0
    # The first object frozen in its first frame: colours and shapes match, its direction does not.
    frozen = np.repeat(sample.frames[:1], len(sample.frames), axis=0)
    result = checker.check(frozen, sample.objects)
    assert result["count"] and result["colour"] and result["shape"] and not result["all_correct"]
    assert all(d["direction"] == "still" for d in result["detected"])


def test_caption_is_canonical_and_parses_back():
    objects = [MovingObject("square", "blue", "still"), MovingObject("circle", "red", "right")]
    assert motion_caption(objects) == "a red circle moves from left to right and a blue square stays still"
    three = objects + [MovingObject("triangle", "green", "up")]
    assert motion_caption(three) == ("a red circle moves from left to right, a green triangle moves from bottom to top "
                                     "and a blue square stays still")
    assert motion_caption([MovingObject("triangle", "cyan", "left")]) == "a cyan triangle moves from right to left"
    assert parse_motion_caption(motion_caption(three)) == [three[1], three[2], three[0]]
    for split in SPLIT_NAMES:
        for sample in MotionWorld().samples(100, split):
            assert parse_motion_caption(sample.caption) == sample.objects
            assert parse_motion_caption("  " + sample.caption.upper().replace(" ", "  ") + ". ") == sample.objects
    for garbage in ["", "a red hexagon stays still", "a red circle moves sideways", "red circle stays still",
                    "a red circle stays still and a red square stays still", "a red circle stays still,"]:
        with pytest.raises(ValueError):
            parse_motion_caption(garbage)


def test_qa_answers_agree_with_the_objects():
    world = MotionWorld()
    config = world.config
    for i in range(300):
        sample = world.sample(i, SPLIT_NAMES[i % 3])
        questions = [q["question"] for q in sample.qa]
        assert len(questions) == len(set(questions))
        answers = {q["question"]: q["answer"] for q in sample.qa}
        assert all(len(a.split()) == 1 for a in answers.values())
        assert answers["how many shapes are there?"] == str(len(sample.objects))
        assert answers["how many shapes move?"] == str(sum(o.direction != "still" for o in sample.objects))
        shapes, directions = Counter(o.shape for o in sample.objects), Counter(o.direction for o in sample.objects)
        for obj in sample.objects:
            assert answers[f"which way does the {obj.colour} {obj.shape} move?"] == obj.direction
            assert answers[f"which way does the {obj.colour} shape move?"] == obj.direction
            assert answers[f"what shape is the {obj.colour} object?"] == obj.shape
            assert answers[f"does the {obj.colour} {obj.shape} move?"] == ("no" if obj.direction == "still" else "yes")
            assert answers[f"is there a {obj.colour} {obj.shape}?"] == "yes"
            assert (f"what colour is the {obj.shape}?" in answers) == (shapes[obj.shape] == 1)
            phrase = DIRECTION_PHRASES[obj.direction]
            if directions[obj.direction] == 1:
                assert answers[f"what colour is the shape that {phrase}?"] == obj.colour
                assert answers[f"what shape {phrase}?"] == obj.shape
            else:
                assert f"what shape {phrase}?" not in answers
        noes = [q for q, a in answers.items() if a == "no" and q.startswith("is there")]
        assert len(noes) == 1
        colour, shape = noes[0][len("is there a "):-1].split()
        assert (colour, shape) not in config.heldout and (colour, shape) not in {(o.colour, o.shape) for o in sample.objects}


def test_config_validation():
    config = MotionConfig.from_dict({"image_size": [48, 24], "heldout": [["red", "circle"]], "directions": ["left", "still"]})
    assert config.canvas == (48, 24) and config.heldout == (("red", "circle"),) and config.directions == ("left", "still")
    assert MotionConfig(image_size=(32, 32)).image_size == 32 and MotionConfig().colours == World().config.colours
    bad = [({"colors": {}}, "unknown MotionConfig"), ({"image_size": 12}, ">= 16"), ({"num_frames": 1}, "num_frames"),
           ({"max_shapes": 4}, "max_shapes"), ({"directions": ("left", "sideways")}, "directions"),
           ({"speed": 0}, "speed"), ({"speed": 4.0}, "does not fit"), ({"fps": 0}, "fps"), ({"size": 1.2}, "size"),
           ({"colours": {"red": (255, 0, 0), "darkred": (230, 0, 0)}}, "apart"), ({"num_frames": "8"}, "int"),
           ({"heldout": (("red", "hexagon"),)}, "heldout")]
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            MotionConfig.from_dict(values)
    # Legal but too crowded: two 8 px shapes cannot sit 1 px apart on a 16 px canvas.
    crowded = MotionWorld(MotionConfig(image_size=16, size=0.5, speed=1.0, num_frames=3, min_shapes=2))
    with pytest.raises(ValueError, match="could not place"):
        crowded.sample(0)


def test_lanes_place_shapes_on_the_grid_and_free_anywhere():
    """Lanes: a still shape in one of the 9 cells, a mover in one of 3 lanes on the centred track; free: many starts."""
    lanes, free = MotionWorld(MotionConfig()), MotionWorld(MotionConfig(positions="free"))
    starts = {"lanes": set(), "free": set()}
    for name, world in (("lanes", lanes), ("free", free)):
        for index in range(200):
            sample = world.sample(index)
            starts[name] |= {(o.direction, *map(int, track[0])) for o, track in zip(sample.objects, sample.tracks)}
    by_direction = {d: {s[1:] for s in starts["lanes"] if s[0] == d} for d in ("still", "left", "right", "up", "down")}
    assert len(by_direction["still"]) == 9 and all(len(by_direction[d]) == 3 for d in ("left", "right", "up", "down"))
    assert len(starts["free"]) > 100
    with pytest.raises(ValueError, match="positions"):
        MotionConfig(positions="grid")
