"""The text backbone: a `transformers` decoder built from our config or loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from .config import ModelConfig

_CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def backbone_config_from(config: ModelConfig):
    """A transformers config for a decoder of the sizes in `config`."""
    return _CONFIG_CLASSES[config.backbone](
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
        tie_word_embeddings=False, use_cache=True, attn_implementation=config.attn_implementation,
    )


def build_backbone(config: ModelConfig, hf_config=None) -> tuple[PreTrainedModel, nn.Linear]:
    """(decoder without LM head, LM head). Loads weights from `config.backbone_path` if set;
    `hf_config` rebuilds an exported model's exact architecture without its original folder."""
    if config.backbone_path:
        path = Path(config.backbone_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"ModelConfig.backbone_path={path} holds no transformers model (config.json)")
        causal_lm = AutoModelForCausalLM.from_pretrained(path, attn_implementation=config.attn_implementation,
                                                         use_safetensors=True)
    else:
        hf_config = hf_config if hf_config is not None else backbone_config_from(config)
        hf_config._attn_implementation = config.attn_implementation
        causal_lm = AutoModelForCausalLM.from_config(hf_config, attn_implementation=config.attn_implementation)
    decoder, lm_head = causal_lm.model, causal_lm.lm_head
    if lm_head.weight is decoder.embed_tokens.weight:  # untie, so resizing and saving stay simple
        lm_head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=False)
        lm_head.weight.data.copy_(decoder.embed_tokens.weight.data)
    return decoder, lm_head


def sync_config_with_backbone(config: ModelConfig, decoder: PreTrainedModel) -> None:
    """A pretrained backbone decides the sizes: copy them into our config."""
    hf = decoder.config
    config.hidden_size = hf.hidden_size
    config.num_layers = hf.num_hidden_layers
    config.num_heads = hf.num_attention_heads
    config.num_kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    config.intermediate_size = hf.intermediate_size
    config.max_position_embeddings = hf.max_position_embeddings


def load_hf_config(folder: str | Path):
    return AutoConfig.from_pretrained(folder)
