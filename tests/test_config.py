import pytest

from unimodal.config import PRESETS, ModelConfig


def test_presets_build_and_derive_sizes():
    for name in PRESETS:
        config = ModelConfig.preset(name)
        assert config.num_image_tokens == (config.image_size // config.downsample_factor // config.patch_size) ** 2
    tiny = ModelConfig.preset("tiny")
    assert (tiny.image_size, tiny.patch_size, tiny.num_image_tokens, tiny.patch_dim) == (32, 4, 64, 48)


def test_yaml_with_preset_and_overrides(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny\nnum_layers: 3\nobjective: ddpm\n")
    config = ModelConfig.from_yaml(path)
    assert (config.hidden_size, config.num_layers, config.objective) == (256, 3, "ddpm")


@pytest.mark.parametrize("values, field", [
    ({"patch_size": 5}, "patch_size"),
    ({"hidden_size": 100, "num_heads": 8}, "num_heads"),
    ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"objective": "gan"}, "objective"),
    ({"codec": "pixel", "latent_channels": 4}, "codec"),
    ({"hidden_sise": 64}, "hidden_sise"),
    ({"preset": "huge"}, "huge"),
    ({"condition_max_noise": 2.0}, "condition_max_noise"),
])
def test_bad_configs_name_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict(values)


def test_round_trip_through_dict():
    config = ModelConfig.preset("base")
    assert ModelConfig.from_dict(config.to_dict()) == config
