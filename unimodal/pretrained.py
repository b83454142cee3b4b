"""The exported inference folder: everything needed to rebuild a model without its training run.

    folder/
      config.json           ModelConfig (backbone_path cleared: the weights live here now)
      backbone_config.json  the transformers decoder config, so any backbone rebuilds exactly
      model.safetensors     all trainable weights (never a pickle)
      tokenizer.model       sentencepiece model
      codec.json [+ vae/]   latent codec settings (and AutoencoderKL weights, safetensors)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from .codecs import load_codec, save_codec
from .config import ModelConfig
from .model import UniModalModel
from .tokenizer import Tokenizer

CONFIG_FILENAME = "config.json"
BACKBONE_CONFIG_FILENAME = "backbone_config.json"
WEIGHTS_FILENAME = "model.safetensors"


def save_export(folder: str | Path, model: UniModalModel, tokenizer: Tokenizer, codec,
                state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an export folder atomically (to a temporary sibling, then renamed into place).

    `state_dict` overrides the model's own weights (e.g. EMA or consolidated ZeRO-3 weights).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = model.config.to_dict()
        config["backbone_path"] = None
        config["codec_path"] = None
        (staging / CONFIG_FILENAME).write_text(json.dumps(config, indent=2))
        (staging / BACKBONE_CONFIG_FILENAME).write_text(model.decoder.config.to_json_string())
        weights = state_dict if state_dict is not None else model.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, staging / WEIGHTS_FILENAME)
        tokenizer.save_pretrained(staging)
        save_codec(codec, staging)
        # mkdtemp makes a private (0700) folder; an export is meant to be shared like any model folder.
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        _replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _replace_folder(staging: Path, folder: Path) -> None:
    """Swap `staging` into `folder`; a reader sees the old folder or the new one, never half."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)


def load_export(folder: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, codec) from an export folder, in eval mode on `device`."""
    folder = Path(folder)
    missing = [name for name in (CONFIG_FILENAME, BACKBONE_CONFIG_FILENAME, WEIGHTS_FILENAME)
               if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a unimodal export folder: missing {missing}")
    config = ModelConfig.from_dict(json.loads((folder / CONFIG_FILENAME).read_text()))
    hf_config = AutoConfig.for_model(**json.loads((folder / BACKBONE_CONFIG_FILENAME).read_text()))
    model = UniModalModel(config, hf_config=hf_config)
    state = load_file(folder / WEIGHTS_FILENAME)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), Tokenizer.from_pretrained(folder), load_codec(folder).to(device)
