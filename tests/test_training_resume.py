"""A resumed run is the uninterrupted run: same parameters, same EMA, same next losses (ZeRO 0 and 3)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_training_support import losses_by_step, run_args, shard_dir  # noqa: F401  (fixture)

from unimodal.training.checkpoint import LATEST, tag_for
from unimodal.training.engine import consolidated_checkpoint_weights
from unimodal.training.train import main


# The ZeRO-3 run also splits its micro-batches by length (several forwards before one backward).
@pytest.mark.parametrize("zero_stage,data_extra", [(0, []), (3, ["data.max_tokens_per_row=256", "data.vqa_turns=4"])])
def test_resume_matches_uninterrupted_run(tmp_path, shard_dir, zero_stage, data_extra):  # noqa: F811
    extra = [f"deepspeed.zero_stage={zero_stage}", *data_extra]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(run_args(shard_dir, whole, *extra)) == 0

    # The resumed run starts from the uninterrupted run's step-2 checkpoint and nothing after it:
    # at ZeRO 0 named with --resume PATH, at ZeRO 3 found in its own folder (a killed run started again).
    shutil.copytree(whole / "tokenizer", resumed / "tokenizer")
    if zero_stage == 0:
        assert main(run_args(shard_dir, resumed, *extra, "--resume", str(whole / "checkpoints" / tag_for(2)))) == 0
    else:
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(whole / "checkpoints" / tag_for(2), resumed / "checkpoints" / tag_for(2))
        (resumed / "checkpoints" / LATEST).write_text(tag_for(2))
        assert main(run_args(shard_dir, resumed, *extra)) == 0

    expected, got = losses_by_step(whole), losses_by_step(resumed)
    assert sorted(got) == [3, 4]  # only the steps the resumed run trained
    for step in (3, 4):
        torch.testing.assert_close(torch.tensor(got[step]), torch.tensor(expected[step]), rtol=1e-6, atol=1e-6)

    tag = tag_for(4)
    whole_weights = consolidated_checkpoint_weights(whole / "checkpoints", tag)
    resumed_weights = consolidated_checkpoint_weights(resumed / "checkpoints", tag)
    assert whole_weights.keys() == resumed_weights.keys()
    for name in whole_weights:
        torch.testing.assert_close(resumed_weights[name], whole_weights[name], rtol=1e-6, atol=1e-7, msg=name)

    whole_ema, resumed_ema = load_file(whole / "export" / "model.safetensors"), \
        load_file(resumed / "export" / "model.safetensors")
    for name in whole_ema:
        torch.testing.assert_close(resumed_ema[name], whole_ema[name], rtol=1e-6, atol=1e-7, msg=name)
    # EMA differs from the trained weights (decay 0.9 after warm-up), so the export really is EMA.
    assert any(not torch.allclose(whole_ema[n], whole_weights[n]) for n in whole_ema)
