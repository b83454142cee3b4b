"""Exponential moving average of the trainable weights, used for sampling and export.

We use diffusers' `EMAModel(params, decay, foreach=True)`. Its decay is warmed up as
min(decay, (1 + s) / (10 + s)) even without `use_ema_warmup` (0 at the first update), so early
EMA weights follow the model closely and a short run still exports something sensible.

ZeRO-3 partitions parameters (each rank holds a slice; `param.data` is empty). We keep a *full*
fp32 shadow on every rank and update it inside `Engine.gathered()`; all ranks therefore hold the
same EMA, rank 0 checkpoints it and every rank loads it. That costs one all-gather per update
(`ema.update_every` spaces them out) and a full fp32 copy per rank; the export needs no extra
gather. The shadow is always fp32, also when the engine trains bf16 weights: a bf16 average at
decay 0.999 would lose most updates to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from .engine import Engine


class EMA:
    """EMA of `engine`'s trainable parameters (names in `named_parameters()` order)."""

    def __init__(self, engine: Engine, decay: float, update_every: int = 1):
        self.engine = engine
        self.update_every = update_every
        self.names = [name for name, _ in engine.named_parameters()]
        with engine.gathered():
            self.ema = EMAModel(self._params(), decay=decay, foreach=True)
        self.ema.shadow_params = [p.float() for p in self.ema.shadow_params]

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.engine.named_parameters()]

    def update(self, step: int) -> None:
        """Call after optimizer step `step` (1-based) on every rank."""
        if step % self.update_every:
            return
        with self.engine.gathered():
            self.ema.step(self._params())

    @property
    def decay(self) -> float:
        return float(self.ema.cur_decay_value or 0.0)

    def weights(self) -> dict[str, torch.Tensor]:
        """EMA weights by parameter name (fp32, CPU)."""
        return {name: shadow.detach().cpu().clone() for name, shadow in zip(self.names, self.ema.shadow_params)}

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the engine's own module with EMA weights inside the block, then put the trained
        weights back exactly. A collective under ZeRO-3: every rank must enter."""
        with self.engine.gathered(writable=True):
            params = self._params()
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            yield
        finally:
            with self.engine.gathered(writable=True):
                self.ema.restore(self._params())

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        state = self.ema.state_dict()
        state["shadow_params"] = [p.detach().cpu() for p in state["shadow_params"]]
        state["names"] = list(self.names)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        names = state.pop("names", self.names)
        if list(names) != self.names:
            raise ValueError("the checkpoint's EMA tracks different parameters than this model "
                             f"({len(names)} vs {len(self.names)}); was the model config changed?")
        device = self.ema.shadow_params[0].device if self.ema.shadow_params else "cpu"
        self.ema.load_state_dict(state)
        self.ema.shadow_params = [p.to(device=device, dtype=torch.float32) for p in self.ema.shadow_params]
