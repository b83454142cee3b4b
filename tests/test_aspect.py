"""Images of any aspect ratio: the native bucketing rule, the model config that carries it, the
API on mixed sizes, and the per-canvas evaluation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from unimodal.api import UniModal
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.data.checker import Checker, parse_caption
from unimodal.data.synthetic import WorldConfig, caption, render
from unimodal.evaluation import run
from unimodal.images import ImageGeometry, aspect_buckets, nearest_bucket, to_model_tensor
from unimodal.model import UniModalModel
from unimodal.training.config import load_run_config


def test_aspect_buckets_hold_about_the_budget_in_whole_patches():
    buckets = aspect_buckets(32, 4)
    assert {(32, 32), (48, 24), (24, 48), (40, 24)} <= set(buckets)
    for width, height in buckets:
        assert width % 4 == height % 4 == 0 and 0.75 * 1024 <= width * height <= 1.25 * 1024
        assert 1 / 4 <= width / height <= 4
    assert nearest_bucket(48, 24, buckets) == (48, 24)  # a bucket maps to itself
    assert nearest_bucket(640, 480, buckets) == (32, 24)  # 4:3 photo
    assert nearest_bucket(1000, 10, buckets)[0] / nearest_bucket(1000, 10, buckets)[1] == 4  # clamped at 4:1
    with pytest.raises(ValueError, match="no 64-multiple"):
        aspect_buckets(32, 64)


def test_native_geometry_keeps_the_aspect_ratio_and_square_crops():
    wide = np.zeros((50, 100, 3), dtype=np.uint8)
    wide[:, :50] = 255  # left half white
    native = to_model_tensor(wide, ImageGeometry(32, "native", 4))
    assert native.shape == (3, 24, 48)
    assert native[:, :, :20].min() > 0.9 and native[:, :, 28:].max() < -0.9  # nothing cropped away
    square = to_model_tensor(wide, ImageGeometry(32, "square", 4))
    assert square.shape == (3, 32, 32) and torch.equal(square, to_model_tensor(wide, 32))
    with pytest.raises(ValueError, match="image resize must be one of"):
        ImageGeometry(32, "stretch")


def test_data_image_resize_sets_the_models_rule():
    config = load_run_config(None, ["data.image_resize=native"])
    assert config.model.image_resize == "native" and config.model.image_geometry().resize == "native"
    assert load_run_config(None, []).model.image_resize == "square"
    # data wins: a run's saved config.yaml carries both keys, and the user overrides the data one
    assert load_run_config(None, ["model.image_resize=native", "data.image_resize=square"]).model.image_resize == "square"
    with pytest.raises(ValueError, match="data.image_resize must be"):
        load_run_config(None, ["data.image_resize=Native"])
    with pytest.raises(ValueError, match="packed rows replace the buckets"):
        load_run_config(None, ["data.length_buckets=2"])


def test_canvases_that_would_mislabel_or_fail_late_are_refused_before_training():
    with pytest.raises(ValueError, match="set data.image_resize=native"):
        load_run_config(None, ["synthetic.canvases=[[48, 24], [32, 32]]"])
    with pytest.raises(ValueError, match="not one of the native buckets"):
        load_run_config(None, ["data.image_resize=native", "synthetic.canvases=[[100, 50]]"])
    with pytest.raises(ValueError, match="multiples of 4"):
        load_run_config(None, ["eval.final.canvases=[[30, 30]]"])
    config = load_run_config(None, ["data.image_resize=native", "synthetic.canvases=[[48, 24], [24, 48]]",
                                    "eval.final.canvases=[[40, 24]]"])
    assert config.synthetic.canvases == [(48, 24), (24, 48)]


@pytest.fixture
def native_api(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size, image_size=32, image_resize="native")
    model = UniModalModel(config)
    for param in model.denoise_head.parameters():
        torch.nn.init.normal_(param, std=0.02)
    return UniModal(model, tokenizer, PixelCodec())


def test_native_model_captions_mixed_sizes_in_one_batch_as_one_by_one(native_api, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((24, 48), (48, 24), (32, 32), (30, 61))]
    batched = native_api.caption(images, max_new_tokens=6)
    assert batched == [native_api.caption([image], max_new_tokens=6)[0] for image in images]
    # the export carries the rule: a reloaded model sizes its inputs alike
    native_api.save_pretrained(tmp_path / "export")
    reloaded = UniModal.from_pretrained(tmp_path / "export")
    assert reloaded.config.image_resize == "native"
    assert reloaded.caption(images, max_new_tokens=6) == batched


def test_generate_at_every_canvas_matches_alone_and_batched(native_api):
    for width, height in ((48, 24), (24, 48), (40, 24)):
        pair = native_api.generate(["a red circle", "a blue square"], num_steps=2, height=height, width=width,
                                   output_type="pt")
        assert pair.shape == (2, 3, height, width)
        alone = native_api.generate(["a blue square"], num_steps=2, height=height, width=width, seed=1,
                                    output_type="pt")
        assert_close(pair[1:], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="whole number of pixels"):
        native_api.generate(["a"], num_steps=1, height=24.0, width=48)
    assert native_api.generate(["a"], num_steps=1, height=np.int64(24), width=48, output_type="pt").shape[-2:] == (24, 48)


class CanvasOracle:
    """A perfect model of the synthetic world on any canvas: reads images back with the checker and
    renders prompts at the size asked for."""

    def __init__(self, config: WorldConfig):
        self.config = config

    def caption(self, images, max_new_tokens=32):
        return [caption(Checker(self.config).detect(image)) for image in images]

    def answer(self, images, questions, max_new_tokens=16):
        return ["no"] * len(questions)

    def generate(self, prompts, num_steps=25, guidance_scale=3.0, seed=0, height=None, width=None):
        world = self.config.with_canvas(width or self.config.canvas[0], height or self.config.canvas[1])
        return [Image.fromarray(render(parse_caption(p, world), world)) for p in prompts]


def test_per_canvas_evaluation_reports_metric_at_canvas_keys(tmp_path):
    canvases = [[32, 32], [48, 24], [24, 48], [40, 24]]
    config = run.EvalConfig(suite="tiny", num_samples=6, qa_per_image=1, num_steps=1, canvases=canvases,
                            out_dir=str(tmp_path), progress=False)
    metrics = run.run_suite(CanvasOracle(WorldConfig()), config)
    for width, height in canvases:
        name = f"{width}x{height}"
        assert metrics[f"caption_exact@{name}"] == 1.0
        assert metrics[f"gen_all_correct_seen@{name}"] == metrics[f"gen_all_correct_heldout@{name}"] == 1.0
        assert (tmp_path / name / "metrics.json").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "| caption_exact | 1.000 | 1.000 | 1.000 | 1.000 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        run.EvalConfig(suite="tiny", canvases=["48by24"])
    with pytest.raises(ValueError, match="only read by the shapes suites"):
        run.EvalConfig(suite="shards", data="x.tar", canvases=["48x24"])
