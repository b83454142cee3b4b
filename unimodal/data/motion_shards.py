"""Shards of the moving-shapes world: each clip as `KEY.gif` (lossless for its few colours), with
`KEY.txt` (the caption) and `KEY.json` (objects, QA pairs, held-out flag, frames and frame rate).

    python -m unimodal.data.write_shards motion --out shards/video/train --num-samples 20000 [--split train]

A GIF keeps its frame timing, not its frame count: Pillow stores a run of identical frames (a clip
where nothing moves) as one frame shown for longer, which the reader's timing rule reads back as the
same frames (`unimodal.video.read_video`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from unimodal.video import encode_gif

from .motion import MotionConfig, MotionWorld
from .sources import ShardSample
from .synthetic import SPLITS
from .write_shards import WriteSummary, write_shards


def motion_source(world: MotionWorld, num_samples: int, split: str = "train", seed: int = 0) -> Iterator[ShardSample]:
    """Clips `0 .. num_samples - 1` of (`split`, `seed`) as shard samples (KEY.gif, KEY.txt, KEY.json)."""
    for index in range(num_samples):
        sample = world.sample(index, split, seed)
        yield ShardSample(f"{index:09d}", encode_gif(sample.frames, world.config.fps), "gif", sample.caption,
                          sample.metadata())


def write_motion_shards(out_dir: str | Path, num_samples: int, seed: int = 0, split: str = "train",
                        motion_config: MotionConfig | None = None, *, prefix: str | None = None,
                        max_count: int = 10_000, max_size_mb: float = 1_000.0, progress: bool = True) -> WriteSummary:
    """Write `num_samples` clips of the moving-shapes world's `split` into tar shards under `out_dir`
    (prefix: the split), as `write_synthetic_shards` does for still scenes.

    Raises:
        ValueError: an unknown split, non-positive shard limits, a bad prefix, or `out_dir` already
            holding shards of this prefix.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    source = motion_source(MotionWorld(motion_config or MotionConfig()), num_samples, split, seed)
    return write_shards(source, out_dir, prefix=prefix or split, max_count=max_count, max_size_mb=max_size_mb,
                        total=num_samples, progress=progress)
