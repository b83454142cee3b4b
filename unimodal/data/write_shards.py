"""Write webdataset tar shards (KEY.png|jpg|webp or a clip, KEY.txt, optional KEY.json) from a sample source.

    python -m unimodal.data.write_shards synthetic --out shards/train --num-samples 20000 --seed 0 [--split train]
        [--canvases 32x32 48x24 24x48]
    python -m unimodal.data.write_shards folder --out shards/mine --images DIR --captions captions.csv|jsonl
    python -m unimodal.data.write_shards motion --out shards/video/train --num-samples 20000 [--split train]
    python -m unimodal.data.write_shards videos --out shards/clips --videos DIR --captions captions.csv|jsonl
    python -m unimodal.data.write_shards hf --out shards/hf --dataset-path DIR --image-column image --text-column text

Shards are named `<prefix>-000000.tar`, ... (prefix: the split for the synthetic world, "shard"
otherwise) and closed after `--max-count` samples or `--max-size-mb`. Each is written to a `.tmp`
name and renamed when complete, so a reader never picks up half a shard; tar member times are fixed,
so the same source gives byte-identical shards. The summary line gives the brace pattern to put in
`DataConfig.train_shards`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from .motion import MotionConfig
from .skips import SkipCounter
from .sources import (
    IMAGE_FIELDS,
    VIDEO_FIELDS,
    ShardSample,
    Skip,
    encode_png,
    folder_source,
    hf_source,
    synthetic_source,
    videos_source,
)
from .synthetic import SPLITS, World, WorldConfig

FIXED_MTIME = 0  # reproducible tar files; an int, as a float mtime costs a PAX header per file


@dataclass
class WriteSummary:
    out_dir: str
    num_samples: int = 0
    num_bytes: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def pattern(self) -> str:
        """Brace pattern naming all shards written (for DataConfig.train_shards)."""
        if not self.shards:
            return ""
        first, last = Path(self.shards[0]), Path(self.shards[-1])
        prefix, width = first.stem[:-6], 6
        start, end = first.stem[-width:], last.stem[-width:]
        name = f"{prefix}{start}.tar" if start == end else f"{prefix}{{{start}..{end}}}.tar"
        return str(first.parent / name)

    def __str__(self) -> str:
        skipped = f"skipped {self.num_skipped}" + (f" {self.skipped}" if self.skipped else "")
        return (f"wrote {self.num_samples} samples in {self.num_shards} shards ({self.num_bytes / 1e6:.2f} MB) "
                f"to {self.out_dir}; {skipped}\nshards: {self.pattern}")


class _Shards:
    """Rolls over to a new tar after `max_count` samples or `max_bytes`; atomic rename on close."""

    def __init__(self, out_dir: Path, prefix: str, max_count: int, max_bytes: float):
        self.out_dir, self.prefix, self.max_count, self.max_bytes = out_dir, prefix, max_count, max_bytes
        self.writer: wds.TarWriter | None = None
        self.paths: list[str] = []
        self.count = self.size = 0

    def write(self, sample: dict) -> None:
        if self.writer is None or self.count >= self.max_count or self.size >= self.max_bytes:
            self.close()
            path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
            self.paths.append(str(path))
            self.writer = wds.TarWriter(str(path) + ".tmp", mtime=FIXED_MTIME)
            self.count = self.size = 0
        self.size += self.writer.write(sample)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.paths[-1] + ".tmp", self.paths[-1])
            self.writer = None


def write_shards(samples: Iterable[ShardSample | Skip], out_dir: str | Path, prefix: str = "shard",
                 max_count: int = 10_000, max_size_mb: float = 1_000.0, total: int | None = None,
                 progress: bool = True) -> WriteSummary:
    """Write `samples` into tar shards under `out_dir`; `Skip`s are counted and logged, not written."""
    if max_count <= 0 or max_size_mb <= 0:
        raise ValueError(f"max_count and max_size_mb must be positive, got {max_count}, {max_size_mb}")
    if "." in prefix or "/" in prefix:
        raise ValueError(f"shard prefix {prefix!r} must not contain '.' or '/'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        raise ValueError(f"{out} already holds {len(existing)} '{prefix}-*.tar' shards; choose an empty folder "
                         "or another --prefix")
    summary, counter = WriteSummary(out_dir=str(out)), SkipCounter(where="[write_shards]")
    shards = _Shards(out, prefix, max_count, max_size_mb * 1e6)
    try:
        for item in tqdm(samples, total=total, disable=not progress, unit="sample", desc=f"writing {prefix}"):
            if isinstance(item, Skip):
                counter.skip(item.reason, item.detail)
                continue
            record = {"__key__": item.key, item.image_suffix: item.image, "txt": item.text}
            if item.metadata is not None:
                record["json"] = json.dumps(item.metadata, separators=(",", ":")).encode("utf-8")
            shards.write(record)
            summary.num_samples += 1
    finally:
        shards.close()
    summary.shards = shards.paths
    summary.num_bytes = sum(os.path.getsize(p) for p in shards.paths)
    summary.skipped = counter.as_dict()
    return summary


def canvas_worlds(world_config: WorldConfig | None, canvases: Sequence[Sequence[int]]) -> list[World]:
    """One `World` per (width, height) canvas of `world_config`; ValueError for a bad canvas."""
    config = world_config or WorldConfig()
    if not canvases or any(len(canvas) != 2 for canvas in canvases):
        raise ValueError(f"canvases must be a non-empty list of (width, height) pairs, got {canvases}")
    return [World(config.with_canvas(int(width), int(height))) for width, height in canvases]


def canvas_source(worlds: Sequence[World], num_samples: int, split: str = "train",
                  seed: int = 0) -> Iterator[ShardSample]:
    """Like `sources.synthetic_source`, but sample `index` is drawn on `worlds[index % len(worlds)]`
    (equal parts, in a fixed cycle) and its metadata records that canvas as "canvas": [W, H]."""
    for index in range(num_samples):
        world = worlds[index % len(worlds)]
        sample = world.sample(index, split, seed)
        metadata = {**sample.metadata(), "canvas": list(world.config.canvas)}
        yield ShardSample(f"{index:09d}", encode_png(sample.image), "png", sample.caption, metadata)


def write_synthetic_shards(out_dir: str | Path, num_samples: int, seed: int = 0, split: str = "train",
                           world_config: WorldConfig | None = None, *, prefix: str | None = None,
                           canvases: Sequence[Sequence[int]] | None = None, max_count: int = 10_000,
                           max_size_mb: float = 1_000.0, progress: bool = True) -> WriteSummary:
    """Write `num_samples` scenes of the synthetic world's `split` into tar shards under `out_dir`.

    Args:
        out_dir: folder to write into (created; must hold no shards of this prefix).
        num_samples: scenes to write.
        seed: seed of the split's scene stream.
        split: "train", "eval" or "heldout" (see `unimodal.data.synthetic`).
        world_config: the world (None = `WorldConfig()`).
        prefix: shard name prefix (None = the split).
        canvases: (width, height) canvases to cycle through per sample (sample i on canvas
            i % len(canvases)), each KEY.json recording its "canvas": [W, H]; they replace the world's
            own image_size. None = every sample on the world's canvas, KEY.json without "canvas".
        max_count, max_size_mb, progress: as in `write_shards`.

    Returns:
        The `WriteSummary` (shard paths, counts, brace pattern).

    Raises:
        ValueError: an unknown split, a bad canvas, non-positive shard limits, a bad prefix, or
            `out_dir` already holding shards of this prefix.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if canvases is None:
        source = synthetic_source(World(world_config), num_samples, split, seed)
    else:
        source = canvas_source(canvas_worlds(world_config, canvases), num_samples, split, seed)
    return write_shards(source, out_dir, prefix=prefix or split, max_count=max_count, max_size_mb=max_size_mb,
                        total=num_samples, progress=progress)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder (created; must hold no shards of this prefix)")
    common.add_argument("--prefix", default=None, help="shard name prefix (default: the split, or 'shard')")
    common.add_argument("--max-count", type=int, default=10_000, help="samples per shard at most")
    common.add_argument("--max-size-mb", type=float, default=1_000.0, help="shard size at most (MB, approx.)")
    common.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser = argparse.ArgumentParser(prog="python -m unimodal.data.write_shards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    syn = sub.add_parser("synthetic", parents=[common], help="the synthetic shapes world")
    syn.add_argument("--num-samples", type=int, required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--split", choices=sorted(SPLITS), default="train",
                     help="train: no held-out combos; eval: like train, another seed stream; heldout: only scenes "
                          "with a held-out combo")
    syn.add_argument("--image-size", type=int, default=None, help="pixels (default 32, or the world config's)")
    syn.add_argument("--world-config", default=None, help="JSON or YAML file of WorldConfig fields")
    syn.add_argument("--canvases", nargs="+", type=_canvas, default=None, metavar="WxH",
                     help="canvases (width x height px) cycled per sample in equal parts, e.g. 32x32 48x24 24x48; "
                          "each KEY.json records its canvas (default: the world's one canvas)")
    folder = sub.add_parser("folder", parents=[common], help="an image folder plus a CSV/JSONL captions file")
    folder.add_argument("--images", required=True, help="folder the captions file's image paths are relative to")
    folder.add_argument("--captions", required=True, help="CSV (with header) or JSONL file, one row per image")
    folder.add_argument("--image-field", default=None,
                        help=f"column naming the image (default: the first of {', '.join(IMAGE_FIELDS)})")
    folder.add_argument("--text-field", default=None, help="column holding the caption (default: caption or text)")
    motion = sub.add_parser("motion", parents=[common], help="the synthetic moving-shapes world (GIF clips)")
    motion.add_argument("--num-samples", type=int, required=True)
    motion.add_argument("--seed", type=int, default=0)
    motion.add_argument("--split", choices=sorted(SPLITS), default="train",
                        help="train/eval: no held-out combos; heldout: only clips with a held-out combo")
    motion.add_argument("--world-config", default=None, help="JSON or YAML file of MotionConfig fields")
    videos = sub.add_parser("videos", parents=[common], help="a video folder plus a CSV/JSONL captions file")
    videos.add_argument("--videos", required=True, help="folder the captions file's video paths are relative to")
    videos.add_argument("--captions", required=True, help="CSV (with header) or JSONL file, one row per clip")
    videos.add_argument("--video-field", default=None,
                        help=f"column naming the clip: a video file or .npy frames (default: the first of "
                             f"{', '.join(VIDEO_FIELDS)})")
    videos.add_argument("--text-field", default=None, help="column holding the caption (default: caption or text)")
    hf = sub.add_parser("hf", parents=[common], help="a Hugging Face datasets dataset saved with save_to_disk")
    hf.add_argument("--dataset-path", required=True)
    hf.add_argument("--image-column", default="image")
    hf.add_argument("--text-column", default="text")
    hf.add_argument("--split", default=None, help="split of a DatasetDict (default: train)")
    hf.add_argument("--extra-columns", nargs="*", default=[], help="columns copied into KEY.json")
    return parser


def _canvas(text: str) -> tuple[int, int]:
    """'48x24' -> (48, 24)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 48x24; got {text!r}") from None
    return width, height


def _load_mapping(path: str | None) -> dict:
    """The fields in a JSON or YAML file ({} without one)."""
    if not path:
        return {}
    import yaml  # JSON is YAML too

    return yaml.safe_load(Path(path).read_text()) or {}


def _load_world_config(path: str | None, image_size: int | None) -> WorldConfig:
    values = _load_mapping(path)
    if image_size is not None:
        values["image_size"] = image_size
    return WorldConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = dict(max_count=args.max_count, max_size_mb=args.max_size_mb, progress=not args.no_progress)
    if args.prefix:
        options["prefix"] = args.prefix
    if args.source == "synthetic":
        summary = write_synthetic_shards(args.out, args.num_samples, args.seed, args.split,
                                         _load_world_config(args.world_config, args.image_size),
                                         canvases=args.canvases, **options)
    elif args.source == "motion":
        from .motion_shards import write_motion_shards  # motion_shards builds on this module's writer

        summary = write_motion_shards(args.out, args.num_samples, args.seed, args.split,
                                      MotionConfig.from_dict(_load_mapping(args.world_config)), **options)
    else:
        if args.source == "folder":
            source, total = folder_source(args.images, args.captions, args.image_field, args.text_field)
        elif args.source == "videos":
            source, total = videos_source(args.videos, args.captions, args.video_field, args.text_field)
        else:
            source, total = hf_source(args.dataset_path, args.image_column, args.text_column, args.split,
                                      args.extra_columns)
        summary = write_shards(source, args.out, total=total, **options)
    print(summary, file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
