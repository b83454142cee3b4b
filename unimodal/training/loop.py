"""The training loop: micro-batches in, optimizer steps out, periodic work at step boundaries.

One optimizer step = `gradient_accumulation_steps` micro-batches (DeepSpeed applies the optimizer
at the boundary). Per micro-batch: encode images with the frozen codec, noise them with the
loop's own `torch.Generator` (seeded from the run seed and checkpointed, so a resumed run draws
exactly the noise an uninterrupted one would), forward, backward.

Faults:
- a non-finite loss on any rank skips that micro-batch on every rank (before backward, so the
  weights never see it) and is logged; `faults.max_consecutive_nonfinite` in a row save a
  checkpoint of the last good state and raise `TrainingDiverged`.
- SIGINT/SIGTERM set a flag; all ranks agree on it before the next optimizer step, save a
  checkpoint and return "interrupted". A second signal interrupts immediately.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import Checkpointer, capture_rng, tag_for
from .config import RunConfig
from .ema import EMA
from .engine import Engine
from .metrics import MetricsLogger
from .step import TrainStep

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the last good state was checkpointed."""


# ------------------------------------------------------------------------------------------ signals
class StopSignals:
    """SIGINT/SIGTERM -> `requested = True` (first signal); another one at least `grace_s` later
    raises KeyboardInterrupt. Signals within `grace_s` of the first are ignored: Ctrl-C under
    torchrun reaches a rank twice (from the terminal and forwarded by torchrun)."""

    def __init__(self, grace_s: float = 2.0):
        self.requested = False
        self.name = ""
        self.grace_s = grace_s
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first_at < self.grace_s:
                return
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.requested = True
        self._first_at = time.monotonic()
        self.name = signal.Signals(signum).name
        # A signal sent to the whole process group (SLURM, `kill -- -PGID`) also reaches the data-loader
        # workers. Ours ignore it (data/reader.py), but a worker that dies anyway (a user's own
        # loader) would make torch's SIGCHLD handler raise in the middle of this step. The
        # checkpoint needs no worker, so stop watching.
        if hasattr(signal, "SIGCHLD"):  # a Python no-op, not SIG_DFL: one may already be pending
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        log.warning("%s received: saving a checkpoint at the next step, then stopping "
                    "(send it again, 2 s or more later, to stop at once)", self.name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        try:
            if hasattr(signal, "SIGCHLD"):
                self._previous[signal.SIGCHLD] = signal.getsignal(signal.SIGCHLD)
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals stay with the caller
            self._previous.clear()
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


# --------------------------------------------------------------------------------------- the loop
@dataclass
class _Window:
    """Sums over the micro-batches since the last record."""

    loss: float = 0.0
    lm_loss: float = 0.0
    denoise_loss: float = 0.0
    micro_batches: int = 0
    samples: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, output, batch) -> None:
        self.loss += output.loss.item()
        self.lm_loss += output.lm_loss.item()
        self.denoise_loss += output.denoise_loss.item()
        self.micro_batches += 1
        self.samples += batch.num_examples
        self.tokens += batch.num_tokens


@dataclass
class LoopContext:
    """Everything the loop drives. Built by `unimodal.training.train`."""

    config: RunConfig
    engine: Engine
    ema: EMA | None
    loader: Any  # data.ShardLoader: endless() yields `unimodal.layout.Batch`; state_dict(), `skipped`
    objective: Any  # unimodal.objective.Objective (noising, targets, losses)
    codec: Any  # frozen latent codec on the engine's device
    checkpointer: Checkpointer
    metrics: MetricsLogger
    generator: torch.Generator  # the noise/time stream
    # (every, fn): fn(step) on every rank after each `every`-th step before the last (sample grids,
    # in-training eval); the final step's are the caller's business.
    periodic: list[tuple[int, Callable[[int], None]]] = field(default_factory=list)
    num_nonfinite: int = 0  # total skipped micro-batches (restored on resume)


