"""Two ranks that must stay in step: torchrun with 2 CPU processes (gloo), the debug model, 4 steps.

- Under ZeRO-3 every forward and backward call gathers each layer's parameters from all ranks, so
  ranks that run a micro-batch as different numbers of parts (as the length buckets that packed
  rows replaced did) wait on each other forever. The ranks here read batches of different lengths
  (rank 0 captions only, rank 1 multi-turn VQA beside captions), packed into rows; both must
  finish having made the same number of forward calls.
- A rank that stops taking part (here: sleeps past the timeout at step 2) must end the run with a
  message naming the rank and the step, never hang it (`deepspeed.collective_timeout_s`).

This file is also the per-rank entry point that torchrun starts (`python tests/test_distributed.py
SPEC key=value ...`): it applies the test's per-rank overrides and fault, then runs the trainer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training_support import REPO, losses_by_step, run_args, shard_dir, subprocess_env  # noqa: F401

RUN_LIMIT_S = 150  # a hang fails the test after this long instead of stalling the suite
TIMEOUT_S = 5  # deepspeed.collective_timeout_s of the fault test


def torchrun(spec: dict, argv: list[str], limit_s: float = RUN_LIMIT_S) -> tuple[int, str, float]:
    """Run this file under torchrun with 2 processes; (exit code, output, seconds). On `limit_s` the
    whole process group is killed (torchrun's workers included) and the test fails as a hang."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, json.dumps(spec), *argv]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the 2-process run hung for {limit_s} s:\n{output[-4000:]}")
    return process.returncode, output, time.monotonic() - started


def uneven_run_args(shard_dir: Path, out: Path, *extra: str) -> list[str]:  # noqa: F811
    """Batches of 4 examples packed into rows of up to 128 positions, lengths padded to 16: the
    ranks' batches differ in rows and lengths (length buckets split such batches into different
    numbers of parts on each rank, the hang this guards against)."""
    return run_args(shard_dir, out, "data.max_tokens_per_row=128", "data.length_multiple=16",
                    "eval.enabled=false", "checkpoint.export=false", *extra)


@pytest.mark.parametrize("zero_stage", [3, 2])
def test_ranks_with_different_lengths_make_the_same_forward_calls(tmp_path, shard_dir, zero_stage):  # noqa: F811
    out = tmp_path / "run"
    spec = {"counts_dir": str(tmp_path), "rank_overrides": {
        "0": ["data.task_weights={caption: 1.0}"], "1": ["data.vqa_turns=4"]}}
    # A short timeout: a mismatch fails in seconds (exit 4) rather than at the hang limit.
    code, output, _ = torchrun(spec, uneven_run_args(shard_dir, out, f"deepspeed.zero_stage={zero_stage}",
                                                     "deepspeed.collective_timeout_s=20"))
    assert code == 0, output[-4000:]
    assert sorted(losses_by_step(out)) == [1, 2, 3, 4]
    counts = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    lengths = [{n for batch in c["lengths"] for n in batch} for c in counts]
    assert lengths[0] != lengths[1]  # the ranks really did see different lengths
    assert counts[0]["forward_calls"] == counts[1]["forward_calls"] == 4  # 4 steps, one forward each


def test_a_stalled_rank_ends_the_run_with_a_message_naming_rank_and_step(tmp_path, shard_dir):  # noqa: F811
    out = tmp_path / "run"
    spec = {"counts_dir": str(tmp_path), "stall": {"rank": 1, "step": 2, "seconds": TIMEOUT_S + 4}}
    code, output, seconds = torchrun(spec, uneven_run_args(shard_dir, out, "deepspeed.zero_stage=3",
                                                           f"deepspeed.collective_timeout_s={TIMEOUT_S}"),
                                     limit_s=120)
    assert code != 0, output[-4000:]
    assert f"rank 0: a collective waited more than {TIMEOUT_S} s at step 2 (1 done)" in output, output[-4000:]
    assert "another rank probably diverged or died" in output
    # rank 1 wakes up to a peer that is gone: it stops too, rather than waiting for its own timeout
    assert "rank 1: a collective failed at step 2" in output or "rank 1: a collective waited" in output, output[-4000:]
    failed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in failed if r.get("event") == "collective_failed"] == [1]
    stalled_at = json.loads((tmp_path / "stall.json").read_text())["time"]
    assert time.time() - stalled_at < 30 + TIMEOUT_S, f"the run took {seconds:.0f} s in all"


# ------------------------------------------------------------------------- the per-rank entry point
def _rank_main(spec: dict, argv: list[str]) -> int:
    """One torchrun worker: the spec's overrides for this rank, a forward-call counter, an optional
    stall (sleep at the start of a step, as a rank stuck elsewhere would), then the trainer."""
    from unimodal.model import UniModalModel
    from unimodal.training.loop import TrainingLoop
    from unimodal.training.train import main

    rank = int(os.environ["RANK"])
    counts: dict = {"forward_calls": 0, "lengths": []}
    forward = UniModalModel.forward

    def counted(self, batch, *args, **kwargs):
        counts["forward_calls"] += 1
        counts["lengths"].append(batch.example_lengths.tolist())
        return forward(self, batch, *args, **kwargs)

    UniModalModel.forward = counted
    stall = spec.get("stall")
    if stall and stall["rank"] == rank:
        micro_batch = TrainingLoop.micro_batch

        def stalling(self, batch):
            if self.step + 1 == stall["step"] and not counts.get("stalled"):
                counts["stalled"] = True
                Path(spec["counts_dir"], "stall.json").write_text(json.dumps({"time": time.time()}))
                time.sleep(stall["seconds"])
            return micro_batch(self, batch)

        TrainingLoop.micro_batch = stalling
    code = main([*argv, *spec.get("rank_overrides", {}).get(str(rank), [])])
    Path(spec["counts_dir"], f"rank{rank}.json").write_text(json.dumps(counts))
    return code


if __name__ == "__main__":
    sys.exit(_rank_main(json.loads(sys.argv[1]), sys.argv[2:]))
