"""Inference loops: KV-cached text decoding and cached-prefix image sampling.

Dimension legend: R rows in the model batch, T0 prompt length (left-padded), L prefix length
(left-padded), P patches per item, D width, C/F/H/W latent channels/frames/height/width, E = C·pf·p·p.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, LlamaModel

from . import attention
from .decode_step import StaticKVDecoder
from .embeddings import patchify_items, unpatchify_like
from .layout import Example, SequenceLayout
from .model import UniModalModel

# transformers renamed the decoder's `past_key_values` argument to `cache` (5.2x; the old name
# warns until 5.40). Pick whichever this installation's decoders take, once.
_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def _run_decoder(model: UniModalModel, embeds, mask, positions, cache):
    """The decoder's last hidden states (R, T, D); `cache` (or None) is extended in place."""
    return model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                         **{_CACHE_ARG: cache}).last_hidden_state


# ----------------------------------------------------------------------------- text decoding
def _decoder_runner(model: UniModalModel, use_cache: bool, num_rows: int, max_length: int) -> Callable:
    """(embeds, mask, positions) -> last hidden states, keeping whatever cache the mode needs.

    With the cache, decoders that `StaticKVDecoder` mirrors run through it (a static buffer and
    no per-token transformers overhead); others keep a transformers `DynamicCache`."""
    if use_cache and StaticKVDecoder.supports(model.decoder):
        return StaticKVDecoder(model.decoder, num_rows, max_length).forward
    cache = DynamicCache(config=model.decoder.config) if use_cache else None
    return lambda embeds, mask, positions: _run_decoder(model, embeds, mask, positions, cache)


