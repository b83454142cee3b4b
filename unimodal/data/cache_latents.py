"""Pre-encode the images of a shard set into latents, written as new shards the reader accepts.

    python -m unimodal.data.cache_latents --shards "shards/train-{000000..000009}.tar" --out shards/train-vae \\
        --codec vae --vae-path models/vae --image-size 256 [--dtype float16] [--device cuda]
    python -m unimodal.data.cache_latents --shards DIR --out DIR2 --export runs/tiny/export   # the model's own codec

Each output sample holds `KEY.latent.npy` ((C, h, w) array, (C, F, h, w) for a clip, `np.save` format) and the same
`KEY.txt`/`KEY.json`; train on it with `DataConfig(latents=True, train_shards=<out pattern>)`.
`latents.json` in the output folder records the codec settings and shapes. The codec is any object
with `encode(images: (N, 3, H, W) in [-1, 1]) -> (N, C, h, w)` (`unimodal.codecs.PixelCodec`,
`VAECodec`); images are decoded, resized and center-cropped exactly as the reader does.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimodal.codecs import encode_items
from unimodal.video import VideoSampling

from .classes import CLASS_CAPTION_TEMPLATE, ClassCaptions, load_class_captions
from .reader import iter_samples
from .samples import LATENT_SUFFIX, DecodedSample
from .skips import SkipCounter
from .sources import ShardSample
from .write_shards import WriteSummary, write_shards

DTYPES = {"float16": np.float16, "float32": np.float32}


def latent_bytes(latent: torch.Tensor, dtype: str = "float32") -> bytes:
    """(C, h, w) or a clip's (C, F, h, w) tensor -> `.npy` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, latent.detach().cpu().float().numpy().astype(DTYPES[dtype]), allow_pickle=False)
    return buffer.getvalue()


def _batches(samples: Iterator[DecodedSample], batch_size: int) -> Iterator[list[DecodedSample]]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def encoded_samples(samples: Iterator[DecodedSample], codec: Any, batch_size: int = 64, dtype: str = "float32",
                    device: str | torch.device = "cpu") -> Iterator[ShardSample]:
    """Encode decoded samples in batches; yields shard samples with the latent as payload."""
    for batch in _batches(samples, batch_size):
        items = [s.image.to(device) for s in batch]  # (3, H, W) images or (3, F, H, W) clips, sizes may differ
        with torch.no_grad():
            latents = encode_items(codec, items)  # one codec call per shape; clips frame by frame
        for item, latent in zip(items, latents):
            if latent.dim() != item.dim() or (item.dim() == 4 and latent.shape[1] != item.shape[1]):
                raise ValueError(f"codec.encode gave a latent of shape {tuple(latent.shape)} for an item of shape "
                                 f"{tuple(item.shape)}; expected (C, h, w) per image, (C, F, h, w) per clip")
        for sample, latent in zip(batch, latents):
            yield ShardSample(sample.key, latent_bytes(latent, dtype), LATENT_SUFFIX, sample.caption,
                              sample.metadata or None)


def cache_latents(shards: str | Sequence[str], out_dir: str | Path, codec: Any, image_size: int,
                  batch_size: int = 64, dtype: str = "float32", device: str | torch.device = "cpu",
                  prefix: str = "latent", max_count: int = 10_000, progress: bool = True,
                  classes: ClassCaptions | None = None, video: VideoSampling | None = None) -> WriteSummary:
    """Encode every usable sample of `shards` with `codec` into new shards under `out_dir`.

    Unusable input samples (corrupt image, no caption, unreadable shard) are skipped, logged and
    reported in the summary's `skipped`. Clips are sampled by `video` (`unimodal.video.VideoSampling`,
    default 8 frames at 10 fps) and encoded frame by frame into (C, F, h, w) latents. `classes`
    captions class-labelled samples (KEY.cls without a caption) as training does; the written latent
    shards then hold that caption as KEY.txt.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not callable(getattr(codec, "encode", None)):
        raise TypeError(f"codec must have an encode(images) method, got {type(codec).__name__}")
    counter = SkipCounter(where="[cache_latents]")
    decoded = iter_samples(shards, image_size, counter=counter, classes=classes, video=video)
    samples = encoded_samples(decoded, codec, batch_size, dtype, device)
    summary = write_shards(samples, out_dir, prefix=prefix, max_count=max_count, progress=progress)
    summary.skipped = counter.as_dict()
    info = {"image_size": image_size, "dtype": dtype,
            "source_shards": shards if isinstance(shards, str) else list(shards),
            "latent_channels": getattr(codec, "latent_channels", None),
            "downsample_factor": getattr(codec, "downsample_factor", None),
            "codec": codec.settings() if callable(getattr(codec, "settings", None)) else type(codec).__name__,
            "num_samples": summary.num_samples, "shards": summary.pattern}
    (Path(out_dir) / "latents.json").write_text(json.dumps(info, indent=2))
    return summary


def load_codec(name: str, vae_path: str | None = None, export: str | None = None):
    """The codec named on the command line, from `unimodal.codecs`."""
    from unimodal import codecs

    if export:
        return codecs.load_codec(export)
    if name == "pixel":
        return codecs.PixelCodec()
    if name == "vae":
        if not vae_path:
            raise ValueError("--codec vae needs --vae-path (a local AutoencoderKL folder)")
        return codecs.VAECodec.from_pretrained(vae_path)
    if name == "tiny-vae":  # an untrained tiny VAE: for pipeline tests only
        return codecs.VAECodec.tiny()
    raise ValueError(f"unknown codec {name!r}; expected pixel, vae or tiny-vae")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimodal.data.cache_latents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="input shards: brace pattern, directory or '::'-joined list")
    parser.add_argument("--out", required=True, help="output folder for the latent shards")
    parser.add_argument("--codec", default="pixel", choices=["pixel", "vae", "tiny-vae"])
    parser.add_argument("--vae-path", default=None, help="AutoencoderKL folder for --codec vae")
    parser.add_argument("--export", default=None, help="an exported model folder: use its codec (overrides --codec)")
    parser.add_argument("--image-size", type=int, required=True, help="images are resized/cropped to this first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=8, help="frames each clip is sampled to (data.num_frames)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second clips are sampled at (data.video_fps)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prefix", default="latent")
    parser.add_argument("--max-count", type=int, default=10_000)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--class-names", default=None,
                        help="class-labelled shards (KEY.cls): a file with one class name per line, or a JSON list")
    parser.add_argument("--class-caption-template", default=CLASS_CAPTION_TEMPLATE,
                        help="caption of a class-labelled sample; {name} is its class name")
    args = parser.parse_args(argv)
    classes = load_class_captions(args.class_names, args.class_caption_template)
    codec = load_codec(args.codec, args.vae_path, args.export)
    if hasattr(codec, "to"):
        codec = codec.to(args.device)
    summary = cache_latents(args.shards, args.out, codec, args.image_size, args.batch_size, args.dtype, args.device,
                            args.prefix, args.max_count, progress=not args.no_progress, classes=classes,
                            video=VideoSampling(args.num_frames, args.fps))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
