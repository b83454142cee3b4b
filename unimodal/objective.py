"""The training objective of joint training, apart from the network: noising, targets and losses.

    loss = lm_loss_weight · lm_loss + denoise_loss_weight · denoise_loss     (Transfusion §3.2, λ = 5)

`lm_loss` is the token-mean cross-entropy over the labelled positions; `denoise_loss` the MSE between
the predicted and the target per-patch values, averaged per media item and then over the target
items. Both are means, so losses of several parts of one batch merge exactly (`merge_losses`,
weighted by what each part averages over).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .diffusion import make_process
from .embeddings import patch_owner, patchify_items, shape_groups
from .layout import IGNORE_INDEX, Batch
from .model import UniModalOutput


@dataclass
class Noised:
    """A batch's media items noised for training (items in batch order)."""

    images: list[torch.Tensor]  # N items (C, H, W), noised
    timesteps: torch.Tensor  # (N,) t in [0, 1]; 0 = clean
    targets: list[torch.Tensor]  # N items (C, H, W): what the denoise head must predict
    weights: torch.Tensor | None = None  # (N,) weight of each item's squared error (the process's loss_weight)


@dataclass
class Losses:
    lm_loss: torch.Tensor
    denoise_loss: torch.Tensor
    loss: torch.Tensor
    num_lm_tokens: int = 0  # labelled positions behind lm_loss
    num_target_images: int = 0  # items behind denoise_loss


class Objective:
    """Noises media items and scores a `UniModalModel`'s predictions (see the module docstring).

    Target items (generation) get a time from the process's training distribution (flow matching:
    logit-normal / uniform, shifted; `unimodal.diffusion`); conditioning items (those that precede
    their text) get t ~ U[0, condition_max_noise] (0 = clean, what inference gives).
    """

    def __init__(self, config: ModelConfig):
        self.config = config
        self.process = make_process(config)

    def noise(self, latents: Sequence[torch.Tensor], is_target: torch.Tensor,
              generator: torch.Generator | None = None) -> Noised:
        """Draws from `generator` (CPU): per shape group, the noise, then the times."""
        num = len(latents)
        groups = shape_groups(latents)
        noise = [torch.randn((len(g), *latents[g[0]].shape), generator=generator, dtype=torch.float32) for g in groups]
        shifts = [self.process.shift_for(item.dim() == 4) for item in latents]  # clips are (C, F, H, W)
        t_target = self.process.sample_time(num, generator, shift=None if None in shifts else torch.tensor(shifts))
        t_condition = torch.rand(num, generator=generator) * self.config.condition_max_noise
        device = latents[0].device if num else torch.device("cpu")
        timesteps = torch.where(is_target.cpu(), t_target, t_condition).to(device)
        noised: list[torch.Tensor] = [None] * num  # type: ignore[list-item]
        targets: list[torch.Tensor] = [None] * num  # type: ignore[list-item]
        for group, drawn in zip(groups, noise):  # one stacked tensor per shape
            x0 = torch.stack([latents[i] for i in group])
            drawn, t = drawn.to(x0), timesteps[group]
            for row, (x, y) in enumerate(zip(self.process.add_noise(x0, drawn, t), self.process.target(x0, drawn, t))):
                noised[group[row]], targets[group[row]] = x, y
        return Noised(noised, timesteps, targets, self.process.loss_weight(timesteps))

    def losses(self, output: UniModalOutput, batch: Batch, targets: Sequence[torch.Tensor] | None,
               weights: torch.Tensor | None = None) -> Losses:
        """The losses of one batch; `weights` (N,) scale each item's squared error (`Noised.weights`:
        1 for velocity prediction; None = 1)."""
        cfg = self.config
        num_lm_tokens = int((batch.lm_labels != IGNORE_INDEX).sum())
        logits = output.lm_logits
        lm_loss = (F.cross_entropy(logits.flatten(0, 1).float(), batch.lm_labels.flatten(), ignore_index=IGNORE_INDEX)
                   if num_lm_tokens else logits.sum() * 0)
        is_target = batch.image_is_target
        num_targets = int(is_target.sum()) if targets is not None and batch.num_images else 0
        if num_targets == 0:
            denoise_loss = output.denoise_pred.sum() * 0  # keeps every parameter in the graph (DeepSpeed/ZeRO)
        else:
            target = patchify_items(targets, cfg.patch_size, cfg.patch_frames).to(output.denoise_pred.device)  # (S, E)
            per_patch = (output.denoise_pred.float() - target.float()).pow(2).mean(-1)  # (S,)
            sizes = batch.image_grids.prod(-1)
            per_item = torch.zeros(batch.num_images, device=per_patch.device).index_add(
                0, patch_owner(batch.image_grids), per_patch) / sizes  # (N,)
            if weights is not None:
                per_item = per_item * weights.to(per_item.device)
            denoise_loss = per_item[is_target].mean()
        loss = cfg.lm_loss_weight * lm_loss + cfg.denoise_loss_weight * denoise_loss
        return Losses(lm_loss, denoise_loss, loss, num_lm_tokens, num_targets)

    def merge(self, parts: Sequence[Losses]) -> Losses:
        """The losses the union of `parts` (of one batch) would have had."""
        if len(parts) == 1:
            return parts[0]
        num_tokens = sum(p.num_lm_tokens for p in parts)
        num_images = sum(p.num_target_images for p in parts)
        # A part without labels (or targets) adds its zero-valued loss, which keeps every parameter
        # in the graph as a single forward does.
        lm_loss = sum(p.lm_loss * (p.num_lm_tokens / num_tokens if num_tokens else 1.0) for p in parts)
        denoise_loss = sum(p.denoise_loss * (p.num_target_images / num_images if num_images else 1.0) for p in parts)
        loss = self.config.lm_loss_weight * lm_loss + self.config.denoise_loss_weight * denoise_loss
        return Losses(lm_loss, denoise_loss, loss, num_tokens, num_images)


__all__ = ["Losses", "Noised", "Objective"]
