"""Sample sources for the shard writer: the synthetic world, an image folder with a captions file,
a video folder with a captions file, and a Hugging Face `datasets` dataset saved on local disk.

Each source yields `ShardSample`s (already-encoded image or clip bytes, caption, optional JSON
metadata) or `Skip`s (a reason from `unimodal.data.skips` and a detail), so the writer can count what
it leaves out. Existing PNG/JPEG/WebP bytes are stored as they are (no re-encoding); other formats
become PNG. Video files are stored byte for byte as KEY.<suffix> (gif, mp4, webm, mkv, mov, avi), and
.npy frame arrays as KEY.frames.npy.
Keys are running numbers: webdataset splits a file name at its first dot, so source file names
(which may contain dots) go into the JSON as "source" instead.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unimodal.images import open_image
from unimodal.video import FRAMES_SUFFIX, VIDEO_SUFFIXES, read_frames_npy

from . import skips
from .synthetic import World

PIL_FORMAT_SUFFIX = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # stored without re-encoding
IMAGE_FIELDS = ("file", "image", "filename", "file_name", "path", "image_path")  # tried in order
VIDEO_FIELDS = ("file", "video", "filename", "file_name", "path", "video_path")  # tried in order
TEXT_FIELDS = ("caption", "text")


@dataclass
class ShardSample:
    key: str  # no dots (webdataset key rule)
    image: bytes  # encoded image, or a clip: a video file's bytes or pre-decoded frames (.npy)
    image_suffix: str  # "png" | "jpg" | "webp", or a clip's: one of unimodal.video.VIDEO_SUFFIXES | "frames.npy"
    text: str
    metadata: dict[str, Any] | None = None  # stored as KEY.json when given


@dataclass
class Skip:
    reason: str
    detail: str


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def checked_image(data: bytes, where: str) -> tuple[bytes, str] | Skip:
    """Decode once by the project's input rule (`unimodal.images.open_image`) to make sure the bytes
    are a whole, readable image; PNG/JPEG/WebP bytes are kept as they are (the reader applies the
    same rule to them), other formats (TIFF, BMP, GIF, ...) are stored as the PNG of that decoding.
    Undecodable bytes (or an I/F image out of range) are a `corrupt_image` Skip."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
        rgb = open_image(data)  # a full decode: truncated files fail here
    except Exception as exn:
        return Skip(skips.CORRUPT_IMAGE, f"{where}: {type(exn).__name__}: {exn}")
    if image_format in PIL_FORMAT_SUFFIX:
        return data, PIL_FORMAT_SUFFIX[image_format]
    return encode_png(np.asarray(rgb)), "png"


def _make(key: str, data: bytes | None, text: Any, metadata: dict[str, Any], where: str) -> ShardSample | Skip:
    if not isinstance(text, str) or not text.strip():
        return Skip(skips.MISSING_CAPTION, where)
    if data is None:
        return Skip(skips.MISSING_IMAGE, where)
    checked = checked_image(data, where)
    if isinstance(checked, Skip):
        return checked
    return ShardSample(key, checked[0], checked[1], text.strip(), metadata or None)


# ---- (a) the synthetic world ----
def synthetic_source(world: World, num_samples: int, split: str = "train", seed: int = 0,
                     start: int = 0) -> Iterator[ShardSample]:
    """Samples start..start+num_samples-1 of (split, seed); metadata holds objects, QA and heldout."""
    for index in range(start, start + num_samples):
        sample = world.sample(index, split, seed)
        yield ShardSample(f"{index:09d}", encode_png(sample.image), "png", sample.caption, sample.metadata())


# ---- (b) an image folder plus a captions file ----
def read_captions_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (with a header) or JSONL captions file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"captions file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as exn:
                        raise ValueError(f"{path}:{line_no} is not a JSON object: {exn}") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{line_no} is not a JSON object")
                    rows.append(row)
        return rows
    raise ValueError(f"captions file {path} must end in .csv or .jsonl")


def _pick_field(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, source: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{source} has no {what} field {wanted!r}; it has {list(names)}")
        return wanted
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"{source} has none of the {what} fields {list(candidates)} (it has {list(names)}); "
                     f"name it with --{what}-field")


