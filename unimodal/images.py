"""Images in and out: the one decoding rule for every image that enters the project (`open_image`,
`to_model_tensor`), model tensors back to PIL, and labelled grids for people."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

GRID_PADDING = 4  # pixels of background around and between cells
LABEL_FONT_SIZE = 12  # Pillow's default font (Aileron) at 12 px fits ~20 characters in 128 px
LABEL_GAP = 2  # pixels between an image and its label
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


# ---- the input rule: every image that enters the project is decoded here ----
# Alpha is composited on white, as transformers' image processors do (`image_transforms.convert_to_rgb`).
ALPHA_BACKGROUND = 255
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ImageSource = Any  # path, bytes, binary file, PIL image, numpy array or tensor (see `to_model_tensor`)

IMAGE_RESIZE_MODES = ("square", "native")
MAX_ASPECT = 4.0  # native buckets span aspect ratios (width / height) from 1/4 to 4
AREA_BAND = (0.75, 1.25)  # native buckets hold between 0.75 and 1.25 times the size² pixel budget


def aspect_buckets(size: int, multiple: int, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """The (width, height) buckets of the `native` rule for a `size`² pixel budget (the SDXL / NaViT
    bucketing idea, derived from the budget instead of a hand-written list): every pair of sides
    that are multiples of `multiple`, whose area lies within `AREA_BAND` of size², and whose aspect
    ratio lies within [1/max_aspect, max_aspect]. Sorted by aspect ratio. E.g. size 32, multiple 4
    gives 50 buckets, among them 32×32, 48×24, 24×48 and 40×24."""
    if size <= 0 or multiple <= 0:
        raise ValueError(f"size and multiple must be positive, got {size} and {multiple}")
    low, high = AREA_BAND[0] * size * size, AREA_BAND[1] * size * size
    sides = range(multiple, int(high // multiple) + 1, multiple)
    buckets = [(w, h) for w in sides for h in sides
               if low <= w * h <= high and 1 / max_aspect <= w / h <= max_aspect]
    if not buckets:
        raise ValueError(f"no {multiple}-multiple sides give about {size}x{size} pixels; use a larger size")
    return sorted(buckets, key=lambda b: (b[0] / b[1], b[0] * b[1]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log ratio); on a tie the largest."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 9), -b[0] * b[1]))


@dataclass(frozen=True)
class ImageGeometry:
    """How an image is sized for the model, one rule for training, `caption`/`answer`, the shell and
    evaluation (`ModelConfig.image_geometry()`).

    - `square`: resize the shorter side to `size`, centre-crop to size × size.
    - `native`: keep the aspect ratio: the image goes to the bucket of `aspect_buckets(size,
      multiple)` nearest its aspect ratio (about size² pixels, both sides multiples of `multiple`,
      the model's pixels per patch), resized to cover it and centre-cropped: a sliver at most, unless
      the image is longer than 4:1 (the widest bucket), when the ends beyond 4:1 are cut.
    """

    size: int
    resize: str = "square"
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.resize not in IMAGE_RESIZE_MODES:
            raise ValueError(f"image resize must be one of {IMAGE_RESIZE_MODES}, got {self.resize!r}")

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) in pixels an image of `width` × `height` becomes."""
        if self.resize == "square":
            return self.size, self.size
        return nearest_bucket(width, height, aspect_buckets(self.size, self.multiple))


def _geometry(size: int | ImageGeometry) -> ImageGeometry:
    return size if isinstance(size, ImageGeometry) else ImageGeometry(int(size))


def open_image(source: str | os.PathLike | bytes | IO[bytes] | Image.Image, draft_size: int | None = None
               ) -> Image.Image:
    """A path, encoded bytes, a binary file or a PIL image -> an upright 8-bit RGB PIL image.

    The one input rule of the project (the shard reader, the API, the CLI, the evaluation and the
    shard writers all call this):
    - EXIF orientation is applied first (`PIL.ImageOps.exif_transpose`), so photos come out upright.
    - Transparency (RGBA, LA, PA, premultiplied RGBa/La, and P/L/RGB images with a `transparency`
      entry) is composited on a white background.
    - 16-bit grey (I;16*) is scaled to 8 bits (value / 257, rounded): never clipped. 32-bit integer
      grey (I) is read as 16-bit values and must lie in [0, 65535]; float grey (F) must lie in
      [0, 1]; otherwise ValueError, since their range cannot be known.
    - Every other mode (1-bit, L, P, CMYK, YCbCr, LAB, HSV, RGBX) goes through Pillow's
      `convert("RGB")` (CMYK without colour management).
    `draft_size` lets a JPEG decode at 1/2..1/8 scale when both sides stay >= draft_size (paths and
    bytes only; the training reader passes its image size). Raises what Pillow raises for bytes it
    cannot decode (OSError, SyntaxError, ...); the image is fully decoded before it is returned.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        if draft_size is not None and image.format == "JPEG":
            image.draft(None, (draft_size, draft_size))  # a square request, so EXIF rotation does not matter
        return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # a copy, fully loaded, without the Orientation tag
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.array(image, dtype=np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"a 32-bit integer image (mode I) must hold 16-bit values in [0, 65535], got "
                             f"[{values.min()}, {values.max()}]")
        grey = np.round(values / 257.0).astype(np.uint8)  # 65535 / 257 = 255 exactly
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.array(image, dtype=np.float64)
        return Image.fromarray(_float_to_uint8(values, "a float image (mode F)"), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    _check_unit_range(torch.from_numpy(values), what)
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


# Float images a resize or a colour transform made may overshoot [0, 1] by rounding.
_FLOAT_TOLERANCE = 1e-3


def _check_unit_range(values: torch.Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    if values.numel() and (values.min() < -_FLOAT_TOLERANCE or values.max() > 1 + _FLOAT_TOLERANCE):
        raise ValueError(f"{what} must lie in [0, 1] (floats are read as [0, 1], as in torchvision), got values in "
                         f"[{float(values.min()):.3f}, {float(values.max()):.3f}]; map [-1, 1] images with (x + 1) / 2")


def to_model_tensor(image: ImageSource, size: int | ImageGeometry) -> torch.Tensor:
    """One image -> (3, H, W) float in [-1, 1], the model's input: (3, size, size) for an int `size`
    or a `square` geometry, the nearest aspect bucket's size for a `native` one (`ImageGeometry`).

    Accepts a path, encoded bytes or a PIL image (any mode; decoded by `open_image`, the project's
    one input rule), or a numpy array / tensor shaped (H, W), (H, W, C), (C, H, W) or (1, C, H, W)
    with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). The value range follows the dtype,
    never the pixel values: uint8 is [0, 255], uint16 [0, 65535], bool {0, 1}, floats [0, 1] (as
    in torchvision, and as `UniModal.generate(output_type="pt")` returns them). Alpha is composited
    on white, as in `open_image`. Raises ValueError for floats outside [0, 1] (beyond rounding),
    NaN or inf, and for other shapes; TypeError for other dtypes or types. Images are resized to
    cover the target and center-cropped; any size is accepted. Paths and bytes let a JPEG decode
    at reduced scale exactly as the training reader does.
    """
    geometry = _geometry(size)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        rgb = open_image(image, draft_size=None if isinstance(image, Image.Image) else geometry.size)
        # np.array, not asarray: PIL's buffer is read-only and torch warns about wrapping it.
        tensor = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255.0
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        tensor = _array_to_chw(image)
    else:
        raise TypeError(f"expected a path, bytes, PIL.Image, numpy array or torch.Tensor, got {type(image).__name__}")
    width, height = geometry.target(tensor.shape[-1], tensor.shape[-2])
    return _resize_center_crop(tensor * 2 - 1, width, height).clamp(-1, 1)


def _array_to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An array -> (3, H, W) float in [0, 1] by its dtype (see `to_model_tensor`)."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch has no general uint16 support: convert here
            image = image.astype(np.float32) / 65535.0
        # A contiguous, writable copy when needed: flipped views (BGR -> RGB as img[..., ::-1]) have
        # negative strides, and arrays of PIL buffers are read-only; torch wraps neither.
        array = torch.from_numpy(np.require(image, requirements=["C", "W"]))
    else:
        array = image.detach().cpu()
    if array.dim() == 4 and array.shape[0] == 1:
        array = array[0]
    if array.dim() == 2:
        array = array[None]
    if array.dim() != 3:
        raise ValueError(f"an image array must be (H, W), (H, W, C) or (C, H, W); got shape {tuple(array.shape)}")
    if array.shape[0] not in (1, 2, 3, 4) and array.shape[-1] in (1, 2, 3, 4):
        array = array.permute(2, 0, 1)  # HWC -> CHW
    if array.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"an image needs 1, 2, 3 or 4 channels; got shape {tuple(array.shape)}")
    if array.dtype == torch.uint8:
        array = array.float() / 255.0
    elif array.dtype == torch.uint16:
        array = array.float() / 65535.0
    elif array.dtype == torch.bool:
        array = array.float()
    elif torch.is_floating_point(array):
        array = array.float()
        _check_unit_range(array, "a float image")
        array = array.clamp(0, 1)
    else:
        raise TypeError(f"image arrays must be uint8, uint16, bool or float, got {array.dtype}")
    if array.shape[0] in (2, 4):  # composite the last channel (alpha) on white, as open_image does
        colour, alpha = array[:-1], array[-1:]
        array = colour * alpha + (ALPHA_BACKGROUND / 255.0) * (1 - alpha)
    return array.expand(3, -1, -1) if array.shape[0] == 1 else array


def _resize_center_crop(tensor: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) to cover `width` × `height`, then centre-crop to it."""
    in_h, in_w = tensor.shape[-2:]
    if (in_h, in_w) == (height, width):
        return tensor
    scale = max(width / in_w, height / in_h)
    new_h, new_w = max(height, round(in_h * scale)), max(width, round(in_w * scale))
    resized = F.interpolate(tensor[None], size=(new_h, new_w), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[:, top: top + height, left: left + width]


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


def _fit_nearest(image: Image.Image, size: int, width: int | None = None) -> Image.Image:
    """Scale `image` with NEAREST to the largest size that fits a `width` x `size` box (`width`
    None = a `size` square), keeping its aspect ratio (pixels stay crisp)."""
    image = image.convert("RGB")
    scale = min((width or size) / image.width, size / image.height)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.NEAREST)


