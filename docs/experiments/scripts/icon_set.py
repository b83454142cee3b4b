"""A real colour icon set for the own-data experiments: Noto Color Emoji rendered to 32×32, one caption each.

Each sample is one emoji drawn at a random scale and offset on a plain background whose colour is named in
the caption ("a grinning face on a blue background"). Every choice comes from `random.Random` seeded by
(--seed, sample index), so the folder is the same on every machine with the same font file. The split is by
rendering, not by emoji: samples 0..num_train-1 are the training split and the next num_heldout are held
out, so held-out captions name emoji (and backgrounds) the model has seen, drawn at other scales/offsets.

    apt-get install -y fonts-noto-color-emoji     # Debian; CBDT bitmap font, only loads at size 109
    python docs/experiments/scripts/icon_set.py --out runs/icons      # images/ + train.jsonl + heldout.jsonl
    python -m unimodal.data.write_shards folder --images runs/icons/images \
        --captions runs/icons/train.jsonl --out runs/icons/shards/train
    python -m unimodal.data.write_shards folder --images runs/icons/images \
        --captions runs/icons/heldout.jsonl --out runs/icons/shards/heldout
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_SIZE = 109  # the only size a CBDT bitmap font loads at
# Single-codepoint pictographs (no flags, keycaps, skin-tone modifiers or ZWJ sequences).
RANGES = [(0x1F300, 0x1F3FA), (0x1F400, 0x1F4FF), (0x1F500, 0x1F53D), (0x1F680, 0x1F6FF),
          (0x1F950, 0x1F9FF), (0x1FA70, 0x1FAFF)]
BACKGROUNDS = {  # name -> RGB; names are the caption's words
    "white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128), "red": (200, 40, 40),
    "orange": (240, 140, 30), "yellow": (245, 220, 60), "green": (50, 160, 70), "blue": (40, 90, 200),
    "purple": (130, 60, 170), "pink": (240, 150, 190),
}


def emoji_names(font: ImageFont.FreeTypeFont) -> list[tuple[str, str]]:
    """(character, lower-case Unicode name) of every single-codepoint emoji in RANGES the font draws."""
    out = []
    for lo, hi in RANGES:
        for code in range(lo, hi + 1):
            char = chr(code)
            name = unicodedata.name(char, "")
            if not name or "MODIFIER" in name or font.getmask(char).getbbox() is None:
                continue
            out.append((char, name.lower()))
    return out


def render(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
    """The emoji's RGBA bitmap, cropped to its opaque pixels."""
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((10, 10), char, font=font, embedded_color=True)
    return canvas.crop(canvas.getchannel("A").getbbox())


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def sample(icon: Image.Image, name: str, rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One 32×32 rendering: random background, scale 55–95% of the canvas, random offset; Lanczos down."""
    big = 128
    bg_name = rng.choice(sorted(BACKGROUNDS))
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[bg_name])
    side = int(big * rng.uniform(0.55, 0.95))
    scale = side / max(icon.size)
    glyph = icon.resize((max(1, round(icon.width * scale)), max(1, round(icon.height * scale))), Image.LANCZOS)
    x = rng.randint(0, big - glyph.width)
    y = rng.randint(0, big - glyph.height)
    canvas.paste(glyph, (x, y), glyph)
    return canvas.resize((size, size), Image.LANCZOS), f"{article(name)} on {article(bg_name)} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for images/, train.jsonl, heldout.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-emoji", type=int, default=200, help="emoji drawn (seeded choice) from the font")
    parser.add_argument("--num-train", type=int, default=12000)
    parser.add_argument("--num-heldout", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--font", default=FONT)
    args = parser.parse_args()

    font = ImageFont.truetype(args.font, FONT_SIZE)
    names = emoji_names(font)
    chosen = sorted(random.Random(args.seed).sample(names, min(args.num_emoji, len(names))))
    icons = [render(font, char) for char, _ in chosen]
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {"train": range(args.num_train), "heldout": range(args.num_train, args.num_train + args.num_heldout)}
    for split, indices in splits.items():
        with open(out / f"{split}.jsonl", "w") as rows:
            for i in indices:
                rng = random.Random(args.seed * 10_000_019 + i)
                k = i % len(chosen)  # every emoji equally often in both splits
                image, caption = sample(icons[k], chosen[k][1], rng, args.size)
                file = f"{i:06d}.png"
                image.save(out / "images" / file)
                rows.write(json.dumps({"file": file, "caption": caption}) + "\n")
    print(f"{len(names)} emoji in the font's ranges, {len(chosen)} used; "
          f"{args.num_train} train + {args.num_heldout} held-out images in {out}")


if __name__ == "__main__":
    main()
