"""A pretrained LLM backbone and a pretrained VAE load from local folders (tiny random stand-ins,
saved with their own libraries' save_pretrained)."""

import pytest
import torch
from diffusers import AutoencoderKL
from torch.testing import assert_close
from transformers import Qwen2Config, Qwen2ForCausalLM

from unimodal.codecs import TINY_VAE_CONFIG, VAECodec, build_codec
from unimodal.config import ModelConfig
from unimodal.layout import SequenceLayout
from unimodal.model import UniModalModel
from unimodal.pretrained import load_export, save_export


def test_llm_backbone_loads_from_local_folder_and_grows_vocab(tokenizer, tmp_path):
    torch.manual_seed(0)
    hf_config = Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    llm = Qwen2ForCausalLM(hf_config)
    llm.save_pretrained(tmp_path / "llm")
    config = ModelConfig(backbone="qwen2", backbone_path=str(tmp_path / "llm"), vocab_size=tokenizer.vocab_size,
                         image_size=16, patch_size=4)
    model = UniModalModel(config)
    assert config.hidden_size == 64 and config.num_kv_heads == 2  # sizes come from the folder
    assert model.lm_head.out_features == tokenizer.vocab_size  # grown from 100 for our specials
    # The pretrained rows are kept as they were.
    assert_close(model.decoder.embed_tokens.weight[:100], llm.model.embed_tokens.weight)
    assert_close(model.lm_head.weight[:100], llm.lm_head.weight)
    # The export rebuilds the same architecture without the original folder.
    layout = SequenceLayout(tokenizer, config.input_patch_size())
    batch = layout.collate([layout.caption(torch.zeros(3, 16, 16), "a red circle")])
    save_export(tmp_path / "export", model, tokenizer, build_codec(config))
    (tmp_path / "llm" / "config.json").unlink()
    loaded, _, _ = load_export(tmp_path / "export")
    times = torch.zeros(1)
    assert_close(loaded(batch, times).lm_logits, model.eval()(batch, times).lm_logits, rtol=0, atol=0)


def test_vae_codec_loads_from_local_folder_and_applies_scaling_once(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE_CONFIG, scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    codec = VAECodec.from_pretrained(tmp_path / "vae")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = codec.encode(images)
    assert latents.shape == (2, 4, 8, 8) and codec.downsample_factor == 4
    raw = vae.encode(images).latent_dist.mean
    assert_close(latents, (raw - 0.1) * 0.5)
    decoded = codec.decode(latents)
    assert_close(decoded, vae.decode(raw).sample.clamp(-1, 1))


def test_vae_model_exports_with_its_codec(tokenizer, tmp_path):
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(tmp_path / "vae")
    config = ModelConfig.preset("debug", image_size=32, codec="vae", codec_path=str(tmp_path / "vae"),
                                latent_channels=4, downsample_factor=4, patch_size=2, vocab_size=tokenizer.vocab_size)
    model = UniModalModel(config)
    codec = build_codec(config)
    save_export(tmp_path / "export", model, tokenizer, codec)
    _, _, loaded_codec = load_export(tmp_path / "export")
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert_close(loaded_codec.encode(images), codec.encode(images))


def test_vae_shape_mismatch_is_explained(tmp_path):
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(tmp_path / "vae")
    config = ModelConfig(codec="vae", codec_path=str(tmp_path / "vae"), latent_channels=16, downsample_factor=4,
                         image_size=32, patch_size=2)
    with pytest.raises(ValueError, match="latent_channels=4"):
        build_codec(config)
