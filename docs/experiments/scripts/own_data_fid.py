"""FID / KID of an exported model's generations from held-out captions against the held-out images,
with the sampler's settings as options (docs/experiments/2026-11-30-own-data-time-shift.md).

It is the generation half of `python -m unimodal.evaluation --suite shards` (same sample order, same
`generate_images`, noise of seed + i for image i, same Inception and torchmetrics code), without the
captioning pass, and with two additions the sweep needed:

- the reference images' Inception features are cached (`--real-cache`), so each setting pays for
  one Inception pass over its own generations only;
- `--sample-shift` samples with another time shift than the one the model was trained with (the
  scheduler is `FlowMatching(time_sampling, shift).make_scheduler(...)`, as `UniModal` builds it).

KID uses subsets of `--kid-subset-size` (default 500) so that with 1,000 samples its std measures
something (the library default, 1,000, makes every subset the whole set).

    python docs/experiments/scripts/own_data_fid.py --model runs/NAME/export \
        --data 'runs/icons/shards/heldout/shard-000000.tar' --num-samples 1000 --num-steps 25 \
        --scheduler euler [--sample-shift 1.0] --real-cache runs/icons/heldout_inception.pt --out runs/fid/NAME.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from PIL import Image

from unimodal.api import UniModal
from unimodal.data import iter_samples
from unimodal.diffusion import FlowMatching
from unimodal.evaluation.image_metrics import InceptionFeatureExtractor, extract_features, fid_kid_from_features
from unimodal.evaluation.suites import EvalSettings, generate_images
from unimodal.images import to_pil


def grid(images: list[Image.Image], columns: int = 8, scale: int = 4) -> Image.Image:
    """The first columns² images, nearest-upscaled by `scale`, in one PNG (no labels)."""
    images = images[: columns * columns]
    side = images[0].width * scale
    out = Image.new("RGB", (columns * side, ((len(images) + columns - 1) // columns) * side))
    for i, image in enumerate(images):
        out.paste(image.resize((side, side), Image.NEAREST), ((i % columns) * side, (i // columns) * side))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--scheduler", default=None, help="euler | dpmsolver++ (default: the model's)")
    parser.add_argument("--sample-shift", type=float, default=None, help="sampling time shift (default: trained)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kid-subset-size", type=int, default=500)
    parser.add_argument("--real-cache", default=None, help="file caching the reference images' features")
    parser.add_argument("--out", required=True, help="JSON of the figures; a PNG grid of generations next to it")
    args = parser.parse_args()

    start = time.time()
    api = UniModal.from_pretrained(args.model)
    config = api.config
    if args.sample_shift is not None:
        api.process = FlowMatching(config.time_sampling, args.sample_shift)
    samples = list(itertools.islice(iter_samples(args.data, config.image_size), args.num_samples))
    real_images = to_pil(torch.stack([s.image for s in samples]))
    extractor = InceptionFeatureExtractor()
    cache = Path(args.real_cache) if args.real_cache else None
    if cache is not None and cache.exists():
        real = torch.load(cache, weights_only=True)
        assert real.shape[0] == len(samples), f"{cache} holds {real.shape[0]} features, not {len(samples)}"
    else:
        real = extract_features(real_images, extractor, progress=False)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(real, cache)

    settings = EvalSettings(num_steps=args.num_steps, guidance_scale=args.guidance_scale, scheduler=args.scheduler,
                            seed=args.seed, progress=False)
    t0 = time.time()
    generated = generate_images(api, [s.caption for s in samples], settings)
    generate_s = time.time() - t0
    fake = extract_features(generated, extractor, progress=False)
    scores = fid_kid_from_features(real, fake, kid_subset_size=args.kid_subset_size, seed=args.seed)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(generated).save(out.with_suffix(".png"))
    grid(real_images).save(out.parent / "heldout_reference.png")
    record = {"model": args.model, "trained_time_shift": config.time_shift, "time_sampling": config.time_sampling,
              "sample_shift": api.process.time_shift, "scheduler": args.scheduler or "default",
              "num_steps": args.num_steps, "guidance_scale": args.guidance_scale, "num_samples": len(samples),
              "kid_subset_size": args.kid_subset_size, **scores,
              "generate_s": round(generate_s, 1), "wall_s": round(time.time() - start, 1)}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
