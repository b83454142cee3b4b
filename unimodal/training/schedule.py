"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

A picklable callable (not a lambda) for `torch.optim.lr_scheduler.LambdaLR`, so DeepSpeed can
checkpoint the scheduler with the rest of the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """lr factor after `step` optimizer steps (LambdaLR calls it with 0 before the first step)."""

    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # the first step already gets a non-zero lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
