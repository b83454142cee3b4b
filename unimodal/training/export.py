"""The inference folder of a run, and the plain (non-DeepSpeed) model that holds its weights.

The export uses the EMA weights (or the trained weights when EMA is off), consolidated from any
ZeRO stage, and goes through `unimodal.pretrained.save_export`, so `UniModal.from_pretrained`
loads it. The same weights drive the sample grids during training (`inference_model`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from unimodal.model import UniModalModel
from unimodal.pretrained import save_export
from unimodal.tokenizer import Tokenizer

from .ema import EMA
from .engine import Engine


def inference_weights(engine: Engine, ema: EMA | None) -> dict[str, torch.Tensor] | None:
    """The full state dict to export, on rank 0 (None elsewhere): EMA values for the trained
    parameters, the module's own values for everything else (buffers, frozen parameters). Every
    rank must call (gathering is a collective under ZeRO-3)."""
    if ema is None:
        return engine.full_state_dict()
    rest_names = {name for name, _ in engine.module.named_parameters()} | set(engine.module.state_dict())
    rest_names -= set(ema.names)
    full = engine.full_state_dict() if rest_names else None  # frozen parameters or persistent buffers
    if not engine.dist.is_main:
        return None
    averaged = ema.weights()
    averaged.update({name: full[name] for name in rest_names})
    return averaged


def build_inference_model(engine: Engine, weights: dict[str, torch.Tensor] | None = None,
                          device: torch.device | str = "cpu") -> UniModalModel:
    """A plain `UniModalModel` with the engine module's architecture, built without reading the
    pretrained backbone folder again (its transformers config is reused), in eval mode."""
    trained = engine.module
    config = dataclasses.replace(trained.config, backbone_path=None)
    model = UniModalModel(config, hf_config=trained.decoder.config)
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


def export_run(folder: str | Path, engine: Engine, ema: EMA | None, tokenizer: Tokenizer, codec) -> Path | None:
    """Write the inference folder (rank 0 writes; every rank must call). Returns the folder on rank 0."""
    weights = inference_weights(engine, ema)
    path = None
    if engine.dist.is_main:
        model = build_inference_model(engine)
        path = save_export(folder, model, tokenizer, codec, state_dict=weights)
    engine.barrier()
    return path
