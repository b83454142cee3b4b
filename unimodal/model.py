"""UniModalModel: one decoder over text tokens and noised image patches, with two heads.

Dimension legend: B sequences, T padded length, V vocabulary, D width, N images in the batch,
C/H/W latent channels/height/width, P patches per image, E = C·p·p values per patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone, sync_config_with_backbone
from .config import ModelConfig
from .embeddings import DenoiseHead, PatchEmbed, patchify, unpatchify
from .layout import IGNORE_INDEX, Batch, rope_positions


@dataclass
class UniModalOutput:
    """What `UniModalModel.forward` returns. Losses are None when no targets were given; the counts
    are what each loss averages over, so the losses of several parts can be merged exactly
    (`combine_outputs`, where the per-position predictions are None)."""

    lm_logits: torch.Tensor | None  # (B, T, V)
    denoise_pred: torch.Tensor | None  # (N, C, H, W), a prediction for every image (targets or not)
    lm_loss: torch.Tensor | None = None
    denoise_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    num_lm_tokens: int = 0  # labelled positions behind lm_loss
    num_target_images: int = 0  # images behind denoise_loss


class UniModalModel(nn.Module):
    """A transformers decoder called with `inputs_embeds` and our mixed attention mask."""

    def __init__(self, config: ModelConfig, hf_config=None):
        super().__init__()
        self.config = config
        self.decoder, self.lm_head = build_backbone(config, hf_config)
        if config.backbone_path:
            sync_config_with_backbone(config, self.decoder)
            if self.decoder.get_input_embeddings().num_embeddings < config.vocab_size:
                self._grow_vocabulary(config.vocab_size)
        self.patch_embed = PatchEmbed(config)
        self.denoise_head = DenoiseHead(config)

    def _grow_vocabulary(self, vocab_size: int) -> None:
        """A pretrained LLM extended with our special tokens gets new (mean-initialised) rows."""
        self.decoder.resize_token_embeddings(vocab_size, mean_resizing=True)
        old = self.lm_head
        self.lm_head = nn.Linear(old.in_features, vocab_size, bias=False)
        with torch.no_grad():
            self.lm_head.weight[: old.out_features] = old.weight
            self.lm_head.weight[old.out_features:] = old.weight.mean(0, keepdim=True)

    def compile_layers(self) -> None:
        """`torch.compile` each decoder layer in place ("regional" compilation).

        The layers share one code object, so inductor compiles it once (cold: 20-40 s on 2 CPU
        cores) instead of tracing the whole model (1-3 min, with graph breaks); shapes are traced as
        dynamic because batch parts change length every step. It fuses the elementwise work around
        the matmuls (RMSNorm, rotary, SwiGLU, residuals), which eager mode runs as separate kernels
        (docs/experiments/2026-11-25-benchmarks-cpu-gpu.md). Parameter names and the state dict are unchanged.
        """
        for layer in self.decoder.layers:
            layer.compile(dynamic=True)

    # ---- pieces the sampling code reuses ----
    def embed(self, input_ids: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor,
              image_batch_index: torch.Tensor, image_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with image patches scattered in: (B, T, D), and the time embedding (N, D)."""
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, T, D)
        if latents.shape[0] == 0:
            return embeds, embeds.new_zeros(0, embeds.shape[-1])
        tokens, time = self.patch_embed(latents, timesteps)  # (N, P, D), (N, D)
        rows, columns = self.image_positions(image_batch_index, image_starts, tokens.shape[1])  # (N, P) each
        embeds = embeds.index_put((rows, columns), tokens.to(embeds.dtype))
        return embeds, time

    def image_positions(self, image_batch_index: torch.Tensor, image_starts: torch.Tensor, num_tokens: int):
        """(row, column) index tensors, (N, P) each, of every image's patch positions."""
        offsets = torch.arange(num_tokens, device=image_starts.device)
        columns = image_starts[:, None] + offsets  # (N, P)
        return image_batch_index[:, None].expand_as(columns), columns

    def predict_denoise(self, hidden: torch.Tensor, time: torch.Tensor, image_batch_index: torch.Tensor,
                        image_starts: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Backbone states (B, T, D) -> denoise prediction (N, C, H, W) for every image."""
        channels, height, width = latent_shape[1:]
        num_tokens = (height // self.config.patch_size) * (width // self.config.patch_size)
        rows, columns = self.image_positions(image_batch_index, image_starts, num_tokens)
        patch_hidden = hidden[rows, columns]  # (N, P, D)
        pred = self.denoise_head(patch_hidden, time.to(patch_hidden.dtype))  # (N, P, E)
        return unpatchify(pred, self.config.patch_size, channels, height, width)

    # ---- training / scoring ----
    def forward(self, batch: Batch, timesteps: torch.Tensor, denoise_target: torch.Tensor | None = None,
                ) -> UniModalOutput:
        """Run the batch (its `images` already noised to `timesteps`, shape (N,)).

        Losses: `lm_loss` is token-mean cross-entropy over `batch.lm_labels`; `denoise_loss` is the
        MSE between prediction and `denoise_target`, averaged per image over the images with
        `image_is_target`, then over those images. `loss` weights them by the config.
        """
        cfg = self.config
        embeds, time = self.embed(batch.input_ids, batch.images, timesteps, batch.image_batch_index,
                                  batch.image_starts)  # (B, T, D)
        valid = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)  # padding is masked anyway
        num_patches = (batch.images.shape[-2] // cfg.patch_size) * (batch.images.shape[-1] // cfg.patch_size)
        positions = rope_positions(valid, batch.image_batch_index, batch.image_starts, num_patches,
                                   cfg.image_rope)  # (B, T)
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                              position_ids=positions, use_cache=False).last_hidden_state  # (B, T, D)
        lm_logits = self.lm_head(hidden)  # (B, T, V)
        if batch.num_images:
            denoise_pred = self.predict_denoise(hidden, time, batch.image_batch_index, batch.image_starts,
                                                tuple(batch.images.shape))
        else:
            denoise_pred = hidden.new_zeros(0, *batch.images.shape[1:])
        output = UniModalOutput(lm_logits=lm_logits, denoise_pred=denoise_pred)
        num_lm_tokens = int((batch.lm_labels != IGNORE_INDEX).sum())
        has_lm = num_lm_tokens > 0
        if has_lm or denoise_target is not None:
            output.lm_loss = (F.cross_entropy(lm_logits.flatten(0, 1).float(), batch.lm_labels.flatten(),
                                              ignore_index=IGNORE_INDEX) if has_lm else lm_logits.sum() * 0)
            output.denoise_loss = self.denoise_loss(denoise_pred, denoise_target, batch.image_is_target)
            output.loss = cfg.lm_loss_weight * output.lm_loss + cfg.denoise_loss_weight * output.denoise_loss
            output.num_lm_tokens = num_lm_tokens
            output.num_target_images = int(batch.image_is_target.sum()) if denoise_target is not None else 0
        return output

    @staticmethod
    def denoise_loss(pred: torch.Tensor, target: torch.Tensor | None, is_target: torch.Tensor) -> torch.Tensor:
        if target is None or not bool(is_target.any()):
            return pred.sum() * 0  # keeps every parameter in the graph (DeepSpeed/ZeRO expect grads)
        per_image = (pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (N,)
        return per_image[is_target].mean()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def noise_images(process, latents: torch.Tensor, is_target: torch.Tensor, condition_max_noise: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise a batch's latents for training.

    Target images get a time from the process's training distribution; conditioning images (those
    that precede their text) get t ~ U[0, condition_max_noise] (0 = clean). Returns
    (noised latents (N, C, H, W), timesteps (N,), denoise target (N, C, H, W)).
    """
    num = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    t_target = process.sample_time(num, generator)
    t_condition = torch.rand(num, generator=generator) * condition_max_noise
    timesteps = torch.where(is_target.cpu(), t_target, t_condition).to(latents.device)
    noised = process.add_noise(latents, noise, timesteps)
    return noised, timesteps, process.target(latents, noise, timesteps)


def combine_outputs(outputs: list[UniModalOutput], config: ModelConfig) -> UniModalOutput:
    """Merge the losses of the parts of one batch (`Batch.split_by_length`) into the losses the whole
    batch would have had: each loss is a mean, so the parts are weighted by what they average over."""
    if len(outputs) == 1:
        return outputs[0]
    if any(out.loss is None for out in outputs):
        raise ValueError("combine_outputs needs outputs with losses (forward with targets)")
    num_tokens = sum(out.num_lm_tokens for out in outputs)
    num_images = sum(out.num_target_images for out in outputs)
    # A part without labels (or targets) contributes its zero-valued loss, which keeps every
    # parameter in the graph as the single-batch forward does.
    lm_loss = sum(out.lm_loss * (out.num_lm_tokens / num_tokens if num_tokens else 1.0) for out in outputs)
    denoise_loss = sum(out.denoise_loss * (out.num_target_images / num_images if num_images else 1.0)
                       for out in outputs)
    loss = config.lm_loss_weight * lm_loss + config.denoise_loss_weight * denoise_loss
    return UniModalOutput(lm_logits=None, denoise_pred=None, lm_loss=lm_loss, denoise_loss=denoise_loss,
                          loss=loss, num_lm_tokens=num_tokens, num_target_images=num_images)


__all__ = ["UniModalModel", "UniModalOutput", "combine_outputs", "noise_images", "patchify"]
