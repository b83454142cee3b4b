"""The main job end to end on a debug model: synthetic shards -> tokenizer -> train (with grids and
in-training eval) -> export -> eval, everything in one run folder; plus a given tokenizer used as is."""

from __future__ import annotations

import json

import pytest
import yaml
from test_training_support import events, losses_by_step, run_args, shard_dir  # noqa: F401  (fixture)

from unimodal.api import UniModal
from unimodal.tokenizer import Tokenizer
from unimodal.training.config import run_config_from_dict
from unimodal.training.train import main


def test_main_job_writes_everything_in_one_folder(tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        "model.preset=debug", f"output_dir={run_dir}", "synthetic.enabled=true", "synthetic.num_train=120",
        "synthetic.num_eval=8", "synthetic.num_heldout=8", "synthetic.samples_per_shard=40",
        "synthetic.world={max_shapes: 2}", "tokenizer.vocab_size=128", "tokenizer.max_samples=20",
        "data.batch_size=4", "data.num_workers=1", "data.shuffle_buffer=16", "schedule.total_steps=4",
        "schedule.warmup_steps=1", "checkpoint.every=2", "logging.every=2", "logging.progress_bar=false",
        "logging.sample_every=2", "logging.num_samples=2", "logging.sample_steps=2",
        # the options the other tests leave at their defaults
        "deepspeed.zero_stage=1", "deepspeed.precision=bf16_autocast", "deepspeed.gradient_accumulation_steps=2",
        "optimizer.impl=torch", "eval.every=2", "eval.num_samples=2", "eval.num_steps=2", "eval.enabled=true",
        "eval.final.num_samples=2", "eval.final.num_steps=2", "eval.final.qa_per_image=1",
    ]
    assert main(argv) == 0

    for split in ("train", "eval", "heldout"):
        assert list((run_dir / "shards" / split).glob(f"{split}-*.tar"))
    assert (run_dir / "tokenizer" / "tokenizer.model").is_file()
    saved = run_config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert saved.deepspeed.precision == "bf16_autocast" and saved.data.train_shards == str(run_dir / "shards" / "train")
    for step in (2, 4):
        assert (run_dir / "samples" / f"step_{step:08d}_generate.png").is_file()
        assert (run_dir / "samples" / f"step_{step:08d}_caption.png").is_file()
    assert (run_dir / "loss_curves.png").is_file() and list((run_dir / "tensorboard").iterdir())
    assert (run_dir / "export" / "world.json").is_file()
    assert json.loads((run_dir / "export" / "world.json").read_text())["max_shapes"] == 2
    assert (run_dir / "eval" / "metrics.json").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/caption_cider" in r and r["step"] == 2 for r in records)  # in-training eval
    assert any("eval/caption_cider" in r and r["step"] == 4 for r in records)  # the final runner
    assert sorted(losses_by_step(run_dir)) == [2, 4] and len(events(run_dir, "samples")) == 2
    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert outputs["model (export)"] == str(run_dir / "export")

    api = UniModal.from_pretrained(run_dir / "export")
    assert len(api.generate(["a red circle"], num_steps=2, guidance_scale=1.0)) == 1

    # Started again, the finished run resumes at its last step: the shards, world and tokenizer are
    # reused, nothing is trained twice, and the export is rewritten.
    assert main(argv + ["eval.enabled=false"]) == 0
    assert sorted(losses_by_step(run_dir)) == [2, 4]


def test_a_given_tokenizer_is_used_as_is(tmp_path, shard_dir):  # noqa: F811
    tokenizer = Tokenizer.train(["a red circle on the left", "question: how many? answer: 2"] * 10, vocab_size=64)
    tokenizer.save_pretrained(tmp_path / "tok")
    run_dir = tmp_path / "run"
    assert main(run_args(shard_dir, run_dir, f"tokenizer.path={tmp_path / 'tok' / 'tokenizer.model'}",
                         "schedule.total_steps=1", "checkpoint.every=1")) == 0
    assert not (run_dir / "tokenizer").exists()
    exported = Tokenizer.from_pretrained(run_dir / "export")
    assert exported.vocab_size == tokenizer.vocab_size
    assert exported.encode("a red circle") == tokenizer.encode("a red circle")


def test_a_trial_runs_shards_are_not_silently_reused_by_a_larger_run(tmp_path):
    """Synthetic splits remember their sample count and seed: a config asking for another count in the
    same folder fails with a message instead of training on the trial's few samples."""
    from unimodal.training import pipeline

    def config(num_train):
        return run_config_from_dict({"model": {"preset": "debug"}, "output_dir": str(tmp_path / "run"),
                                     "synthetic": {"enabled": True, "num_train": num_train, "num_eval": 4,
                                                   "num_heldout": 4, "samples_per_shard": 10}})

    pipeline.ensure_synthetic_shards(config(12), True, lambda: None)
    pipeline.ensure_synthetic_shards(config(12), True, lambda: None)  # the same config reuses them
    with pytest.raises(ValueError, match=r"holds 12 samples .* synthetic.num_train=30"):
        pipeline.ensure_synthetic_shards(config(30), True, lambda: None)


def test_resuming_under_another_config_warns_with_the_changed_keys(tmp_path, caplog):
    from unimodal.training.config import config_changes
    from unimodal.training.train import warn_if_config_changed

    old = run_config_from_dict({"model": {"preset": "debug"}, "output_dir": str(tmp_path)})
    new = run_config_from_dict({"model": {"preset": "debug"}, "output_dir": str(tmp_path),
                                "schedule": {"total_steps": 2000}, "synthetic": {"num_train": 5}})
    assert config_changes(old.to_dict(), new.to_dict()) == [
        f"schedule.total_steps: {old.schedule.total_steps!r} -> 2000",
        f"synthetic.num_train: {old.synthetic.num_train!r} -> 5"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old.to_dict()))
    with caplog.at_level("WARNING"):
        warn_if_config_changed(tmp_path, old)
        assert not caplog.records
        warn_if_config_changed(tmp_path, new)
    assert "schedule.total_steps" in caplog.text and "synthetic.num_train" in caplog.text
