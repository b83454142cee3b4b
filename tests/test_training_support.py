"""Shared pieces of the training tests: tiny shards written once per session and a debug-size run
config (16x16 images, 2 layers, a few steps). No tests live here."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """160 train and 8 eval synthetic samples at 16 px, 40 per shard."""
    from unimodal.data.synthetic import WorldConfig
    from unimodal.data.write_shards import write_synthetic_shards

    root = tmp_path_factory.mktemp("shards")
    world = WorldConfig(image_size=IMAGE_SIZE)
    write_synthetic_shards(root / "train", 160, seed=0, split="train", world_config=world, max_count=40,
                           progress=False)
    write_synthetic_shards(root / "eval", 8, seed=0, split="eval", world_config=world, max_count=40, progress=False)
    return root


def run_args(shard_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """argv for `unimodal.training.train.main`: a debug model trained for 4 steps, checkpoints every 2."""
    return [
        "model.preset=debug", f"output_dir={output_dir}", f"data.train_shards={shard_dir / 'train'}",
        f"logging.sample_shards={shard_dir / 'eval'}", "data.batch_size=4", "data.num_workers=0",
        "data.shuffle_buffer=32", "tokenizer.vocab_size=128", "tokenizer.max_samples=20",
        "schedule.total_steps=4", "schedule.warmup_steps=1", "checkpoint.every=2", "checkpoint.keep=5",
        "logging.every=1", "logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false",
        "logging.sample_every=-1", "ema.decay=0.9", "optimizer.lr=1e-3", *extra,
    ]


def losses_by_step(run_dir: Path) -> dict[int, tuple[float, float, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["lm_loss"], r["denoise_loss"]) for r in records if "loss" in r}


def events(run_dir: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == kind]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a training subprocess: no inherited rank variables, one thread per rank."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env
