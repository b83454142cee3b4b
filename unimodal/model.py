"""UniModalModel: one decoder over text tokens and noised media patches, with two heads. It predicts;
the losses live in `unimodal.objective`.

Dimension legend: B rows, T padded length, V vocabulary, D width, N media items in the batch,
S = Σ patches of all items, E = C·p·p values per patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import attention
from .backbone import build_backbone, sync_config_with_backbone
from .config import ModelConfig
from .embeddings import DenoiseHead, PatchEmbed, patch_owner, patchify_items
from .layout import Batch


@dataclass
class UniModalOutput:
    """What `UniModalModel.forward` returns: a prediction at every position and every patch."""

    lm_logits: torch.Tensor  # (B, T, V)
    denoise_pred: torch.Tensor  # (S, E): every item's patches, item after item (targets or not)


class UniModalModel(nn.Module):
    """A transformers decoder called with `inputs_embeds` and our mixed attention."""

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
        dynamic because batch shapes change from step to step. It fuses the elementwise work around
        the matmuls (RMSNorm, rotary, SwiGLU, residuals), which eager mode runs as separate kernels
        (docs/experiments/2026-11-25-benchmarks-cpu-gpu.md). Parameter names and the state dict are unchanged.
        """
        for layer in self.decoder.layers:
            layer.compile(dynamic=True)

    # ---- pieces the sampling code reuses ----
    def patch_positions(self, image_rows: torch.Tensor, image_starts: torch.Tensor, grids: torch.Tensor):
        """(row, column) index tensors, (S,) each, of every item's patch positions."""
        _, rows, columns = attention.span_positions(image_rows, image_starts, grids.prod(-1))
        return rows, columns

    def embed(self, input_ids: torch.Tensor, images: Sequence[torch.Tensor], timesteps: torch.Tensor,
              image_rows: torch.Tensor, image_starts: torch.Tensor, grids: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with media patches scattered in: (B, T, D), and the time embedding (N, D)."""
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, T, D)
        if len(images) == 0:
            return embeds, embeds.new_zeros(0, embeds.shape[-1])
        patches = patchify_items(images, self.config.patch_size, self.config.patch_frames)  # (S, E)
        tokens, time = self.patch_embed(patches, grids, timesteps)
        rows, columns = self.patch_positions(image_rows, image_starts, grids)
        embeds = embeds.index_put((rows, columns), tokens.to(embeds.dtype))
        return embeds, time

    def predict_denoise(self, hidden: torch.Tensor, time: torch.Tensor, image_rows: torch.Tensor,
                        image_starts: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Backbone states (B, T, D) -> denoise prediction (S, E) for every item's patches."""
        rows, columns = self.patch_positions(image_rows, image_starts, grids)
        patch_hidden = hidden[rows, columns]  # (S, D)
        return self.denoise_head(patch_hidden, time.to(patch_hidden.dtype), patch_owner(grids))

    def attention_mask(self, segments: attention.TokenSegments, device: torch.device, query_start: int = 0,
                       dense: bool = False):
        """The decoder's attention for these positions: a dense SDPA mask (always with `dense`, as
        the cached inference steps need), or a FlexAttention `BlockMask` where `config.attention`
        resolves to flex (CUDA by default); switches the decoder's attention implementation to match."""
        backend = attention.resolve_backend(self.config.attention, device)
        if backend == "flex" and not dense and query_start == 0:
            self._use_attention("flex_attention")
            return attention.block_mask(segments)
        self._use_attention("sdpa")
        return attention.dense_mask(segments, query_start)

    def _use_attention(self, implementation: str) -> None:
        # Every attention layer reads this (shared) config at call time.
        if self.decoder.config._attn_implementation != implementation:
            self.decoder.config._attn_implementation = implementation

    def forward(self, batch: Batch, timesteps: torch.Tensor) -> UniModalOutput:
        """Run the batch (its `images` already noised to `timesteps`, shape (N,)); the attention and
        RoPE positions are built here from the batch's spans (`unimodal.attention`)."""
        segments = attention.segments_of(batch)
        positions = attention.positions(segments, self.config.image_rope == "shared")  # (B, T)
        mask = self.attention_mask(segments, batch.input_ids.device)
        embeds, time = self.embed(batch.input_ids, batch.images, timesteps, batch.image_rows, batch.image_starts,
                                  batch.image_grids)  # (B, T, D)
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                              use_cache=False).last_hidden_state  # (B, T, D)
        lm_logits = self.lm_head(hidden)  # (B, T, V)
        if batch.num_images:
            denoise_pred = self.predict_denoise(hidden, time, batch.image_rows, batch.image_starts, batch.image_grids)
        else:
            denoise_pred = hidden.new_zeros(0, self.config.patch_dim)
        return UniModalOutput(lm_logits=lm_logits, denoise_pred=denoise_pred)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["UniModalModel", "UniModalOutput"]
