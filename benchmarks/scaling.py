"""How training-step time and peak memory grow with the number of image tokens and with batch size,
next to what the analytic FLOP model predicts.

    python benchmarks/scaling.py --preset tiny --out runs/scaling
    python benchmarks/scaling.py --preset tiny --image-tokens 64 256 1024 --batch-sizes 1 4 16 32

Two sweeps over a random model of the preset (same step as `train_throughput.py`: noise, forward,
backward, fused AdamW; plain PyTorch, one process):

* image tokens: patch positions per image P ∈ --image-tokens, reached by changing the image size at the
  preset's patch size (tiny: 32, 64, 128 px → 64, 256, 1024 tokens), at --sweep-batch-size sequences;
* batch: --batch-sizes sequences at the preset's own image size.

Prints one JSON line per point and writes `scaling.jsonl` and `scaling.png` into --out. The prediction
is `flops_per_step / rate`, with `rate` the FLOP/s achieved at the sweep's largest point (so the
curve shows how much of the growth the FLOP model explains: small points above it pay fixed per-step
costs, as in Python and the optimizer); the plot also draws the ideal `flops_per_step / matmul_flops`.
The matmul probe (`benchmarks.common.MatmulProbe`) runs between steps as in `train_throughput.py`.
Peak memory is the process's peak RSS, reset before each point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    DTYPES,
    MatmulProbe,
    TrainStep,
    benchmark_tokenizer,
    median,
    peak_rss_mb,
    reset_peak_rss,
    step_flops,
    synthetic_batch,
    time_steps,
)
from unimodal.config import PRESETS, ModelConfig
from unimodal.model import UniModalModel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--image-tokens", type=int, nargs="*", default=[64, 256, 1024],
                        help="patch positions per image (perfect squares)")
    parser.add_argument("--sweep-batch-size", type=int, default=4, help="sequences per step in the image sweep")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: all cores")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--out", default=None, help="folder for scaling.jsonl and scaling.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the reference torch.mm")
    args = parser.parse_args(argv)
    for tokens in args.image_tokens:
        if tokens <= 0 or math.isqrt(tokens) ** 2 != tokens:
            parser.error(f"--image-tokens {tokens} is not a positive perfect square")
    if min(args.batch_sizes + [args.sweep_batch_size]) < 1 or args.steps < 1:
        parser.error("batch sizes and --steps must be >= 1")
    return args


def config_with_image_tokens(config: ModelConfig, num_image_tokens: int) -> ModelConfig:
    """The preset with the image size changed so one image covers `num_image_tokens` patches."""
    side = math.isqrt(num_image_tokens)
    image_size = side * config.patch_size * config.downsample_factor
    return replace(config, image_size=image_size,
                   max_position_embeddings=max(config.max_position_embeddings, 2 * num_image_tokens + 64))


def measure_point(config: ModelConfig, batch_size: int, args: argparse.Namespace, tokenizer,
                  probe: MatmulProbe) -> dict:
    """Time one (config, batch size); the matmul probe runs between steps (see train_throughput)."""
    torch.manual_seed(args.seed)
    model = UniModalModel(config)
    batch = synthetic_batch(config, tokenizer, batch_size, seed=args.seed)
    step = TrainStep(model, batch, DTYPES[args.dtype], seed=args.seed)
    probe.rates.clear()
    reset_peak_rss()
    seconds = median(time_steps(step, args.steps, args.warmup, between=probe))
    peak = peak_rss_mb() - probe.nbytes / 2**20
    seq_len = int(batch.input_ids.shape[1])
    flops = step_flops(config, batch_size, seq_len, batch.num_images)
    return {
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_image_tokens": config.num_image_tokens,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "seconds_per_step": seconds,
        "peak_rss_mb": peak,
        "flops_per_step": flops.total,
        "flops_attention": flops.attention,
        "achieved_flops": flops.total / seconds,
        "matmul_flops": median(probe.rates),
    }


def add_prediction(point: dict, reference: dict) -> None:
    """The FLOP model's time at the rate the reference point (the sweep's largest) achieved, and at the
    measured matmul rate."""
    point["predicted_seconds"] = point["flops_per_step"] / reference["achieved_flops"]
    point["ideal_seconds"] = point["flops_per_step"] / point["matmul_flops"]
    point["flops_ratio"] = point["achieved_flops"] / point["matmul_flops"]


def plot(sweeps: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_x = {"image_tokens": ("num_image_tokens", "image tokens per sequence (P)"),
              "batch": ("batch_size", "batch size (sequences)")}
    sweeps = {name: points for name, points in sweeps.items() if points}
    fig, axes = plt.subplots(2, len(sweeps), figsize=(5.5 * len(sweeps), 7), squeeze=False)
    for col, (name, points) in enumerate(sweeps.items()):
        key, label = axes_x[name]
        x = [p[key] for p in points]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(x, [p["seconds_per_step"] for p in points], "o-", label="measured")
        top.plot(x, [p["predicted_seconds"] for p in points], "s--", label="FLOP model (rate of largest point)")
        top.plot(x, [p["ideal_seconds"] for p in points], ":", color="grey", label="FLOP model at matmul peak")
        top.set_ylabel("seconds per training step")
        bottom.plot(x, [p["peak_rss_mb"] for p in points], "o-", color="tab:red")
        bottom.set_ylabel("peak RSS (MiB)")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
        top.set_title(f"{name} sweep" + (f" (batch {points[0]['batch_size']})" if name == "image_tokens" else
                                          f" ({points[0]['num_image_tokens']} image tokens)"))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tokenizer = benchmark_tokenizer()
    base = ModelConfig.preset(args.preset)
    probe = MatmulProbe(DTYPES[args.dtype], args.matmul_size)
    common = {"benchmark": "scaling", "preset": args.preset, "dtype": args.dtype,
              "threads": torch.get_num_threads(), "distributed": "none (plain PyTorch, one process)"}
    plan = {"image_tokens": [(config_with_image_tokens(base, p), args.sweep_batch_size) for p in args.image_tokens],
            "batch": [(base, b) for b in args.batch_sizes]}
    sweeps: dict[str, list[dict]] = {}
    results = []
    for sweep, points in plan.items():
        sweeps[sweep] = [{**common, "sweep": sweep, **measure_point(config, batch_size, args, tokenizer, probe)}
                         for config, batch_size in points]
        if not points:
            continue
        reference = max(sweeps[sweep], key=lambda point: point["flops_per_step"])
        for point in sweeps[sweep]:
            add_prediction(point, reference)
            results.append(point)
            print(json.dumps(point), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "scaling.jsonl", "w") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in results)
        plot(sweeps, out / "scaling.png",
             f"unimodal {args.preset} training step, {args.dtype}, {torch.get_num_threads()} thread(s)")
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
