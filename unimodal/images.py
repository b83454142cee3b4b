"""Image conversion at the API boundary: many user formats in, model tensors out; grids for people."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

GRID_PADDING = 4  # pixels of background around and between cells
LABEL_FONT_SIZE = 12  # Pillow's default font (Aileron) at 12 px fits ~20 characters in 128 px
LABEL_GAP = 2  # pixels between an image and its label
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def to_model_tensor(image: Any, size: int) -> torch.Tensor:
    """One image -> (3, size, size) float in [-1, 1].

    Accepts a PIL image (any mode), a numpy array or a tensor shaped (H, W), (H, W, 3|4), (3|4, H, W)
    or (1, 3, H, W). uint8 is read as [0, 255]; floats as [0, 1], or [-1, 1] when they hold negatives.
    Non-square images are resized on their shorter side and center-cropped; any size is accepted.
    """
    if isinstance(image, Image.Image):
        # np.array, not asarray: PIL's buffer is read-only and torch warns about wrapping it.
        tensor = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        # ascontiguousarray: flipped views (e.g. BGR -> RGB as img[..., ::-1]) have negative strides,
        # which torch cannot wrap.
        tensor = _array_to_chw(torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray)
                                               else image))
    else:
        raise TypeError(f"expected a PIL.Image, numpy array or torch.Tensor, got {type(image).__name__}")
    if tensor.min() >= 0:
        tensor = tensor * 2 - 1
    return _resize_center_crop(tensor, size).clamp(-1, 1)


def _array_to_chw(array: torch.Tensor) -> torch.Tensor:
    array = array.detach().cpu()
    if array.dim() == 4 and array.shape[0] == 1:
        array = array[0]
    if array.dim() == 2:
        array = array[None].expand(3, -1, -1)
    if array.dim() != 3:
        raise ValueError(f"an image array must be (H, W), (H, W, C) or (C, H, W); got shape {tuple(array.shape)}")
    if array.shape[0] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.permute(2, 0, 1)  # HWC -> CHW
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    if array.shape[0] == 4:
        array = array[:3]  # drop alpha
    if array.shape[0] != 3:
        raise ValueError(f"an image needs 1, 3 or 4 channels; got shape {tuple(array.shape)}")
    if array.dtype == torch.uint8:
        return array.float() / 255.0
    if not torch.is_floating_point(array):
        raise TypeError(f"image arrays must be uint8 or float, got {array.dtype}")
    return array.float()


def _resize_center_crop(tensor: torch.Tensor, size: int) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    if (height, width) == (size, size):
        return tensor
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(tensor[None], size=(new_h, new_w), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[:, top: top + size, left: left + size]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL RGB images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


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


def image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    cell_size: int = 128,
    columns: int = 8,
    max_label_lines: int = 4,
) -> Image.Image:
    """A grid of `images`, each upscaled (NEAREST, so small images stay crisp) to fit a `cell_size`
    square, with its label wrapped underneath (the CLI, training sample grids and eval reports).

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
