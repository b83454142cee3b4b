"""Faults: SIGKILL while a checkpoint is written, SIGTERM, non-finite losses, torn checkpoint folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_training_support import REPO, events, losses_by_step, run_args, shard_dir, subprocess_env  # noqa: F401

from unimodal.objective import Objective
from unimodal.training import checkpoint
from unimodal.training.checkpoint import LATEST, META, PAUSE_ENV, TMP_PREFIX, latest_checkpoint, tag_for
from unimodal.training.loop import TrainingLoop
from unimodal.training.train import EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED, main


def test_sigkill_during_checkpoint_write_then_resume(tmp_path, shard_dir):  # noqa: F811
    run_dir = tmp_path / "run"
    assert main(run_args(shard_dir, run_dir, "schedule.total_steps=2")) == 0  # complete checkpoint at step 2

    # Continue to step 4 in a subprocess that stops inside the step-4 save, after its files are written
    # and before the commit, then kill it there.
    staging = run_dir / "checkpoints" / f"{TMP_PREFIX}{tag_for(4)}"
    process = subprocess.Popen([sys.executable, "-m", "unimodal.training.train", *run_args(shard_dir, run_dir)], cwd=REPO,
                               env=subprocess_env(**{PAUSE_ENV: "120"}), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (staging / checkpoint.trainer_state_file(0)).is_file():
            assert process.poll() is None, f"trainer exited early: {process.stderr.read()[-3000:]}"
            assert time.time() < deadline, "the checkpoint write never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert staging.is_dir() and not (staging / META).exists()
    assert (run_dir / "checkpoints" / LATEST).read_text() == tag_for(2)  # the torn save was never committed
    assert latest_checkpoint(run_dir / "checkpoints").name == tag_for(2)

    assert main(run_args(shard_dir, run_dir)) == 0  # resumes from step 2, no error
    assert not staging.exists()  # the leftover was cleared
    assert latest_checkpoint(run_dir / "checkpoints").name == tag_for(4)
    assert sorted(losses_by_step(run_dir)) == [1, 2, 3, 4]


def test_latest_never_points_at_a_torn_checkpoint(tmp_path):
    save_dir = tmp_path / "checkpoints"
    good, torn = save_dir / tag_for(2), save_dir / tag_for(4)
    good.mkdir(parents=True)
    (good / META).write_text(json.dumps({"step": 2}))
    torn.mkdir()  # files but no meta.json: an interrupted write
    (torn / "mp_rank_00_model_states.pt").write_bytes(b"half")
    (save_dir / LATEST).write_text(tag_for(4))
    assert latest_checkpoint(save_dir) == good
    (save_dir / LATEST).write_text(tag_for(6))  # a folder that does not exist
    assert latest_checkpoint(save_dir) == good
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, shard_dir, monkeypatch):  # noqa: F811
    after_step = TrainingLoop._after_step

    def signal_at_step_one(self):
        after_step(self)
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainingLoop, "_after_step", signal_at_step_one)
    run_dir = tmp_path / "run"
    assert main(run_args(shard_dir, run_dir)) == EXIT_INTERRUPTED
    assert latest_checkpoint(run_dir / "checkpoints").name == tag_for(1)
    assert events(run_dir, "interrupted")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_sigterm_to_the_process_group_with_loader_workers(tmp_path, shard_dir):  # noqa: F811
    """SLURM and `kill -- -PGID` signal every process, data-loader workers included."""
    run_dir = tmp_path / "run"
    argv = run_args(shard_dir, run_dir, "schedule.total_steps=100000", "checkpoint.every=100000",
                    "data.num_workers=2")
    process = subprocess.Popen([sys.executable, "-m", "unimodal.training.train", *argv], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (run_dir / "metrics.jsonl").is_file() or not losses_by_step(run_dir):
            assert process.poll() is None, f"trainer exited early: {process.stdout.read()[-3000:]}"
            assert time.time() < deadline, "training never started"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert latest_checkpoint(run_dir / "checkpoints").name == tag_for(events(run_dir, "interrupted")[0]["step"])


def _poison_losses(monkeypatch, bad_calls):
    """Make the training loss NaN on the given micro-batches (1-based calls of the objective)."""
    losses, calls = Objective.losses, {"n": 0}

    def poisoned(self, *args, **kwargs):
        output = losses(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in bad_calls(calls["n"]):
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(Objective, "losses", poisoned)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_nonfinite_loss_is_skipped_and_logged(tmp_path, shard_dir, monkeypatch, zero_stage):  # noqa: F811
    _poison_losses(monkeypatch, lambda n: {2})
    run_dir = tmp_path / "run"
    assert main(run_args(shard_dir, run_dir, f"deepspeed.zero_stage={zero_stage}")) == 0
    skipped = events(run_dir, "nonfinite_loss")
    assert len(skipped) == 1 and skipped[0]["total"] == 1
    losses = losses_by_step(run_dir)
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())


def test_repeated_nonfinite_losses_stop_with_a_checkpoint(tmp_path, shard_dir, monkeypatch, caplog):  # noqa: F811
    _poison_losses(monkeypatch, lambda n: set(range(2, 100)))
    run_dir = tmp_path / "run"
    code = main(run_args(shard_dir, run_dir, "faults.max_consecutive_nonfinite=3"))
    assert code == EXIT_DIVERGED
    assert "non-finite losses in a row" in caplog.text
    assert latest_checkpoint(run_dir / "checkpoints").name == tag_for(1)  # the last good state
    assert len(events(run_dir, "nonfinite_loss")) == 3 and events(run_dir, "stopped")


@pytest.mark.parametrize("bad", ["deepspeed.zero_stag=1", "model.hidden=8", "deepspeed.zero_stage=7"])
def test_bad_config_fails_before_training(tmp_path, bad, capsys):
    assert main(["model.preset=debug", f"output_dir={tmp_path / 'run'}", bad]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "run").exists()
