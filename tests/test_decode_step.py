"""The lean static-cache decoder computes what the transformers decoder computes."""

import pytest
import torch
from torch.testing import assert_close
from transformers import Qwen2Config, Qwen2Model

from unimodal import attention
from unimodal.config import ModelConfig
from unimodal.decode_step import StaticKVDecoder
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel
from unimodal.sampling import decode_text


def mixed_inputs(model: UniModalModel, num_rows: int = 2, total: int = 24, image_start: int = 3):
    """Random embeddings with an image block, left padding on row 0, and the mask/positions to match."""
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(num_rows, total, model.config.hidden_size, generator=generator)
    starts = torch.tensor([2] + [0] * (num_rows - 1))  # left padding on row 0
    segments = attention.token_segments(num_rows, total, torch.arange(num_rows), starts, total - starts,
                                        torch.arange(num_rows), torch.full((num_rows,), image_start + 2),
                                        torch.full((num_rows,), 6))
    return embeds, attention.dense_mask(segments), attention.positions(segments)


@pytest.mark.parametrize("backbone,num_kv_heads", [("llama", None), ("llama", 1), ("qwen2", 2)])
def test_prefill_then_single_steps_equal_one_full_forward(tokenizer, backbone, num_kv_heads):
    config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, backbone=backbone, num_kv_heads=num_kv_heads)
    torch.manual_seed(0)
    model = UniModalModel(config).eval()
    if backbone == "qwen2":  # random biases so a missed q/k/v bias shows
        for layer in model.decoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    embeds, mask, positions = mixed_inputs(model)
    with torch.no_grad():
        reference = model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        runner = StaticKVDecoder(model.decoder, num_rows=2, max_length=embeds.shape[1])
        prefill = 20
        pieces = [runner.forward(embeds[:, :prefill], mask[:, :, :prefill, :prefill], positions[:, :prefill])]
        for step in range(prefill, embeds.shape[1]):  # one position at a time, as decoding does
            pieces.append(runner.forward(embeds[:, step: step + 1], mask[:, :, step: step + 1, : step + 1],
                                         positions[:, step: step + 1]))
    assert runner.length == embeds.shape[1]
    assert_close(torch.cat(pieces, dim=1), reference, atol=1e-5, rtol=1e-5)


def test_bf16_weights_follow_the_transformers_rounding(tokenizer):
    model = UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)).eval().to(torch.bfloat16)
    embeds, mask, positions = mixed_inputs(model)
    embeds = embeds.to(torch.bfloat16)
    with torch.no_grad():
        reference = model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        hidden = StaticKVDecoder(model.decoder, 2, embeds.shape[1]).forward(embeds, mask, positions)
    assert hidden.dtype == torch.bfloat16
    assert_close(hidden.float(), reference.float(), atol=2e-2, rtol=2e-2)


def test_overflowing_the_buffer_is_an_error(tokenizer):
    model = UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)).eval()
    embeds, mask, positions = mixed_inputs(model)
    runner = StaticKVDecoder(model.decoder, 2, max_length=10)
    with pytest.raises(ValueError, match="holds 10 positions"):
        runner.forward(embeds, mask, positions)


def test_unsupported_decoders_are_refused_and_decoding_falls_back(tokenizer, monkeypatch):
    sliding = Qwen2Model(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, vocab_size=64, use_sliding_window=True, sliding_window=4,
                                     max_window_layers=0))
    assert not StaticKVDecoder.supports(sliding)
    with pytest.raises(ValueError, match="supports"):
        StaticKVDecoder(sliding, 1, 8)
    assert not StaticKVDecoder.supports(torch.nn.Linear(2, 2))

    # A model whose decoder is refused still decodes, through the transformers cache, to the same tokens.
    model = UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)).eval()
    latents = torch.rand(1, 3, model.config.latent_size, model.config.latent_size) * 2 - 1
    layout = SequenceLayout(tokenizer, model.config.input_patch_size(latents=True))
    prompt = layout.caption_prompt(latents[0])
    lean = decode_text(model, layout, [prompt], 6, eos_id=-1)
    monkeypatch.setattr(StaticKVDecoder, "supports", staticmethod(lambda decoder: False))
    fallback = decode_text(model, layout, [prompt], 6, eos_id=-1)
    assert lean == fallback and len(lean[0]) == 6
