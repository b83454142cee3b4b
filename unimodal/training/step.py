"""One training step, the one the training loop and the benchmarks both run.

Per micro-batch: encode the media items with the frozen codec (unless the batch holds cached
latents), noise them with the objective from the step's own generator, forward, score, backward,
optimizer step. `engine` is anything with `forward(batch, timesteps)`, `backward(loss)` and
`step()`: the DeepSpeed `Engine` in training, `PlainEngine` (a torch optimizer) in the benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from unimodal.codecs import encode_items
from unimodal.layout import Batch
from unimodal.objective import Losses, Objective


class TrainStep:
    """Args:
        engine: runs the model (`forward`), `backward` and `step`.
        objective: noising and losses (`unimodal.objective.Objective`).
        codec: the frozen latent codec, or None when batches hold latents (`latents_cached`).
        generator: the noise/time stream (CPU); checkpointed by the loop, so a resumed run draws
            exactly the noise an uninterrupted one would.
    """

    def __init__(self, engine: Any, objective: Objective, codec: Any, generator: torch.Generator,
                 latents_cached: bool = False):
        self.engine = engine
        self.objective = objective
        self.codec = codec
        self.generator = generator
        self.latents_cached = latents_cached

    def losses(self, batch: Batch) -> Losses:
        """Encode, noise, forward and score one micro-batch (already on the engine's device)."""
        with torch.no_grad():
            latents = batch.images if self.latents_cached else encode_items(self.codec, batch.images)
        noised = self.objective.noise([latent.float() for latent in latents], batch.image_is_target, self.generator)
        output = self.engine.forward(batch.with_images(noised.images), noised.timesteps)
        return self.objective.losses(output, batch, noised.targets, noised.weights)

    def __call__(self, batch: Batch, skip: Callable[[Losses], bool] | None = None) -> tuple[Losses, bool]:
        """One micro-batch: losses, then backward and step unless `skip(losses)` says not to (the loop
        skips a non-finite loss on every rank before backward). Returns (losses, stepped)."""
        losses = self.losses(batch)
        if skip is not None and skip(losses):
            return losses, False
        self.engine.backward(losses.loss)
        self.engine.step()
        return losses, True


class PlainEngine:
    """A model and a torch optimizer behind the `Engine` calls `TrainStep` makes (benchmarks, tests).
    `dtype` bfloat16 runs the forward under `torch.autocast` over fp32 weights, as the DeepSpeed
    engine's `bf16_autocast` does."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dtype: torch.dtype = torch.float32,
                 forward: Callable | None = None):
        self.model = model
        self.optimizer = optimizer
        self.dtype = dtype
        self._forward = forward or model

    def forward(self, *args, **kwargs):
        device_type = next(self.model.parameters()).device.type
        context = (torch.autocast(device_type, dtype=torch.bfloat16) if self.dtype == torch.bfloat16
                   else contextlib.nullcontext())
        with context:
            return self._forward(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


__all__ = ["PlainEngine", "TrainStep"]
