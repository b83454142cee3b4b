"""Data-loader throughput: synthetic 32x32 PNG shards -> collated `Batch`es, samples/s.

    python benchmarks/data_throughput.py [--workers 0 2] [--num-batches 150] [--batch-size 32]

Prints one JSON line: samples/s of the full training reader (tar read, shuffle, PNG decode, task
mixture, tokenisation, `layout.collate` with the spans) for each worker count, and of
decoding alone (`unimodal.data.reader.iter_samples`, one process) for reference. Timing starts after a few
warm-up batches, so worker start-up is not counted. Wall-clock rates depend on what else runs on the
machine (the load average is printed); `samples_per_cpu_s_0_workers` (the whole pipeline per CPU
second of one process) does not, and bounds what each worker process can deliver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import world_tokenizer
from unimodal.data.config import DataConfig
from unimodal.data.reader import build_train_loader, iter_samples
from unimodal.data.synthetic import WorldConfig
from unimodal.data.write_shards import write_synthetic_shards
from unimodal.layout import SequenceLayout
from unimodal.tokenizer import Tokenizer


def loader_rate(config: DataConfig, tokenizer: Tokenizer, layout: SequenceLayout, warmup: int,
                num_batches: int) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process)."""
    loader = build_train_loader(config, tokenizer, layout)
    samples, start, cpu_start = 0, None, None
    for index, batch in enumerate(loader.endless()):
        if index == warmup:
            start, cpu_start, samples = time.perf_counter(), time.process_time(), 0
        samples += batch.num_examples
        if index == warmup + num_batches - 1:
            return samples / (time.perf_counter() - start), samples / (time.process_time() - cpu_start)
    raise AssertionError("unreachable: endless() does not stop")


def decode_rate(pattern: str, image_size: int, num_samples: int) -> float:
    start, count = time.perf_counter(), 0
    for _ in iter_samples(pattern, image_size):
        count += 1
        if count == num_samples:
            break
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4, help="sets the image tokens per example")
    parser.add_argument("--num-samples", type=int, default=4096, help="samples written to the shards")
    parser.add_argument("--num-batches", type=int, default=150, help="timed batches per worker count")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    args = parser.parse_args(argv)

    tokenizer = world_tokenizer(256)
    layout = SequenceLayout(tokenizer, args.patch_size)
    rates, per_cpu_second = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        summary = write_synthetic_shards(tmp, args.num_samples, max_count=256, progress=False,
                                         world_config=WorldConfig(image_size=args.image_size))
        decode = decode_rate(summary.pattern, args.image_size, min(args.num_samples, 2000))
        for workers in args.workers:
            config = DataConfig(train_shards=summary.pattern, image_size=args.image_size, batch_size=args.batch_size,
                                num_workers=workers, epoch_batches=args.warmup + args.num_batches + 1)
            rate, cpu_rate = loader_rate(config, tokenizer, layout, args.warmup, args.num_batches)
            rates[str(workers)] = round(rate, 1)
            if workers == 0:  # everything runs in this process: a figure that other load does not skew
                per_cpu_second = round(cpu_rate, 1)
    print(json.dumps({
        "benchmark": "data_throughput", "image_size": args.image_size, "format": "png", "batch_size": args.batch_size,
        "num_image_tokens": (args.image_size // args.patch_size) ** 2, "samples_per_s_by_workers": rates,
        "samples_per_cpu_s_0_workers": per_cpu_second, "decode_only_samples_per_s": round(decode, 1),
        "timed_batches": args.num_batches, "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