class TrainingLoop:
    def __init__(self, ctx: LoopContext, start_step: int):
        self.ctx = ctx
        self.step = start_step
        self.consecutive_nonfinite = 0
        self.window = _Window()
        self.last_checkpoint_step = start_step if start_step > 0 else -1
        self.last_postfix: dict[str, float] = {}
        self.step_started = time.perf_counter()
        self.samples_per_s = 0.0  # smoothed, for the progress bar
        self.train_step = TrainStep(ctx.engine, ctx.objective, ctx.codec, ctx.generator, ctx.config.data.latents)

    # ---- one micro-batch ----
    def micro_batch(self, batch):
        """Encode, noise, run, score and (unless some rank's loss is non-finite) backward and step one
        micro-batch: `TrainStep`, the step the benchmarks run too. Returns (losses, stepped).

        Every rank makes exactly one forward and one backward call per micro-batch (packed rows,
        not length buckets), so ZeRO-3's per-call parameter gathers always pair up across ranks."""
        return self.train_step(batch.to(self.ctx.engine.device), skip=self._nonfinite_anywhere)

    def trainer_state(self) -> dict[str, Any]:
        ctx = self.ctx
        return {"step": self.step, "data": ctx.loader.state_dict(), "rng": capture_rng(ctx.generator),
                "num_nonfinite": ctx.num_nonfinite}

    def save_checkpoint(self) -> None:
        ctx = self.ctx
        path = ctx.checkpointer.save(self.step, self.trainer_state(),
                                     ctx.ema.state_dict() if ctx.ema is not None else None)
        self.last_checkpoint_step = self.step
        ctx.metrics.event(self.step, "checkpoint", "", path=str(path))

    # ---- the loop ----
    def run(self, signals: StopSignals) -> str:
        """Train to `schedule.total_steps`. Returns "finished" or "interrupted"."""
        ctx, cfg = self.ctx, self.ctx.config
        total = cfg.schedule.total_steps
        ctx.engine.train()
        batches = self._batches()
        while self.step < total:
            # Ranks agree on a stop between optimizer steps, so the checkpoint is a clean step boundary.
            if ctx.engine.at_step_start() and ctx.engine.all_reduce([float(signals.requested)])[0]:
                ctx.metrics.event(self.step, "interrupted", f"{signals.name or 'a signal'} on some rank: "
                                  f"checkpoint at step {self.step}, then stop")
                self.save_checkpoint()
                return "interrupted"
            batch = next(batches)
            boundary = ctx.engine.is_accumulation_boundary()
            output, stepped = self.micro_batch(batch)
            if not stepped:
                self._skip_nonfinite(output)
                continue
            self.consecutive_nonfinite = 0
            self.window.add(output, batch)
            if boundary:
                self.step += 1
                self._after_step()
        if self.last_checkpoint_step != self.step:
            self.save_checkpoint()
        return "finished"

    def _nonfinite_anywhere(self, losses) -> bool:
        """Whether any rank's loss is non-finite (every rank then skips the micro-batch)."""
        finite = bool(torch.isfinite(losses.loss.detach()))
        return bool(self.ctx.engine.all_reduce([float(not finite)])[0])

    def _batches(self) -> Iterator[Any]:
        """Endless micro-batches, epoch after epoch (the reader raises on an epoch without any)."""
        return iter(self.ctx.loader.endless())

    def _skip_nonfinite(self, output) -> None:
        ctx = self.ctx
        ctx.num_nonfinite += 1
        self.consecutive_nonfinite += 1
        values = {k: getattr(output, k).item() for k in ("loss", "lm_loss", "denoise_loss")}
        ctx.metrics.event(self.step, "nonfinite_loss", f"non-finite loss {values} on some rank: micro-batch "
                          f"skipped ({self.consecutive_nonfinite} in a row)", total=ctx.num_nonfinite)
        limit = ctx.config.faults.max_consecutive_nonfinite
        if self.consecutive_nonfinite >= limit:
            self.save_checkpoint()
            message = (f"{limit} non-finite losses in a row at step {self.step}: training stopped. The last good "
                       f"state is checkpoint {tag_for(self.step)} in {ctx.checkpointer.save_dir}. Lower "
                       "optimizer.lr, raise schedule.warmup_steps or deepspeed.gradient_clipping, or check the "
                       "data, then resume with the same command.")
            ctx.metrics.event(self.step, "stopped", message)
            raise TrainingDiverged(message)

    def _after_step(self) -> None:
        """Periodic work at an optimizer-step boundary (all ranks, same decisions)."""
        ctx, cfg, step = self.ctx, self.ctx.config, self.step
        if ctx.ema is not None:
            ctx.ema.update(step)
        now = time.perf_counter()
        global_batch = (cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps
                        * ctx.engine.dist.world_size)
        rate = global_batch / max(now - self.step_started, 1e-9)
        self.samples_per_s = rate if self.samples_per_s == 0 else 0.9 * self.samples_per_s + 0.1 * rate
        if self.window.micro_batches:
            micro = self.window.micro_batches
            self.last_postfix = {"loss": self.window.loss / micro, "lm": self.window.lm_loss / micro,
                                 "denoise": self.window.denoise_loss / micro}
        ctx.metrics.advance(step, {**self.last_postfix, "samples/s": self.samples_per_s})
        if step % cfg.logging.every == 0 or step == cfg.schedule.total_steps:
            self._record()
        paused = time.perf_counter()
        for every, work in ctx.periodic:
            if every > 0 and step % every == 0 and step < cfg.schedule.total_steps:
                work(step)
        if step % cfg.checkpoint.every == 0:
            self.save_checkpoint()
        # Grids, evals and checkpoints do not count as training time in samples/s.
        self.step_started = time.perf_counter()
        self.window.started += self.step_started - paused

    def _record(self) -> None:
        """Average the window over ranks and write one metrics record."""
        ctx, window = self.ctx, self.window
        sums = ctx.engine.all_reduce([window.loss, window.lm_loss, window.denoise_loss, window.micro_batches,
                                      window.samples, window.tokens], op="sum")
        loss, lm_loss, denoise_loss, micro, samples, tokens = sums
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        record = {"loss": loss / max(micro, 1), "lm_loss": lm_loss / max(micro, 1),
                  "denoise_loss": denoise_loss / max(micro, 1), "lr": ctx.engine.lr,
                  "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed,
                  "nonfinite_total": ctx.num_nonfinite}
        norm = ctx.engine.grad_norm()
        if norm is not None and math.isfinite(norm):
            record["grad_norm"] = norm
        if ctx.ema is not None:
            record["ema_decay"] = ctx.ema.decay
        skipped = Counter()
        for counts in ctx.engine.gather_objects(dict(getattr(ctx.loader, "skipped", {}) or {})):
            skipped.update(counts)
        record.update({f"skipped/{reason}": count for reason, count in sorted(skipped.items())})
        ctx.metrics.record(self.step, record)
        self.window = _Window()
