"""Packed rows against one example per row, on the main job's own batches: seconds per step,
padding and rows, for each `data.max_tokens_per_row`.

    python benchmarks/packing.py --threads 2                      # tiny main-job settings
    python benchmarks/packing.py --max-tokens 0 256 384 --num-batches 8

The batches are what the training reader makes from synthetic shards with the main job's data
settings (configs/tiny.yaml: batch 64, task weights, 8 VQA turns, `length_multiple` 16); each
setting collates the *same* examples (0 = one example per row, padded to the longest, as without
packing). A step is the training loop's own (`unimodal.training.step.TrainStep`: noise, forward,
losses, backward, AdamW) on the `tiny` model at the main job's width, bf16 autocast, decoder
layers compiled as `deepspeed.compile: layers` does. Each setting first runs every batch once
untimed (compiling for its shapes); then the settings take turns for `--repeats` timed passes
each (so a change in the machine's load hits them alike); the median step is reported.

Prints one JSON line: per setting, `seconds_per_step`, `rows`, `positions` (padded B·T per batch,
mean), `real_tokens` and `padding` (the share of positions that are padding), plus the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import device_name, make_optimizer, world_tokenizer
from unimodal.config import ModelConfig
from unimodal.data.config import DataConfig
from unimodal.data.reader import build_train_loader
from unimodal.data.write_shards import write_synthetic_shards
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel
from unimodal.objective import Objective
from unimodal.tokenizer import Tokenizer
from unimodal.training.step import PlainEngine, TrainStep

MAIN_JOB_DATA = dict(batch_size=64, task_weights={"caption": 0.25, "vqa": 0.3, "generation": 0.45}, vqa_turns=8,
                     caption_dropout=0.1, length_multiple=16, num_workers=0)


def main_job_examples(num_batches: int, seed: int = 0) -> tuple[list[list], Tokenizer, SequenceLayout]:
    """`num_batches` lists of examples, as the training reader makes them for the main job."""
    tokenizer = world_tokenizer(512)
    layout = SequenceLayout(tokenizer, 4)
    batches = []
    with tempfile.TemporaryDirectory() as tmp:
        summary = write_synthetic_shards(tmp, num_batches * 64 + 64, seed=seed, max_count=2000, progress=False)
        config = DataConfig(train_shards=summary.pattern, seed=seed, **MAIN_JOB_DATA)
        loader = build_train_loader(config, tokenizer, RecordingLayout(layout, batches))
        for _ in zip(range(num_batches), loader.endless()):
            pass
    return batches[:num_batches], tokenizer, layout


class RecordingLayout:
    """A layout that keeps the example lists it is asked to collate (num_workers=0 only)."""

    def __init__(self, layout: SequenceLayout, record: list):
        self.layout, self.record = layout, record

    def __getattr__(self, name):
        return getattr(self.layout, name)

    def collate(self, examples, pad_to_multiple_of=1):
        self.record.append(list(examples))
        return self.layout.collate(examples, pad_to_multiple_of)


def run(max_tokens: list[int], num_batches: int, repeats: int, hidden_size: int, compile_layers: bool,
        row_multiple: int) -> dict:
    example_batches, tokenizer, layout = main_job_examples(num_batches)
    config = ModelConfig.preset("tiny", hidden_size=hidden_size, vocab_size=tokenizer.vocab_size)
    settings = {}
    for limit in max_tokens:
        batches = [layout.pack(ex, limit, 16, row_multiple) if limit else layout.collate(ex, 16) for ex in example_batches]
        torch.manual_seed(0)
        model = UniModalModel(config).train()
        if compile_layers:
            model.compile_layers()
        optimizer, _ = make_optimizer(model, lr=1e-4)
        step = TrainStep(PlainEngine(model, optimizer, torch.bfloat16), Objective(config), codec=None,
                         generator=torch.Generator().manual_seed(0), latents_cached=True)
        for batch in batches:  # untimed: compile and warm up for every shape
            step(batch)
        settings[limit] = (batches, step, [])
    for _ in range(repeats):  # settings take turns, so a change in the machine's load hits them alike
        for batches, step, times in settings.values():
            for batch in batches:
                start = time.perf_counter()
                step(batch)
                times.append(time.perf_counter() - start)
    results = {}
    for limit, (batches, _, times) in settings.items():
        positions = [b.input_ids.numel() for b in batches]
        real = [b.num_tokens for b in batches]
        results[str(limit)] = {
            "seconds_per_step": round(statistics.median(times), 4),
            "seconds_per_step_min": round(min(times), 4),
            "rows": round(statistics.mean(b.num_rows for b in batches), 1),
            "length": round(statistics.mean(b.input_ids.shape[1] for b in batches), 1),
            "positions": round(statistics.mean(positions), 1),
            "real_tokens": round(statistics.mean(real), 1),
            "padding": round(1 - sum(real) / sum(positions), 3),
            "shapes": len({tuple(b.input_ids.shape) for b in batches}),
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[0, 256, 384, 512],
                        help="data.max_tokens_per_row values to compare (0 = one example per row)")
    parser.add_argument("--num-batches", type=int, default=6, help="distinct main-job batches")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over them")
    parser.add_argument("--hidden-size", type=int, default=192, help="the main job's width")
    parser.add_argument("--row-multiple", type=int, default=1, help="data.row_multiple of the packed settings")
    parser.add_argument("--no-compile", action="store_true", help="eager decoder layers")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = run(args.max_tokens, args.num_batches, args.repeats, args.hidden_size, not args.no_compile,
                  args.row_multiple)
    out = {"benchmark": "packing", "device": device_name("cpu"), "threads": torch.get_num_threads(),
           "batch_size": MAIN_JOB_DATA["batch_size"], "vqa_turns": MAIN_JOB_DATA["vqa_turns"],
           "row_multiple": args.row_multiple, "compile": not args.no_compile, "by_max_tokens_per_row": results,
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "torch": torch.__version__}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