def image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    cell_size: int = 128,
    columns: int = 8,
    max_label_lines: int = 4,
    cell_width: int | None = None,
) -> Image.Image:
    """A grid of `images`, each upscaled (NEAREST, so small images stay crisp) to fit a cell of
    `cell_width` x `cell_size` pixels (a `cell_size` square when `cell_width` is None; a wide cell
    suits wide images such as a video's frame strip), with its label wrapped underneath, at the
    cell's width (the CLI, training sample grids and eval reports).

    Size: width = c·cell_width + (c+1)·GRID_PADDING with c = min(columns, len(images)); height =
    r·(cell_size + label_height) + (r+1)·GRID_PADDING with r = ceil(len(images) / c), where
    label_height fits the longest wrapped label (0 without labels).

    Raises ValueError: no images, a label count that differs from the image count, cell sides
    below 8 px, columns or max_label_lines below 1, or an image that is not a PIL image.
    """
    if len(images) == 0:
        raise ValueError("no images to put in a grid")
    if labels is not None and len(labels) != len(images):
        raise ValueError(
            f"got {len(images)} images but {len(labels)} labels; pass one label per image"
        )
    cell_width = cell_size if cell_width is None else cell_width
    if cell_size < 8 or cell_width < 8 or columns < 1 or max_label_lines < 1:
        raise ValueError("cell_size and cell_width must be >= 8, columns >= 1 and max_label_lines >= 1")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{i}] is a {type(image).__name__}; expected a PIL image")

    font = _label_font()
    line_height = _line_height(font)
    wrapped = [wrap_label(str(t), font, cell_width, max_label_lines) for t in labels or []]
    num_lines = max((len(lines) for lines in wrapped), default=0)
    label_height = LABEL_GAP + num_lines * line_height if labels is not None else 0

    num_columns = min(columns, len(images))
    num_rows = math.ceil(len(images) / num_columns)
    row_height = cell_size + label_height
    width = num_columns * cell_width + (num_columns + 1) * GRID_PADDING
    height = num_rows * row_height + (num_rows + 1) * GRID_PADDING
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)

    for i, image in enumerate(images):
        row, col = divmod(i, num_columns)
        x0 = GRID_PADDING + col * (cell_width + GRID_PADDING)
        y0 = GRID_PADDING + row * (row_height + GRID_PADDING)
        cell = _fit_nearest(image, cell_size, cell_width)
        grid.paste(cell, (x0 + (cell_width - cell.width) // 2, y0 + (cell_size - cell.height) // 2))
        if labels is not None:
            y = y0 + cell_size + LABEL_GAP
            for line in wrapped[i]:
                draw.text((x0, y), line, fill=TEXT_COLOUR, font=font)
                y += line_height
    return grid
