"""Training throughput of one process on the CPU: samples/s, tokens/s and achieved FLOP/s against the
machine's own measured matmul rate.

    python benchmarks/train_throughput.py --preset tiny --batch-size 32 --steps 10 --threads 2
    python benchmarks/train_throughput.py --preset tiny --batch-size 32 --dtype bf16

A random model of the preset trains on one fixed synthetic batch that mixes generation, caption and
VQA sequences as `SequenceLayout` builds them (random latents, ~12-token captions). A step is what the
training loop does per batch: noise the images, forward, backward, `torch.optim.AdamW.step` (fused
CPU kernel where available). Plain PyTorch in one process: no DeepSpeed, no data loader (the batch is
collated once; see the data-loader benchmark for that side).

Prints one JSON line. `flops_per_step` is counted analytically (`benchmarks.common.step_flops`):

    dense     = 6 · N_matmul · B · T,   N_matmul = L·(2·D² + 2·D·Hkv·Dh + 3·D·F) + D·V
    attention = 3 · L · 2 · (2 · B · T² · D)
    adapters  = 6 · N_img · (P · 2·E·D + 256·D + 3·D²)

over every position (padding included; the LM head over all B·T positions; attention over the full
T×T square). `matmul_flops` is a 2048² `torch.mm` in the same dtype and thread count timed in the same
run: one probe of 3 products after every timed step, so steps and probes see the same load on a
shared machine. `flops_ratio = achieved_flops / matmul_flops` compares the medians;
`flops_ratio_best` compares the fastest step with the fastest probe (the least disturbed of each).
`peak_rss_mb` is the process's peak RSS during the timed steps, less the probe's three matrices;
`rss_before_steps_mb` is the same before the first step (libraries, model, batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (DTYPES, MatmulProbe, TrainStep, benchmark_tokenizer, median,  # noqa: E402
                               peak_rss_mb, reset_peak_rss, rss_mb, step_flops, synthetic_batch, time_steps)
from unimodal.config import PRESETS, ModelConfig  # noqa: E402
from unimodal.model import UniModalModel  # noqa: E402

# Batch size per preset when --batch-size is not given. Measured for tiny on 2 cores: 16-32 sequences
# give the most samples/s (8 leaves the matmuls too small, 64 spills the activations out of cache);
# small's 272-token sequences reach the same efficiency from 4.
DEFAULT_BATCH_SIZE = {"debug": 8, "tiny": 32, "small": 8, "base": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: all cores")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step; default per preset")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="bf16 = torch.autocast(bfloat16) over fp32 weights")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (cold compile: 1-2 min on 2 cores; warm-up >= 3 steps)")
    parser.add_argument("--caption-tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the reference torch.mm")
    args = parser.parse_args(argv)
    if args.compile:
        args.warmup = max(args.warmup, 3)  # the first calls compile (and may recompile once)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def run(preset: str, batch_size: int, dtype: str = "fp32", steps: int = 10, warmup: int = 3,
        compile: bool = False, caption_tokens: int = 12, seed: int = 0, matmul_size: int = 2048) -> dict:
    """Build, time and measure one configuration; returns the result dict (threads already set)."""
    torch.manual_seed(seed)
    load_before = os.getloadavg()[0]
    tokenizer = benchmark_tokenizer()
    config = ModelConfig.preset(preset)
    if tokenizer.vocab_size > config.vocab_size:
        config.vocab_size = tokenizer.vocab_size
    model = UniModalModel(config)
    batch = synthetic_batch(config, tokenizer, batch_size, caption_tokens, seed)
    seq_len = int(batch.input_ids.shape[1])
    step = TrainStep(model, batch, DTYPES[dtype], compile=compile, seed=seed)
    probe = MatmulProbe(DTYPES[dtype], matmul_size)
    reset_peak_rss()
    rss_before = rss_mb() - probe.nbytes / 2**20
    times = time_steps(step, steps, warmup, between=probe)
    peak = peak_rss_mb() - probe.nbytes / 2**20
    seconds = median(times)
    matmul = median(probe.rates)
    flops = step_flops(config, batch_size, seq_len, batch.num_images)
    achieved = flops.total / seconds
    return {
        "benchmark": "train_throughput",
        "preset": preset,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "num_images": batch.num_images,
        "params": model.num_parameters(),
        "samples_per_s": batch_size / seconds,
        "tokens_per_s": batch_size * seq_len / seconds,
        "seconds_per_step": seconds,
        "seconds_per_step_min": min(times),
        "peak_rss_mb": peak,
        "rss_before_steps_mb": rss_before,
        "flops_per_step": flops.total,
        "flops_dense": flops.dense,
        "flops_attention": flops.attention,
        "flops_adapters": flops.adapters,
        "achieved_flops": achieved,
        "matmul_flops": matmul,
        "matmul_flops_max": max(probe.rates),
        "matmul_size": matmul_size,
        "flops_ratio": achieved / matmul,
        "flops_ratio_best": flops.total / min(times) / max(probe.rates),
        "optimizer": f"torch.optim.AdamW({step.optimizer_kind})",
        "compile": compile,
        "distributed": "none (plain PyTorch, one process, no DeepSpeed)",
        "steps": steps,
        "warmup": warmup,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE.get(args.preset, 8)
    result = run(args.preset, batch_size, args.dtype, args.steps, args.warmup, args.compile,
                 args.caption_tokens, args.seed, args.matmul_size)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