def folder_source(images_dir: str | Path, captions_file: str | Path, image_field: str | None = None,
                  text_field: str | None = None) -> tuple[Iterator[ShardSample | Skip], int]:
    """(samples, count) from `captions_file` rows naming images under `images_dir`.

    Other fields of a row are kept in KEY.json (e.g. a "qa" list in a JSONL file), plus "source":
    the image path as written in the row.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"images folder {images_dir} does not exist")
    rows = read_captions_file(captions_file)
    if not rows:
        raise ValueError(f"captions file {captions_file} has no rows")
    image_field = _pick_field(list(rows[0]), image_field, IMAGE_FIELDS, "image", str(captions_file))
    text_field = _pick_field(list(rows[0]), text_field, TEXT_FIELDS, "text", str(captions_file))

    def generate() -> Iterator[ShardSample | Skip]:
        for index, row in enumerate(rows):
            name = str(row.get(image_field) or "")
            path = images_dir / name
            data = path.read_bytes() if name and path.is_file() else None
            extra = {k: v for k, v in row.items() if k not in (image_field, text_field)}
            yield _make(f"{index:09d}", data, row.get(text_field), {"source": name, **extra}, f"{path}")

    return generate(), len(rows)


# ---- (c) a video folder plus a captions file ----
def checked_clip(name: str, data: bytes, where: str) -> tuple[bytes, str] | Skip:
    """(bytes, suffix) of a clip file named `name`: a video file (`VIDEO_SUFFIXES`, any case) is kept
    byte for byte under its lowercased suffix, unchecked (decoding needs the reader's sampling; the
    reader counts corrupt_video / short_clip); a .npy file must load as frames (`read_frames_npy`:
    (F, H, W, 3) or (F, H, W) uint8) and is stored as `FRAMES_SUFFIX`. Another suffix, or a .npy of
    anything else, is a `corrupt_video` Skip."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix in VIDEO_SUFFIXES:
        return data, suffix
    if suffix != "npy":
        return Skip(skips.CORRUPT_VIDEO, f"{where}: not a video file (.{suffix}); expected one of "
                                         f"{', '.join('.' + s for s in VIDEO_SUFFIXES)} or .npy frames")
    try:
        read_frames_npy(data, None)
    except ValueError as exn:
        return Skip(skips.CORRUPT_VIDEO, f"{where}: {exn}")
    return data, FRAMES_SUFFIX


def videos_source(videos_dir: str | Path, captions_file: str | Path, video_field: str | None = None,
                  text_field: str | None = None) -> tuple[Iterator[ShardSample | Skip], int]:
    """(samples, count) from `captions_file` rows (CSV with a header, or JSONL) naming clips under
    `videos_dir`, as `folder_source` does for images: the clip is `checked_clip`'s (a video file
    byte for byte, or .npy frames); a missing file is a missing_image Skip, an empty caption a
    missing_caption Skip. Other fields of a row are kept in KEY.json, plus "source": the clip path
    as written in the row. Raises ValueError for a missing folder or captions file, no rows, or no
    video / text field (default names: `VIDEO_FIELDS`, `TEXT_FIELDS`).
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise ValueError(f"videos folder {videos_dir} does not exist")
    rows = read_captions_file(captions_file)
    if not rows:
        raise ValueError(f"captions file {captions_file} has no rows")
    video_field = _pick_field(list(rows[0]), video_field, VIDEO_FIELDS, "video", str(captions_file))
    text_field = _pick_field(list(rows[0]), text_field, TEXT_FIELDS, "text", str(captions_file))

    def generate() -> Iterator[ShardSample | Skip]:
        for index, row in enumerate(rows):
            name = str(row.get(video_field) or "")
            path = videos_dir / name
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                yield Skip(skips.MISSING_CAPTION, f"{path}")
                continue
            if not name or not path.is_file():
                yield Skip(skips.MISSING_IMAGE, f"{path}")
                continue
            checked = checked_clip(name, path.read_bytes(), f"{path}")
            if isinstance(checked, Skip):
                yield checked
                continue
            extra = {k: v for k, v in row.items() if k not in (video_field, text_field)}
            yield ShardSample(f"{index:09d}", checked[0], checked[1], text.strip(), {"source": name, **extra})

    return generate(), len(rows)


# ---- (d) a Hugging Face dataset saved with save_to_disk ----
def hf_source(dataset_path: str | Path, image_column: str = "image", text_column: str = "text",
              split: str | None = None, extra_columns: Sequence[str] = ()) -> tuple[Iterator[ShardSample | Skip], int]:
    """(samples, count) from a local `datasets` dataset (no network: it is read with load_from_disk).

    The image column may be a `datasets.Image` feature (its encoded bytes are copied without
    decoding), raw bytes, or a file path. A text column holding a list uses its first caption and
    keeps all of them in KEY.json as "captions". `extra_columns` are copied into KEY.json.
    """
    import datasets  # heavy: only for this source

    loaded = datasets.load_from_disk(str(dataset_path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1 and "train" not in loaded:
                raise ValueError(f"{dataset_path} holds splits {list(loaded)}; choose one with --split")
            split = "train" if "train" in loaded else next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{dataset_path} has no split {split!r}; it has {list(loaded)}")
        loaded = loaded[split]
    for column in (image_column, text_column, *extra_columns):
        if column not in loaded.column_names:
            raise ValueError(f"{dataset_path} has no column {column!r}; columns: {loaded.column_names}")
    if isinstance(loaded.features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))  # {"bytes", "path"}

    def image_bytes(value: Any) -> bytes | None:
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and Path(value).is_file():
            return Path(value).read_bytes()
        return None

    def generate() -> Iterator[ShardSample | Skip]:
        for index, row in enumerate(loaded):
            text = row[text_column]
            metadata: dict[str, Any] = {"source_index": index}
            if isinstance(text, (list, tuple)):
                captions = [t for t in text if isinstance(t, str) and t.strip()]
                metadata["captions"] = captions
                text = captions[0] if captions else ""
            metadata.update({column: row[column] for column in extra_columns})
            yield _make(f"{index:09d}", image_bytes(row[image_column]), text, metadata,
                        f"{dataset_path}[{index}]")

    return generate(), len(loaded)
