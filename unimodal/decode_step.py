"""A lean KV-cached decoder for text decoding: the maths of a Llama/Qwen2 decoder with a static cache.

Why not call the transformers decoder for every new token: at batch 1 a small model's one-token
step is cheap arithmetic wrapped in many small ops. For the tiny preset on one CPU thread the
step costs ~3.6 ms through transformers (mask construction, cache bookkeeping, attention dispatch,
six-op rotary), of which its matmuls — bound by reading the weights — take ~1.5 ms.
`StaticKVDecoder` runs the same operations — the decoder's own norm and rotary modules,
`scaled_dot_product_attention` over a preallocated key/value buffer, the gated MLP — with the
decoder's own weights and fewer ops, in ~2.7–3 ms (benchmarks/sampling.py). Its outputs equal the
transformers path up to float rounding (tests/test_decode_step.py). Decoders whose maths it does
not mirror (sliding windows, other architectures) are refused by `StaticKVDecoder.supports`, and
the caller keeps the transformers path.

Dimension legend: R rows, T new positions this call, L positions held in the buffer,
H query heads, K key/value heads, E head size, D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SUPPORTED_TYPES = ("llama", "qwen2")
_ACTIVATIONS = {"silu": F.silu}


def _rotate(states: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' half-split convention, `x * cos + rotate_half(x) * sin`.

    rotate_half(x) = cat(-x2, x1) = roll(x, E/2) * [-1.., +1..], so the sign is folded into
    `signed_sin` once per call: three ops per tensor instead of six (this step is overhead-bound).
    states (R, heads, T, E); cos, signed_sin (R, 1, T, E).
    """
    return torch.addcmul(states * cos, states.roll(states.shape[-1] // 2, dims=-1), signed_sin)


class StaticKVDecoder:
    """Runs `decoder`'s layers with keys/values kept in a buffer of `max_length` positions.

    Each `forward` call appends its T positions after those already held; `mask` says which held
    and new positions each new query may attend to (bool, True = attend), so the caller keeps full
    control of the mixed text/image mask and of left padding.

        runner = StaticKVDecoder(model.decoder, num_rows=4, max_length=prompt_len + 64)
        hidden = runner.forward(prompt_embeds, prompt_mask, prompt_positions)   # prefill
        hidden = runner.forward(token_embeds, step_mask, step_positions)        # one token
    """

    def __init__(self, decoder: nn.Module, num_rows: int, max_length: int):
        if not self.supports(decoder):
            raise ValueError(f"StaticKVDecoder supports {_SUPPORTED_TYPES} decoders without sliding windows "
                             f"and with a silu MLP; got {type(decoder).__name__}")
        self.decoder = decoder
        first = decoder.layers[0].self_attn
        self.head_size = first.head_dim
        self.num_heads = first.q_proj.out_features // self.head_size
        self.num_kv_heads = first.k_proj.out_features // self.head_size
        self.activation = _ACTIVATIONS[decoder.config.hidden_act]
        weight = decoder.embed_tokens.weight
        shape = (num_rows, self.num_kv_heads, max_length, self.head_size)
        self.keys = [torch.empty(shape, dtype=weight.dtype, device=weight.device) for _ in decoder.layers]
        self.values = [torch.empty(shape, dtype=weight.dtype, device=weight.device) for _ in decoder.layers]
        self.max_length = max_length
        self.length = 0  # positions held

    @staticmethod
    def supports(decoder: nn.Module) -> bool:
        """Whether this class computes exactly what `decoder`'s own forward computes."""
        config = getattr(decoder, "config", None)
        if config is None or getattr(config, "model_type", None) not in _SUPPORTED_TYPES:
            return False
        if getattr(config, "hidden_act", None) not in _ACTIVATIONS or not hasattr(decoder, "rotary_emb"):
            return False
        if getattr(config, "use_sliding_window", False) or "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            return False
        layer = decoder.layers[0]
        return all(hasattr(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")) \
            and all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj"))

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """embeds (R, T, D), mask (R, 1, T, L + T) bool, positions (R, T) long -> last hidden states (R, T, D)."""
        num_rows, num_new, _ = embeds.shape
        start, end = self.length, self.length + num_new
        if end > self.max_length:
            raise ValueError(f"StaticKVDecoder holds {self.max_length} positions; {end} were asked for")
        cos, sin = self.decoder.rotary_emb(embeds, positions)  # (R, T, E) each
        cos, sin = cos[:, None], sin[:, None]  # (R, 1, T, E)
        half = self.head_size // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        if num_new == 1 and bool(mask.all()):
            mask = None  # one query that sees every key: SDPA's unmasked path is faster
        grouped = self.num_kv_heads != self.num_heads
        hidden = embeds
        for index, layer in enumerate(self.decoder.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attention.q_proj(normed).view(num_rows, num_new, self.num_heads, self.head_size).transpose(1, 2)
            key = attention.k_proj(normed).view(num_rows, num_new, self.num_kv_heads, self.head_size).transpose(1, 2)
            value = attention.v_proj(normed).view(num_rows, num_new, self.num_kv_heads, self.head_size).transpose(1, 2)
            self.keys[index][:, :, start:end] = _rotate(key, cos, signed_sin)
            self.values[index][:, :, start:end] = value
            attended = F.scaled_dot_product_attention(  # (R, H, T, E)
                _rotate(query, cos, signed_sin), self.keys[index][:, :, :end], self.values[index][:, :, :end],
                attn_mask=mask, scale=attention.scaling, enable_gqa=grouped)
            hidden = hidden + attention.o_proj(attended.transpose(1, 2).reshape(num_rows, num_new, -1))
            normed = layer.post_attention_layernorm(hidden)
            mlp = layer.mlp
            hidden = hidden + mlp.down_proj(self.activation(mlp.gate_proj(normed)) * mlp.up_proj(normed))
        self.length = end
        return self.decoder.norm(hidden)
