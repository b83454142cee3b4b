"""Two processes on one machine with torchrun (gloo on CPU), ZeRO-3 so that weights really are split,
one data-loader worker per rank; a two-process resume continues exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file
from test_training_support import REPO, events, losses_by_step, run_args, shard_dir, subprocess_env  # noqa: F401

from unimodal.training.checkpoint import LATEST, latest_checkpoint, tag_for, trainer_state_file
from unimodal.training.engine import consolidated_checkpoint_weights


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "unimodal.training.train", *argv]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_torchrun_two_processes_and_resume(tmp_path, shard_dir):  # noqa: F811
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = ("deepspeed.zero_stage=3", "data.num_workers=1")
    result = torchrun(*run_args(shard_dir, whole, *extra))
    assert "done." in result.stdout

    latest = latest_checkpoint(whole / "checkpoints")
    assert latest.name == tag_for(4)
    assert json.loads((latest / "meta.json").read_text())["world_size"] == 2
    for rank in (0, 1):  # each rank's data position and RNG streams, each rank's optimizer shard
        assert (latest / trainer_state_file(rank)).is_file()
        assert (latest / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert sorted(losses_by_step(whole)) == [1, 2, 3, 4]
    assert not events(whole, "nonfinite_loss")
    assert load_file(whole / "export" / "model.safetensors")["lm_head.weight"].shape[0] > 0  # consolidated

    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / tag_for(2), resumed / "checkpoints" / tag_for(2))
    (resumed / "checkpoints" / LATEST).write_text(tag_for(2))
    shutil.copytree(whole / "tokenizer", resumed / "tokenizer")
    torchrun(*run_args(shard_dir, resumed, *extra))
    expected, got = losses_by_step(whole), losses_by_step(resumed)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        torch.testing.assert_close(torch.tensor(got[step]), torch.tensor(expected[step]), rtol=1e-6, atol=1e-6)
    a = consolidated_checkpoint_weights(whole / "checkpoints", tag_for(4))
    b = consolidated_checkpoint_weights(resumed / "checkpoints", tag_for(4))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
