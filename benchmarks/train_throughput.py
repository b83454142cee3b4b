"""Training throughput of one process on the CPU or one CUDA GPU: samples/s, tokens/s and achieved
FLOP/s against the machine's own measured matmul rate (and, on a known GPU, its data-sheet peak).

    python benchmarks/train_throughput.py --preset tiny --batch-size 32 --steps 10 --threads 2
    python benchmarks/train_throughput.py --preset tiny --batch-size 32 --dtype bf16
    python benchmarks/train_throughput.py --preset base --device cuda --dtype bf16 --batch-size 8
    python benchmarks/train_throughput.py --preset tiny --dtype bf16 --batch-size 64 --vqa-turns 8 --max-tokens-per-row 384
    python benchmarks/train_throughput.py --preset tiny --dtype bf16 --batch-size 32 --vqa-turns 3 --compile layers

A random model of the preset trains on one fixed synthetic batch that mixes generation, caption and
VQA sequences as `SequenceLayout` builds them (random latents, ~12-token captions). A step is what the
training loop does per batch: noise the images, forward, backward, `torch.optim.AdamW.step` (fused
kernel where available). Plain PyTorch in one process: no DeepSpeed, no data loader (the batch is
collated once, then moved to `--device`; see the data-loader benchmark for that side). On CUDA the
timer reads follow a `torch.cuda.synchronize()`, so each step's queued kernels count in its time.

Prints one JSON line. `flops_per_step` is counted analytically (`benchmarks.common.step_flops`):

    dense     = 6 · N_matmul · B · T,   N_matmul = L·(2·D² + 2·D·Hkv·Dh + 3·D·F) + D·V
    attention = 3 · L · 2 · (2 · B · T² · D)
    adapters  = 6 · S · 2·E·D + 6 · N_img · (256·D + 3·D²)      (S patches in all)

over every position (padding included; the LM head over all B·T positions; attention over the full
T×T square of every row, masked pairs included). `--max-tokens-per-row` packs the examples into
rows as `data.max_tokens_per_row` does (`rows` and `padded_positions` show the batch's shape,
`real_tokens` the unpadded positions; `tokens_per_s` counts real tokens). `matmul_flops` is a `torch.mm` on the same
device, in the same dtype and thread count,
timed in the same run (2048² on the CPU, 8192² on CUDA; `--matmul-size` overrides): one probe of 3
products after every timed step, so steps and probes see the same load on a shared machine.
`flops_ratio = achieved_flops / matmul_flops` compares the medians; `flops_ratio_best` compares the
fastest step with the fastest probe (the least disturbed of each).
`peak_rss_mb` is the process's peak RSS during the warm-up and timed steps, less the probe's three
matrices when they are on the CPU; `rss_before_steps_mb` is the same before the first step
(libraries, model, batch). `device` names the CPU model or the GPU.

On CUDA also: `peak_gpu_mem_mb` = `torch.cuda.max_memory_allocated()` over the warm-up and timed steps
(reset just before them) and `gpu_mem_before_steps_mb` = the allocated memory then, both less the
probe's matrices; `mfu = achieved_flops / peak_bf16_flops`, the GPU's dense bf16 tensor-core peak from
its data sheet (`benchmarks.common.PEAK_BF16_FLOPS`: 989e12 for H100 SXM and H200, 756e12 for H100
PCIe, 312e12 for A100; None for other GPUs). It is against the bf16 peak whatever `--dtype` is, so an
fp32 run's `mfu` is low by design; `flops_ratio` compares it with the fp32 matmul instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    DTYPES,
    MatmulProbe,
    TrainStep,
    benchmark_tokenizer,
    device_name,
    device_sync,
    median,
    peak_bf16_flops,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    step_flops,
    synthetic_batch,
    time_steps,
)
from unimodal.config import PRESETS, ModelConfig
from unimodal.model import UniModalModel

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
    parser.add_argument("--compile", nargs="?", const="model", default=None, choices=("model", "layers"),
                        help="torch.compile the whole model (cold: 1-3 min on 2 cores), or with 'layers' each "
                             "decoder layer as training's deepspeed.compile does (cold: 20-40 s)")
    parser.add_argument("--hidden-size", type=int, default=None, help="override the preset's width")
    parser.add_argument("--caption-tokens", type=int, default=12)
    parser.add_argument("--vqa-turns", type=int, default=1, help="QA pairs per VQA sequence (data.vqa_turns)")
    parser.add_argument("--max-tokens-per-row", type=int, default=0,
                        help="pack the examples into rows of this many positions (data.max_tokens_per_row; "
                             "0 = one example per row)")
    parser.add_argument("--length-multiple", type=int, default=1, help="pad rows to a multiple (data.length_multiple)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the reference torch.mm; default 2048 on cpu, 8192 on cuda")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where model, batch and probe run (cuda: the current GPU)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: no CUDA device is available (torch {torch.__version__}, "
                     f"built with CUDA {torch.version.cuda}); use --device cpu")
    if args.compile:
        args.warmup = max(args.warmup, 3)  # the first calls compile (and may recompile once)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.vqa_turns < 1 or args.max_tokens_per_row < 0 or args.length_multiple < 1:
        parser.error("--vqa-turns and --length-multiple must be >= 1, --max-tokens-per-row >= 0")
    if args.matmul_size is not None and args.matmul_size < 1:
        parser.error("--matmul-size must be >= 1")
    return args


def run(preset: str, batch_size: int, dtype: str = "fp32", steps: int = 10, warmup: int = 3,
        compile: str | None = None, caption_tokens: int = 12, seed: int = 0, matmul_size: int | None = None,
        device: str = "cpu", vqa_turns: int = 1, max_tokens_per_row: int = 0, hidden_size: int | None = None,
        length_multiple: int = 1) -> dict:
    """Build, time and measure one configuration; returns the result dict (threads already set).
    `compile`: None (eager), "model" or "layers". `matmul_size` None takes the device's default
    (`benchmarks.common.MATMUL_SIZE`). `hidden_size` overrides the preset's width."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    torch.manual_seed(seed)
    load_before = os.getloadavg()[0]
    tokenizer = benchmark_tokenizer()
    config = ModelConfig.preset(preset, **({"hidden_size": hidden_size} if hidden_size else {}))
    if tokenizer.vocab_size > config.vocab_size:
        config.vocab_size = tokenizer.vocab_size
    model = UniModalModel(config).to(device)  # built on the CPU first: the same weights on every device
    batch = synthetic_batch(config, tokenizer, batch_size, caption_tokens, seed, vqa_turns, max_tokens_per_row,
                            length_multiple).to(device)
    num_rows, seq_len = (int(n) for n in batch.input_ids.shape)
    step = TrainStep(model, batch, DTYPES[dtype], compile=compile, seed=seed)  # optimizer after the move
    probe = MatmulProbe(DTYPES[dtype], matmul_size, device=device)
    probe_mb = probe.nbytes / 2**20
    host_probe_mb = 0.0 if on_cuda else probe_mb  # on CUDA the probe's matrices are GPU memory, not RSS
    reset_peak_rss()
    rss_before = rss_mb() - host_probe_mb
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        gpu_before = torch.cuda.memory_allocated(device) / 2**20 - probe_mb
    times = time_steps(step, steps, warmup, between=probe, sync=device_sync(device))
    peak = peak_rss_mb() - host_probe_mb
    seconds = median(times)
    matmul = median(probe.rates)
    # the work asked of the kernels: every row at the batch's length, padding and masked pairs included
    flops = step_flops(config, num_rows, seq_len, batch.num_images, int(batch.image_num_tokens.sum()))
    achieved = flops.total / seconds
    name = device_name(device)
    gpu = {}
    if on_cuda:
        peak_flops = peak_bf16_flops(name)
        gpu = {
            "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 - probe_mb,
            "gpu_mem_before_steps_mb": gpu_before,
            "peak_bf16_flops": peak_flops,
            "mfu": achieved / peak_flops if peak_flops else None,
        }
    return {
        "benchmark": "train_throughput",
        "preset": preset,
        "dtype": dtype,
        "device_type": device.type,
        "device": name,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "vqa_turns": vqa_turns,
        "max_tokens_per_row": max_tokens_per_row,
        "rows": num_rows,
        "padded_positions": batch.input_ids.numel(),
        "real_tokens": batch.num_tokens,
        "num_images": batch.num_images,
        "params": model.num_parameters(),
        "samples_per_s": batch_size / seconds,
        "tokens_per_s": batch.num_tokens / seconds,
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
        "matmul_size": probe.size,
        "flops_ratio": achieved / matmul,
        "flops_ratio_best": flops.total / min(times) / max(probe.rates),
        **gpu,
        "optimizer": f"torch.optim.AdamW({step.optimizer_kind})",
        "compile": compile,
        "hidden_size": config.hidden_size,
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
                 args.caption_tokens, args.seed, args.matmul_size, args.device, args.vqa_turns,
                 args.max_tokens_per_row, args.hidden_size, args.length_multiple)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
