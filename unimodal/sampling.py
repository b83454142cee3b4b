"""Inference loops: KV-cached text decoding and cached-prefix image sampling.

Dimension legend: R rows in the model batch, T0 prompt length (left-padded), L prefix length
(right-padded), P patches per image, D width, C/H/W latent channels/height/width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, LlamaModel

from .decode_step import StaticKVDecoder
from .embeddings import patchify, unpatchify
from .layout import Example, build_attention_mask, rope_positions
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


def _left_pad(prompts: Sequence[Example], pad_id: int):
    """Left-pad prompts so every row's next token lands in the same column."""
    total = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), total, dtype=torch.bool)
    images, batch_index, starts = [], [], []
    for row, prompt in enumerate(prompts):
        offset = total - len(prompt)
        input_ids[row, offset:] = torch.tensor(prompt.input_ids)
        valid[row, offset:] = True
        images += prompt.images
        batch_index += [row] * len(prompt.images)
        starts += [start + offset for start in prompt.image_starts]
    return input_ids, valid, images, torch.tensor(batch_index, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


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
def decode_text(model: UniModalModel, prompts: Sequence[Example], latents: torch.Tensor, pad_id: int, eos_id: int,
                max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt until <eos> or `max_new_tokens`; returns the new ids (without <eos>).

    `latents` (N, C, H, W) are the encoded images of the prompts, in prompt order. With the cache,
    the prompt (image included) runs once and each new token is one step of one position.
    """
    device = latents.device
    input_ids, valid, _, batch_index, starts = _left_pad(prompts, pad_id)
    input_ids, valid, batch_index, starts = (t.to(device) for t in (input_ids, valid, batch_index, starts))
    num_rows, num_tokens = latents.shape[0], model.config.num_image_tokens
    timesteps = torch.zeros(num_rows, device=device)  # conditioning images are clean
    # (R, T0): left padding keeps each row's RoPE offsets
    positions = rope_positions(valid, batch_index, starts, num_tokens, model.config.image_rope)
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    run_decoder = _decoder_runner(model, use_cache, input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
    step_ids, step_valid, step_positions = input_ids, valid, positions
    for _ in range(max_new_tokens):
        if use_cache and generated:
            embeds = model.decoder.get_input_embeddings()(generated[-1][:, None])  # (R, 1, D)
            mask = valid[:, None, None, :]  # (R, 1, 1, T0 + k): one query sees every real key
            step_positions = positions[:, -1:]
        else:
            embeds, _ = model.embed(step_ids, latents, timesteps, batch_index, starts)  # (R, T, D)
            mask = build_attention_mask(step_valid, batch_index, starts, num_tokens)
        hidden = run_decoder(embeds, mask, step_positions)
        token = _pick_token(model.lm_head(hidden[:, -1]), temperature, top_p, generator)  # (R,)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        generated.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if not use_cache:
            step_ids = torch.cat([step_ids, token[:, None]], dim=1)
            step_valid, step_positions = valid, positions
    out = torch.stack(generated, dim=1).tolist() if generated else [[] for _ in prompts]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out]


# ----------------------------------------------------------------------------- image sampling
@torch.no_grad()
def sample_latents(model: UniModalModel, process, prefixes: Sequence[Sequence[int]], noise: torch.Tensor,
                   num_steps: int, guidance_scale: float, scheduler_name: str, pad_id: int,
                   use_cache: bool = True, progress: Callable | None = None,
                   generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Denoise `noise` (B, C, H, W) conditioned on token prefixes `<bos> text <boi>` (B of them).

    With guidance (scale != 1) the first B prefixes are conditional and the next B unconditional;
    both halves run as one batch. The prefix is causal and never sees the image, so with the
    cache its keys/values are computed once and the image block alone runs at each step.
    `generator` (one, or one per image) drives stochastic schedulers such as "ddpm"; without it
    they draw from the global RNG and the result is not reproducible.
    """
    num_images = noise.shape[0]
    guided = guidance_scale != 1.0
    if len(prefixes) != num_images * (2 if guided else 1):
        raise ValueError("sample_latents needs one prefix per image (two with guidance)")
    device, dtype = noise.device, noise.dtype
    rows = len(prefixes)
    prefix_lengths = torch.tensor([len(p) for p in prefixes], device=device)  # (R,)
    total_prefix = int(prefix_lengths.max())
    prefix_ids = torch.full((rows, total_prefix), pad_id, dtype=torch.long, device=device)
    for row, prefix in enumerate(prefixes):
        prefix_ids[row, : len(prefix)] = torch.tensor(list(prefix), device=device)
    prefix_valid = torch.arange(total_prefix, device=device)[None] < prefix_lengths[:, None]  # (R, L)
    num_tokens = patchify(noise[:1], model.config.patch_size).shape[1]  # P
    batch_index = torch.arange(rows, device=device)
    starts = torch.full((rows,), total_prefix, device=device)
    full_valid = torch.cat([prefix_valid, torch.ones(rows, num_tokens, dtype=torch.bool, device=device)], 1)
    # Padding does not advance the positions, so the image sits right after each row's own prefix
    # in RoPE positions, as in training.
    full_positions = rope_positions(full_valid, batch_index, starts, num_tokens, model.config.image_rope)  # (R, L+P)
    image_positions = full_positions[:, total_prefix:]  # (R, P)
    full_mask = build_attention_mask(full_valid, batch_index, starts, num_tokens)  # (R, 1, L+P, L+P)

    cache = None
    if use_cache:
        cache = DynamicCache(config=model.decoder.config)
        prefix_embeds = model.decoder.get_input_embeddings()(prefix_ids)  # (R, L, D)
        _run_decoder(model, prefix_embeds, full_mask[:, :, :total_prefix, :total_prefix],
                     full_positions[:, :total_prefix], cache)

    scheduler = process.make_scheduler(scheduler_name)
    scheduler.set_timesteps(num_steps, device=device)
    latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    timesteps = scheduler.timesteps
    for step, timestep in enumerate(timesteps):
        model_input = torch.cat([latents, latents]) if guided else latents  # (R, C, H, W)
        if hasattr(scheduler, "scale_model_input"):  # identity for the schedulers we offer; kept for others
            model_input = scheduler.scale_model_input(model_input, timestep)
        t = process.model_time(scheduler, timestep).expand(rows).to(device)
        if use_cache:
            tokens, time = model.patch_embed(model_input, t)  # (R, P, D), (R, D)
            hidden = _run_decoder(model, tokens.to(prefix_embeds.dtype), full_mask[:, :, total_prefix:, :],
                                  image_positions, cache)
            cache.crop(-num_tokens)  # forget this step's image keys; the prefix stays
            pred = model.denoise_head(hidden, time.to(hidden.dtype))  # (R, P, E)
            pred = unpatchify(pred, model.config.patch_size, *model_input.shape[1:])
        else:
            ids = torch.cat([prefix_ids, torch.full((rows, num_tokens), pad_id, device=device)], 1)
            embeds, time = model.embed(ids, model_input, t, batch_index, starts)
            hidden = _run_decoder(model, embeds, full_mask, full_positions, None)
            pred = model.predict_denoise(hidden, time, batch_index, starts, tuple(model_input.shape))
        pred = pred.to(dtype)
        if guided:
            conditional, unconditional = pred.chunk(2)
            pred = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(pred, timestep, latents, generator=generator).prev_sample
        if progress is not None:
            progress(step + 1, len(timesteps))
    return latents

