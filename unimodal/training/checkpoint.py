"""Atomic, resumable checkpoints.

    checkpoints/
      latest                      the tag of the newest complete checkpoint (replaced atomically)
      step_00000200/              one complete checkpoint
        mp_rank_00_model_states.pt | zero_pp_rank_*_{model,optim}_states.pt   DeepSpeed's part
        trainer_state_rank00000.pt   step, data position, RNG states (python, numpy, torch, noise
                                     generator), per rank
        ema.pt                       EMA weights (identical on every rank; written by rank 0)
        meta.json                    written last: a folder without it is not a checkpoint
      .tmp-step_00000300/         being written (ignored, removed at the next start)

How a save commits: every rank writes into `.tmp-<tag>`; after a barrier rank 0 writes meta.json,
renames the folder to `<tag>` and only then replaces `latest` (write a temp file, `os.replace`).
A process killed at any point leaves `latest` on the previous complete checkpoint. Old checkpoints
are renamed to `.trash-<tag>` before deletion, so a half-deleted one is never picked up either.
A shared filesystem across nodes is assumed (DeepSpeed's default checkpoint layout assumes it too).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import Engine

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
EMA_FILE = "ema.pt"
TAG_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# Fault injection for tests: seconds to sleep after the files are written and before the commit,
# so a test can SIGKILL the process while a checkpoint is half-done.
PAUSE_ENV = "UNIMODAL_CHECKPOINT_PAUSE_S"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def trainer_state_file(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


# ------------------------------------------------------------------------------------ RNG states
def capture_rng(noise_generator: torch.Generator) -> dict[str, Any]:
    """Every random stream the loop can touch, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "noise_generator": noise_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], noise_generator: torch.Generator) -> None:
    random.setstate(_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate needs tuples; a round trip through some serialisers gives lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------------------ the folder
def is_complete(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and (folder / META).is_file()


def complete_checkpoints(save_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (by step)."""
    if not save_dir.is_dir():
        return []
    found = [p for p in save_dir.iterdir() if p.name.startswith(TAG_PREFIX) and is_complete(p)]
    return sorted(found, key=lambda p: json.loads((p / META).read_text())["step"])


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one, else None."""
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST
    if pointer.is_file():
        candidate = save_dir / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
        log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one",
                    pointer, candidate.name)
    found = complete_checkpoints(save_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, save_dir: Path) -> Path | None:
    """The checkpoint folder to resume from, per `checkpoint.resume` ("auto", "never" or a path)."""
    if resume == "never":
        if complete_checkpoints(save_dir):
            raise ValueError(f"{save_dir} already holds checkpoints and checkpoint.resume=never; use "
                             "checkpoint.resume=auto to continue, or another output_dir")
        return None
    if resume == "auto":
        return latest_checkpoint(save_dir)
    path = Path(resume)
    if is_complete(path):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"checkpoint.resume={resume!r}: no complete checkpoint there")
    return found


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        descriptor = os.open(path, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(folder: Path) -> None:
    """Rename away first (atomic), then delete: a half-deleted folder never looks like a checkpoint."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


class Checkpointer:
    """Saves and loads complete checkpoints of one run under `save_dir`.

    Args:
        save_dir: the run's checkpoints/ folder.
        engine: the DeepSpeed engine (its collectives and checkpoint files).
        keep: newest complete checkpoints to keep.
    """

    def __init__(self, save_dir: str | Path, engine: Engine, keep: int):
        self.save_dir = Path(save_dir)
        self.engine = engine
        self.keep = keep
        self.rank = engine.dist.rank
        self.extra_files: dict[str, str] = {}  # written into every checkpoint (e.g. the resolved config.yaml)

    def remove_stale(self) -> None:
        """Delete leftovers of interrupted saves (rank 0, before training starts)."""
        if self.rank == 0 and self.save_dir.is_dir():
            for leftover in self.save_dir.iterdir():
                if leftover.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                    log.info("removing an interrupted checkpoint write: %s", leftover)
                    (shutil.rmtree if leftover.is_dir() else os.remove)(leftover)
        self.engine.barrier()

    def save(self, step: int, trainer_state: dict[str, Any], ema_state: dict[str, Any] | None) -> Path:
        """Write checkpoint `step` on every rank and commit it; returns its folder."""
        tag = tag_for(step)
        staging = self.save_dir / f"{TMP_PREFIX}{tag}"
        started = time.time()
        if self.rank == 0:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        self.engine.barrier()
        self.engine.save_checkpoint(self.save_dir, staging.name)
        torch.save(trainer_state, staging / trainer_state_file(self.rank))
        if self.rank == 0 and ema_state is not None:
            torch.save(ema_state, staging / EMA_FILE)
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause > 0:
            log.warning("%s=%s: pausing before committing %s", PAUSE_ENV, pause, tag)
            time.sleep(pause)
        self.engine.barrier()
        final = self.save_dir / tag
        if self.rank == 0:
            meta = {"step": step, "tag": tag, "world_size": self.engine.dist.world_size,
                    "zero_stage": self.engine.zero_stage, "has_ema": ema_state is not None,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            for name, text in self.extra_files.items():
                (staging / name).write_text(text)
            (staging / META).write_text(json.dumps(meta, indent=2))
            _fsync_tree(staging)
            if final.exists():
                _remove(final)
            os.replace(staging, final)
            _atomic_write_text(self.save_dir / LATEST, tag)
            self._prune(keep_also=final)
        self.engine.barrier()
        log.info("checkpoint %s written in %.1fs", final, time.time() - started)
        return final

    def _prune(self, keep_also: Path) -> None:
        for old in complete_checkpoints(self.save_dir)[: -self.keep]:
            if old != keep_also:
                _remove(old)

    def load(self, folder: Path, ema=None) -> dict[str, Any] | None:
        """Restore DeepSpeed state (and EMA) from a complete checkpoint folder on every rank; returns
        this rank's trainer state, or None when the checkpoint was written by another world size."""
        meta = json.loads((folder / META).read_text())
        self.engine.load_checkpoint(folder.parent, folder.name)
        if ema is not None:
            if (folder / EMA_FILE).is_file():
                ema.load_state_dict(torch.load(folder / EMA_FILE, map_location="cpu", weights_only=True))
            else:
                log.warning("%s has no EMA weights: the EMA restarts from the current weights", folder)
        state_path = folder / trainer_state_file(self.rank)
        if meta["world_size"] != self.engine.dist.world_size or not state_path.is_file():
            log.warning("%s was written by %d processes, this run has %d: data position and RNG streams "
                        "restart from the seed", folder, meta["world_size"], self.engine.dist.world_size)
            return None
        return torch.load(state_path, map_location="cpu", weights_only=True)
