"""Evaluation outputs a person reads: `metrics.json`, a markdown summary and labelled image grids.

    write_metrics_json({"caption_bleu4": 0.41, "fid": 23.5}, out / "metrics.json")
    save_image_grid(images, prompts, out / "generations.png")
    save_image_grid([frame_strip(clip) for clip in clips], prompts, out / "clips.png", cell_size=64, cell_width=512)
    save_gif(clip, out / "clips" / "seen_000.gif", fps=10.0)
    write_markdown_summary(metrics, {"generations": out / "generations.png"}, out / "README.md",
                           title="tiny run, step 2000")
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from unimodal.data.motion_checker import clip_frames
from unimodal.images import image_grid
from unimodal.video import save_video

# ---------------------------------------------------------------------------------------------
# metrics.json
# ---------------------------------------------------------------------------------------------


def flatten_metrics(metrics: Mapping, sep: str = "_") -> dict:
    """Nested dicts -> one level, keys joined by `sep`: {"vqa": {"acc": 1}} -> {"vqa_acc": 1}.

    Numbers become `int`/`float` (torch and numpy scalars included, via `.item()`), NaN and
    infinities become None (JSON has no NaN); strings, bools and None stay as they are.
    """
    flat: dict = {}
    for key, value in metrics.items():
        key = str(key)
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_metrics(value, sep).items():
                flat[f"{key}{sep}{sub_key}"] = sub_value
            continue
        if hasattr(value, "item") and callable(value.item):  # torch / numpy scalar
            value = value.item()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            flat[key] = value
        elif isinstance(value, numbers.Integral):
            flat[key] = int(value)
        elif isinstance(value, numbers.Real):
            flat[key] = float(value) if math.isfinite(value) else None
        else:
            raise ValueError(
                f"metric {key!r} has a {type(value).__name__} value; metrics must be numbers, "
                "strings, bools or None (or dicts of them)"
            )
    return flat


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees a half-written file


def write_metrics_json(metrics: Mapping, path: str | Path) -> Path:
    """Write `metrics` (flattened by `flatten_metrics`, keys sorted) as JSON to `path`."""
    if not metrics:
        raise ValueError("metrics is empty: nothing to write")
    path = Path(path)
    flat = flatten_metrics(metrics)
    _write_text_atomic(path, json.dumps(flat, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------


def save_image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None,
    path: str | Path,
    cell_size: int = 128,
    columns: int = 8,
    max_label_lines: int = 4,
    cell_width: int | None = None,
) -> Path:
    """Save `unimodal.images.image_grid(images, labels, ...)` as a PNG at `path` (folders are created).
    Cells are `cell_width` x `cell_size` pixels (None = square): give wide images, such as the frame
    strips of `frame_strip`, a wide cell so they are not shrunk to fit a square."""
    path = Path(path)
    grid = image_grid(images, labels, cell_size, columns, max_label_lines, cell_width=cell_width)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------
# Video clips: frame strips and GIFs
# ---------------------------------------------------------------------------------------------

STRIP_GAP = 1  # pixels of STRIP_GAP_COLOUR between two frames of a strip
STRIP_GAP_COLOUR = (128, 128, 128)  # grey: visible on the synthetic worlds' black and on white grids


def pil_frames(clip: Any) -> list[Image.Image]:
    """A clip as a list of PIL RGB frames. `clip`: anything `unimodal.data.motion.clip_frames` reads (an
    (F, H, W, 3) uint8 array, a list of PIL images or (H, W, 3) arrays, a 4-D float array/tensor in
    [-1, 1]). Raises ValueError for an empty clip, frames of different sizes or an ambiguous layout."""
    return [Image.fromarray(frame) for frame in clip_frames(clip)]


def frame_strip(frames: Any, gap: int = STRIP_GAP) -> Image.Image:
    """One image of a clip: its frames side by side, first frame on the left, `gap` grey pixels
    between two frames. `frames`: anything `pil_frames` reads, e.g. an (F, H, W, 3) uint8 array
    or a list of F PIL images. Returns a PIL RGB image of F·W + (F-1)·gap by H pixels.
    Raises ValueError (see `pil_frames`, and for gap < 0)."""
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    frames = pil_frames(frames)
    width, height = frames[0].size
    strip = Image.new("RGB", (len(frames) * width + (len(frames) - 1) * gap, height), STRIP_GAP_COLOUR)
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * (width + gap), 0))
    return strip


def save_gif(frames: Any, path: str | Path, fps: float = 10.0, scale: int = 1) -> Path:
    """Save a clip (anything `pil_frames` reads) as an animated GIF at `path`, looping forever at
    `fps` frames per second, each frame upscaled `scale` times (NEAREST); folders are created.
    Raises ValueError for fps <= 0 or scale < 1 (and see `pil_frames`)."""
    if not fps > 0 or scale < 1:
        raise ValueError(f"fps must be > 0 and scale >= 1, got fps={fps}, scale={scale}")
    frames = pil_frames(frames)
    if scale > 1:
        frames = [f.resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_video(frames, path, fps)


# ---------------------------------------------------------------------------------------------
# Markdown summary
# ---------------------------------------------------------------------------------------------


def format_metric(value) -> str:
    """How a metric value appears in the summary table: floats with 4 decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, (str, numbers.Integral)):
        return str(value)
    return f"{value:.4f}"


def write_markdown_summary(
    metrics: Mapping,
    grids: Mapping[str, str | Path],
    path: str | Path,
    title: str = "Evaluation",
    notes: Sequence[str] = (),
) -> Path:
    """Write a markdown page: `# title`, `notes` (one quoted line each, e.g. warnings about how far a
    metric can be trusted), a table of the (flattened) metrics, then one section per grid with the
    image embedded. Grid links are written relative to the page's folder when the
    grid lies under it, so the folder can be moved or browsed on GitHub as it is."""
    path = Path(path)
    flat = flatten_metrics(metrics) if metrics else {}
    lines = [f"# {title}", ""]
    for note in notes:
        lines += [f"> {note}", ""]
    if flat:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {format_metric(value)} |" for key, value in sorted(flat.items())]
    else:
        lines.append("No metrics.")
    for name, grid_path in grids.items():
        grid_path = Path(grid_path)
        try:
            link = grid_path.resolve().relative_to(path.parent.resolve()).as_posix()
        except ValueError:
            link = grid_path.as_posix()
        lines += ["", f"## {name}", "", f"![{name}]({link})"]
    _write_text_atomic(path, "\n".join(lines) + "\n")
    return path
