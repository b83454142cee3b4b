"""Run config composition (defaults <- YAML <- overrides), strictness, and the derived DeepSpeed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from unimodal.model import UniModalModel
from unimodal.training.config import load_run_config, run_config_from_dict, save_run_config
from unimodal.training.engine import deepspeed_config, parameter_groups
from unimodal.training.schedule import WarmupCosine

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "debug"}, "optimizer": {"lr": "3e-4"},
                                    "deepspeed": {"zero_stage": 2}}))
    config = load_run_config(path, ["deepspeed.zero_stage=3", "optimizer.betas=[0.9, 0.99]", "model.num_layers=3",
                                    "deepspeed.overrides.zero_optimization.overlap_comm=true"])
    assert config.name == "exp" and config.run_dir == Path("runs/exp")
    assert config.optimizer.lr == 3e-4  # YAML reads "3e-4" as a string; the declared type wins
    assert config.optimizer.betas == (0.9, 0.99)
    assert config.deepspeed.zero_stage == 3
    assert (config.model.hidden_size, config.model.num_layers) == (64, 3)  # preset, then override
    assert config.data.image_size == config.model.image_size == 16  # data follows the model
    saved = tmp_path / "config.yaml"
    save_run_config(config, saved)
    assert run_config_from_dict(yaml.safe_load(saved.read_text())) == config


@pytest.mark.parametrize("override, message", [
    ("deepspeed.zero_stag=3", "no key 'zero_stag'"),
    ("data.shards=x", "no key 'shards'"),
    ("optimizer.lr=fast", "not a valid float"),
    ("deepspeed.precision=fp16", "precision"),
    ("schedule.warmup_steps=5000", "warmup_steps"),
    ("zero_stage", "section.key=value"),
    ("deepspeed.compile=model", "deepspeed.compile='model'; expected one of"),
    ("deepspeed.compile=layers deepspeed.zero_stage=3", "zero_stage 3"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(None, ["model.preset=debug", *override.split(" ")])


@pytest.mark.parametrize("value, expected", [("layers", "layers"), ("none", "none"), ("off", "none"),
                                             ("false", "none")])
def test_compile_modes(value, expected):
    """An unquoted YAML `off` or `false` arrives as False and means eager, like "none"."""
    assert load_run_config(None, [f"deepspeed.compile={value}"]).deepspeed.compile == expected


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"checkpoint": {"evry": 5}}))
    with pytest.raises(ValueError, match="checkpoint.evry"):
        load_run_config(path)


def test_eval_runner_options_are_typed_keys_checked_at_load(tmp_path):
    config = load_run_config(None, ["eval.final.suite=shapes", "eval.final.num_samples=200", "eval.final.fid=true",
                                    "eval.final.guidance_scale=2"])
    final = config.eval.final
    assert (final.suite, final.num_samples, final.fid, final.guidance_scale) == ("shapes", 200, True, 2.0)
    assert run_config_from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown suite 'coco'"):
        load_run_config(None, ["eval.final.suite=coco"])
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        load_run_config(None, ["eval.final.num_steps=0"])
    with pytest.raises(ValueError, match="eval.final.num_sample"):
        load_run_config(None, ["eval.final.num_sample=3"])


@pytest.mark.parametrize("old, moved_to", [("extra_args", "eval.final.num_samples"), ("suite", "eval.final.suite")])
def test_an_old_eval_key_fails_naming_the_new_keys(tmp_path, old, moved_to):
    """`eval.extra_args` (CLI strings for the runner) and `eval.suite` became typed keys under eval.final."""
    value = ["--num-samples", "200"] if old == "extra_args" else "tiny"
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"eval": {"enabled": True, old: value}}))
    for load in (lambda: load_run_config(path), lambda: load_run_config(None, [f"eval.{old}={value}"])):
        with pytest.raises(ValueError, match=f"eval.{old} .*{moved_to}") as error:
            load()
        if old == "extra_args":
            assert "eval.final.qa_per_image" in str(error.value) and "eval.final.num_steps" in str(error.value)


def test_data_image_size_must_agree_with_the_model():
    with pytest.raises(ValueError, match="data.image_size"):
        load_run_config(None, ["model.preset=debug", "data.image_size=32"])


def test_deepspeed_config_is_derived():
    config = load_run_config(None, ["model.preset=debug", "data.batch_size=6", "deepspeed.gradient_accumulation_steps=3",
                                    "deepspeed.zero_stage=3", "deepspeed.gradient_clipping=0.5",
                                    "deepspeed.overrides.zero_optimization.offload_param.device=cpu"])
    ds = deepspeed_config(config, world_size=4, device=torch.device("cpu"))
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 6 * 3 * 4
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is False  # fp32 on CPU
    assert ds["optimizer"]["params"]["torch_adam"] is True  # inside params, or FusedAdam gets compiled
    assert deepspeed_config(config, 1, torch.device("cuda"))["bf16"]["enabled"] is True  # auto -> bf16 on GPU
    torch_opt = load_run_config(None, ["model.preset=debug", "optimizer.impl=torch"])
    assert "optimizer" not in deepspeed_config(torch_opt, 1, torch.device("cpu"))


def test_weight_decay_skips_norms_biases_and_embeddings():
    from unimodal.config import ModelConfig

    model = UniModalModel(ModelConfig.preset("debug"))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert any("embed_tokens" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine():
    schedule = WarmupCosine(total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0) and schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_run_config(CONFIGS / name)
    assert config.schedule.total_steps > 0


def test_a_bad_class_names_file_is_a_config_error_and_the_final_eval_reads_the_same_names(tmp_path, capsys):
    from unimodal.training import train

    blank = tmp_path / "names.txt"
    blank.write_text("tench\n\n")
    assert train.main(["--dry-run", f"data.class_names={blank}"]) == train.EXIT_CONFIG
    assert "names.txt: line 2 (class 1) is blank" in capsys.readouterr().err
    blank.write_text("tench\ngoldfish\n")
    config = run_config_from_dict({"data": {"class_names": str(blank), "class_caption_template": "{name}"},
                                   "eval": {"final": {"suite": "shards"}}})
    final = train.eval_config(config, tmp_path)
    assert (final.class_names, final.class_caption_template) == (str(blank), "{name}")
