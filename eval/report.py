"""Evaluation outputs a person reads: `metrics.json`, a markdown summary and labelled image grids.

    write_metrics_json({"caption_bleu4": 0.41, "fid": 23.5}, out / "metrics.json")
    save_image_grid(images, prompts, out / "generations.png")
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

from PIL import Image, ImageDraw, ImageFont

GRID_PADDING = 4  # pixels of background around and between cells
LABEL_FONT_SIZE = 12  # Pillow's default font (Aileron) at 12 px fits ~20 characters in 128 px
LABEL_GAP = 2  # pixels between an image and its label
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


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


def _label_font(size: int = LABEL_FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent + 1
    left, top, right, bottom = font.getbbox("Ag")
    return bottom + 2


def wrap_label(text: str, font, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap of `text` into lines no wider than `max_width` pixels; words too wide for
    a line are split; text beyond `max_lines` lines is cut and marked with '...'."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > max_width and len(word) > 1:  # hard-break a long word
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def _fit_nearest(image: Image.Image, size: int) -> Image.Image:
    """Scale `image` with NEAREST so its longer side is `size` px (pixels stay crisp)."""
    image = image.convert("RGB")
    scale = size / max(image.width, image.height)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.NEAREST)


def make_image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    cell_size: int = 128,
    columns: int = 8,
    max_label_lines: int = 4,
) -> Image.Image:
    """A grid of `images`, each upscaled (NEAREST) to fit a `cell_size` square, with its label
    wrapped underneath.

    Size: width = c·cell_size + (c+1)·GRID_PADDING with c = min(columns, len(images)); height =
    r·(cell_size + label_height) + (r+1)·GRID_PADDING with r = ceil(len(images) / c), where
    label_height fits the longest wrapped label (0 without labels).
    """
    if len(images) == 0:
        raise ValueError("no images to put in a grid")
    if labels is not None and len(labels) != len(images):
        raise ValueError(
            f"got {len(images)} images but {len(labels)} labels; pass one label per image"
        )
    if cell_size < 8 or columns < 1 or max_label_lines < 1:
        raise ValueError("cell_size must be >= 8, columns >= 1 and max_label_lines >= 1")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{i}] is a {type(image).__name__}; expected a PIL image")

    font = _label_font()
    line_height = _line_height(font)
    wrapped = [wrap_label(str(t), font, cell_size, max_label_lines) for t in labels or []]
    num_lines = max((len(lines) for lines in wrapped), default=0)
    label_height = LABEL_GAP + num_lines * line_height if labels is not None else 0

    num_columns = min(columns, len(images))
    num_rows = math.ceil(len(images) / num_columns)
    row_height = cell_size + label_height
    width = num_columns * cell_size + (num_columns + 1) * GRID_PADDING
    height = num_rows * row_height + (num_rows + 1) * GRID_PADDING
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)

    for i, image in enumerate(images):
        row, col = divmod(i, num_columns)
        x0 = GRID_PADDING + col * (cell_size + GRID_PADDING)
        y0 = GRID_PADDING + row * (row_height + GRID_PADDING)
        cell = _fit_nearest(image, cell_size)
        grid.paste(cell, (x0 + (cell_size - cell.width) // 2, y0 + (cell_size - cell.height) // 2))
        if labels is not None:
            y = y0 + cell_size + LABEL_GAP
            for line in wrapped[i]:
                draw.text((x0, y), line, fill=TEXT_COLOUR, font=font)
                y += line_height
    return grid


def save_image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None,
    path: str | Path,
    cell_size: int = 128,
    columns: int = 8,
    max_label_lines: int = 4,
) -> Path:
    """Save `make_image_grid(images, labels, ...)` as a PNG at `path` (folders are created)."""
    path = Path(path)
    grid = make_image_grid(images, labels, cell_size, columns, max_label_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


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
) -> Path:
    """Write a markdown page: `# title`, a table of the (flattened) metrics, then one section per
    grid with the image embedded. Grid links are written relative to the page's folder when the
    grid lies under it, so the folder can be moved or browsed on GitHub as it is."""
    path = Path(path)
    flat = flatten_metrics(metrics) if metrics else {}
    lines = [f"# {title}", ""]
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
