"""The export holds the engine's EMA weights: loaded with `load_export`, it computes what the
engine's own module computes with the EMA weights swapped in (ZeRO 0 and ZeRO 3)."""

from __future__ import annotations

import pytest
import torch
from test_training_support import run_args, shard_dir  # noqa: F401  (fixture)

from unimodal.codecs import encode_items
from unimodal.objective import Objective
from unimodal.pretrained import load_export
from unimodal.training.config import load_run_config
from unimodal.training.train import finish, prepare_run


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_export_equals_engine_ema(tmp_path, shard_dir, zero_stage):  # noqa: F811
    overrides = run_args(shard_dir, tmp_path / "run", f"deepspeed.zero_stage={zero_stage}", "schedule.total_steps=3")
    run = prepare_run(load_run_config(None, overrides))
    assert run.train() == "finished"
    where = finish(run)
    model, tokenizer, codec = load_export(where["model (export)"])
    assert tokenizer.vocab_size == run.tokenizer.vocab_size

    batch = next(iter(run.loop.ctx.loader))
    generator = torch.Generator().manual_seed(0)
    objective = Objective(model.config)
    noised = objective.noise(encode_items(codec, batch.images), batch.image_is_target, generator)
    noised_batch = batch.with_images(noised.images)
    with torch.no_grad():
        exported = model(noised_batch, noised.timesteps)
        with run.ema.applied():
            engine_module = run.engine.module.eval()
            reference = engine_module(noised_batch, noised.timesteps)
        trained = run.engine.module(noised_batch, noised.timesteps)  # EMA swapped back out
    torch.testing.assert_close(exported.lm_logits, reference.lm_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exported.denoise_pred, reference.denoise_pred, rtol=1e-5, atol=1e-5)
    losses = [objective.losses(out, batch, noised.targets).loss for out in (exported, reference)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trained.lm_logits, reference.lm_logits)  # the swap was undone

    ema_weights = run.ema.weights()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ema_weights[name], rtol=0, atol=0, msg=name)
