"""Image conversion at the API boundary: many user formats in, model tensors out; grids for people."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


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


def image_grid(images: Sequence[Image.Image], labels: Sequence[str] | None = None, cell_size: int = 128,
               columns: int = 8, label_lines: int = 3) -> Image.Image:
    """A grid of images, upscaled with NEAREST to `cell_size` so small images stay legible, each
    with its label wrapped underneath."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"image_grid got {len(images)} images but {len(labels)} labels")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    line_height = 11
    chars_per_line = max(8, cell_size // 6)
    text_height = label_lines * line_height + 4 if labels is not None else 0
    grid = Image.new("RGB", (columns * cell_size, rows * (cell_size + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        x, y = (index % columns) * cell_size, (index // columns) * (cell_size + text_height)
        grid.paste(image.convert("RGB").resize((cell_size, cell_size), Image.NEAREST), (x, y))
        if labels is not None:
            lines = textwrap.wrap(labels[index], chars_per_line)[:label_lines]
            for line_no, line in enumerate(lines):
                draw.text((x + 2, y + cell_size + 2 + line_no * line_height), line, fill="black")
    return grid