def _pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """(R, V) logits -> (R,) token ids; greedy when temperature == 0."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def decode_text(model: UniModalModel, layout: SequenceLayout, prompts: Sequence[Example], max_new_tokens: int,
                temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                use_cache: bool = True, eos_id: int | None = None) -> list[list[int]]:
    """Continue each prompt until <eos> (`eos_id`, default the tokenizer's; -1 never stops) or
    `max_new_tokens`; returns the new ids (without <eos>).

    The prompts' media items must already be encoded (latents, `layout` built for latent patches).
    They run as one left-padded batch (`SequenceLayout.left_pad`); with the cache, the prompt
    (media included) runs once and each new token is one step of one position.
    """
    device = next(model.parameters()).device
    pad_id = layout.tokenizer.pad_id
    eos_id = layout.tokenizer.eos_id if eos_id is None else eos_id
    batch = layout.left_pad(prompts).to(device)
    segments = attention.segments_of(batch)
    shared = model.config.image_rope == "shared"
    positions = attention.positions(segments, shared)  # (R, T0): left padding keeps each row's offsets
    timesteps = torch.zeros(batch.num_images, device=device)  # conditioning items are clean
    num_rows = batch.num_rows
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    run_decoder = _decoder_runner(model, use_cache, num_rows, batch.input_ids.shape[1] + max_new_tokens)
    step_ids, step_positions = batch.input_ids, positions
    row_ids = torch.arange(num_rows, device=device)[:, None]  # each row's one example
    for _ in range(max_new_tokens):
        if use_cache and generated:
            embeds = model.decoder.get_input_embeddings()(generated[-1][:, None])  # (R, 1, D)
            mask = (segments.example_ids != attention.PADDING)[:, None, None, :]  # (R, 1, 1, T0 + k)
            step_positions = positions[:, -1:]
        else:
            embeds, _ = model.embed(step_ids, batch.images, timesteps, batch.image_rows, batch.image_starts,
                                    batch.image_grids)  # (R, T, D)
            mask = model.attention_mask(segments, device, dense=True)
        hidden = run_decoder(embeds, mask, step_positions)
        token = _pick_token(model.lm_head(hidden[:, -1]), temperature, top_p, generator)  # (R,)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        generated.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        segments = attention.TokenSegments(torch.cat([segments.example_ids, row_ids], 1),
                                           torch.cat([segments.item_ids, torch.full_like(row_ids, attention.PADDING)], 1))
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if not use_cache:
            step_ids = torch.cat([step_ids, token[:, None]], dim=1)
            step_positions = positions
    out = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in prompts]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out]


# ----------------------------------------------------------------------------- image sampling
@torch.no_grad()
def sample_latents(model: UniModalModel, layout: SequenceLayout, process, texts: Sequence[str | Sequence[int]],
                   noise: torch.Tensor, num_steps: int, guidance_scale: float, scheduler_name: str,
                   use_cache: bool = True, progress: Callable | None = None,
                   generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Denoise `noise` (B, C, H, W) images or (B, C, F, H, W) clips conditioned on `texts` (B of them).

    The rows are the layout's generation prompts (`SequenceLayout.guided_generation_prompts`: with
    guidance, scale != 1, the B conditional rows and then B unconditional ones, one batch),
    left-padded so that every item starts in the same column. The prefix before the item is causal
    and never sees it, so with the cache its keys/values are computed once and the item alone runs
    at each step. `generator` (one, or one per image) drives stochastic schedulers such as "ddpm";
    without it they draw from the global RNG and the result is not reproducible.
    """
    num_images = noise.shape[0]
    if len(texts) != num_images:
        raise ValueError("sample_latents needs one text per noise tensor")
    guided = guidance_scale != 1.0
    device, dtype = noise.device, noise.dtype
    items = list(noise) * (2 if guided else 1)
    batch = layout.left_pad(layout.guided_generation_prompts(texts, items[:num_images], guided)).to(device)
    rows = batch.num_rows
    segments = attention.segments_of(batch)
    full_positions = attention.positions(segments, model.config.image_rope == "shared")  # (R, L+P)
    num_tokens = int(batch.image_num_tokens[0])
    prefix = batch.input_ids.shape[1] - num_tokens  # L: every row's item fills the last P columns
    grids = batch.image_grids
    owner = torch.arange(rows, device=device).repeat_interleave(num_tokens)  # (R·P,)

    cache = None
    if use_cache:
        cache = DynamicCache(config=model.decoder.config)
        prefix_embeds = model.decoder.get_input_embeddings()(batch.input_ids[:, :prefix])  # (R, L, D)
        prefix_segments = attention.TokenSegments(segments.example_ids[:, :prefix], segments.item_ids[:, :prefix])
        _run_decoder(model, prefix_embeds, model.attention_mask(prefix_segments, device, dense=True),
                     full_positions[:, :prefix], cache)
        item_mask = model.attention_mask(segments, device, query_start=prefix, dense=True)  # (R, 1, P, L+P)
    else:
        full_mask = model.attention_mask(segments, device, dense=True)

    scheduler = process.make_scheduler(scheduler_name, shift=process.shift_for(noise.dim() == 5))
    scheduler.set_timesteps(num_steps, device=device)
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    timesteps = scheduler.timesteps
    for step, timestep in enumerate(timesteps):
        model_input = torch.cat([latents, latents]) if guided else latents  # (R, C, H, W)
        if hasattr(scheduler, "scale_model_input"):  # identity for the schedulers we offer; kept for others
            model_input = scheduler.scale_model_input(model_input, timestep)
        t = process.model_time(scheduler, timestep).expand(rows).to(device)
        if use_cache:
            patches = patchify_items(list(model_input), model.config.patch_size, model.config.patch_frames)
            tokens, time = model.patch_embed(patches, grids, t)
            hidden = _run_decoder(model, tokens.view(rows, num_tokens, -1).to(prefix_embeds.dtype), item_mask,
                                  full_positions[:, prefix:], cache)
            cache.crop(-num_tokens)  # forget this step's item keys; the prefix stays
            pred = model.denoise_head(hidden.flatten(0, 1), time.to(hidden.dtype), owner)  # (R·P, E)
        else:
            embeds, time = model.embed(batch.input_ids, list(model_input), t, batch.image_rows, batch.image_starts, grids)
            hidden = _run_decoder(model, embeds, full_mask, full_positions, None)
            pred = model.predict_denoise(hidden, time, batch.image_rows, batch.image_starts, grids)
        pred = unpatchify_like(pred.view(rows, num_tokens, -1), model_input, model.config.patch_size,
                               model.config.patch_frames).to(dtype)
        pred = process.scheduler_output(pred, model_input, t)  # what the scheduler steps with (x-prediction: v̂)
        if guided:
            conditional, unconditional = pred.chunk(2)
            pred = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(pred, timestep, latents, generator=generator).prev_sample
        if progress is not None:
            progress(step + 1, len(timesteps))
    return latents
