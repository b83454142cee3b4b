"""Inference speed: caption decoding with and without the KV cache, image sampling with and without
the cached text prefix. Prints one JSON line.

    python benchmarks/sampling.py --preset tiny --threads 2 --repeats 3
    python benchmarks/sampling.py --num-frames 8 --patch-frames 8 --prediction sample --denoise-head mlp \
        --decode-batch-sizes 1 --steps 8 25                      # clips as the video job makes them

The model is random (speed does not depend on the weights). Decoding is forced to exactly
`--new-tokens` tokens by passing an <eos> id that no token can match, so both paths do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name
from unimodal.api import UniModal
from unimodal.codecs import build_codec
from unimodal.config import ModelConfig
from unimodal.decode_step import StaticKVDecoder
from unimodal.model import UniModalModel
from unimodal.sampling import decode_text
from unimodal.tokenizer import Tokenizer

# Prompts in the synthetic world's style; also the tokenizer's training corpus.
PROMPTS = [
    "a large red circle at the top left",
    "a small blue square at the bottom right and a green triangle in the center",
    "two yellow circles on the left",
    "a purple triangle at the top",
]
NEVER_EOS = -1  # no token id equals it, so decoding always runs the full number of steps


def build(preset: str, vocab_size: int, seed: int = 0, **overrides) -> UniModal:
    corpus = PROMPTS + [f"question: what colour is the {s}? answer: {c}" for s in ("circle", "square", "triangle")
                        for c in ("red", "blue", "green", "yellow", "purple")]
    tokenizer = Tokenizer.train(corpus * 4, vocab_size=vocab_size)
    config = ModelConfig.preset(preset, vocab_size=vocab_size, **overrides)  # the model keeps the full vocabulary
    torch.manual_seed(seed)
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():  # zero-initialised: give it work to do
        torch.nn.init.normal_(param, std=0.02)
    return UniModal(model, tokenizer, build_codec(config))


def timed(fn, repeats: int) -> float:
    """Best wall seconds of `repeats` calls after one warm-up call (other processes only add time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_decoding(api: UniModal, batch_size: int, new_tokens: int, repeats: int) -> dict:
    size = api.config.image_size
    latents = api.codec.encode(torch.rand(batch_size, 3, size, size, device=api.device) * 2 - 1)
    prompts = [api.layout.caption_prompt(latent) for latent in latents]
    tokens_per_s = {}
    for use_cache in (True, False):
        def run(use_cache=use_cache):
            ids = decode_text(api.model, api.layout, prompts, new_tokens, use_cache=use_cache, eos_id=NEVER_EOS)
            assert all(len(row) == new_tokens for row in ids)
        tokens_per_s[use_cache] = batch_size * new_tokens / timed(run, repeats)
    key = f"decode_batch_{batch_size}"
    return {f"{key}_tokens_per_s_cached": round(tokens_per_s[True], 1),
            f"{key}_tokens_per_s_uncached": round(tokens_per_s[False], 1),
            f"{key}_cache_speedup": round(tokens_per_s[True] / tokens_per_s[False], 2)}


def bench_sampling(api: UniModal, batch_size: int, steps: list[int], guidance: float, repeats: int,
                   num_frames: int | None = None) -> dict:
    """Seconds per image (or per clip of `num_frames`) at each step count, with and without the cached prefix."""
    prompts = (PROMPTS * batch_size)[:batch_size]
    item = "image" if num_frames is None else "clip"
    out = {"sample_batch_size": batch_size, "sample_guidance_scale": guidance, "sample_num_frames": num_frames}
    for num_steps in steps:
        for use_cache in (True, False):
            seconds = timed(lambda num_steps=num_steps, use_cache=use_cache: api.generate(
                prompts, num_steps=num_steps, guidance_scale=guidance, output_type="pt", use_cache=use_cache,
                num_frames=num_frames), repeats)
            key = f"sample_s_per_{item}_{num_steps}_steps_{'cached' if use_cache else 'uncached'}"
            out[key] = round(seconds / batch_size, 4)
        out[f"sample_cache_speedup_{num_steps}_steps"] = round(
            out[f"sample_s_per_{item}_{num_steps}_steps_uncached"] / out[f"sample_s_per_{item}_{num_steps}_steps_cached"],
            2)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--hidden-size", type=int, default=192, help="the main and video jobs' width")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sample-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="*", default=[8, 25, 50], help="none: skip image sampling")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-frames", type=int, default=None, help="sample clips of this many frames (default: images)")
    parser.add_argument("--patch-frames", type=int, default=1, help="frames per patch (ModelConfig.patch_frames)")
    parser.add_argument("--prediction", default="velocity", help="ModelConfig.prediction (the video job: sample)")
    parser.add_argument("--denoise-head", default="linear", help="ModelConfig.denoise_head (the video job: mlp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    api = build(args.preset, args.vocab_size, patch_frames=args.patch_frames, prediction=args.prediction,
                denoise_head=args.denoise_head, hidden_size=args.hidden_size).to(args.device)
    result = {"benchmark": "sampling", "preset": args.preset, "num_parameters": api.model.num_parameters(),
              "device": device_name(args.device),
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "repeats": args.repeats, "patch_frames": args.patch_frames, "prediction": args.prediction,
              "denoise_head": args.denoise_head, "hidden_size": args.hidden_size,
              "load_average_before": round(os.getloadavg()[0], 2),
              "decode_new_tokens": args.new_tokens, "decode_prompt_tokens": api.config.num_image_tokens + 3,
              "decode_cache": ("static buffer (unimodal.decode_step)" if StaticKVDecoder.supports(api.model.decoder)
                               else "transformers DynamicCache")}
    for batch_size in args.decode_batch_sizes:
        result.update(bench_decoding(api, batch_size, args.new_tokens, args.repeats))
    if args.steps:
        result.update(bench_sampling(api, args.sample_batch_size, args.steps, args.guidance_scale, args.repeats,
                                     args.num_frames))
    # Other processes on the machine distort timings badly (2 threads on 2 busy cores): record the load.
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
