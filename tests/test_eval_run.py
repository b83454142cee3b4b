"""The evaluation runner: both suites end to end on a tiny random model (files and keys exist,
values in range), and on an oracle whose scores are known (a perfect model must score 1)."""

import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.api import UniModal
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.data.checker import Checker, parse_caption
from unimodal.data.synthetic import World, WorldConfig, caption, question_answers, render
from unimodal.evaluation import run
from unimodal.evaluation.shards_suite import run_shards
from unimodal.evaluation.suites import EvalSettings, verdict
from unimodal.model import UniModalModel
from unimodal.tokenizer import Tokenizer

CATEGORIES = ("count", "colour", "shape", "position", "size")
NUM_SHARD_SAMPLES = 5  # usable ones; one more is corrupt


class Oracle:
    """A perfect model of the synthetic world with UniModal's interface: it reads each scene back
    with the checker (exact on rendered images) and renders prompts with the world's renderer."""

    def __init__(self, config: WorldConfig):
        self.config, self.checker, self.seeds = config, Checker(config), []

    def caption(self, images, max_new_tokens=32):
        return [caption(self.checker.detect(image)) for image in images]

    def answer(self, images, questions, max_new_tokens=16):
        answers = []
        for image, question in zip(images, questions):
            truth = {qa["question"]: qa["answer"] for qa in question_answers(self.checker.detect(image), self.config)}
            answers.append(truth.get(question, "no"))  # the one question not derived from the scene: absent combos
        return answers

    def generate(self, prompts, num_steps=25, guidance_scale=3.0, seed=0):
        self.seeds.append(seed)
        return [Image.fromarray(render(parse_caption(p, self.config), self.config)) for p in prompts]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random debug-size model at the synthetic world's 32 px, saved as an export folder."""
    samples = list(World().samples(40))
    texts = [s.caption for s in samples] + [f"question: {qa['question']} answer: {qa['answer']}"
                                            for s in samples for qa in s.qa]
    tokenizer = Tokenizer.train(texts, vocab_size=200)
    torch.manual_seed(0)
    model = UniModalModel(ModelConfig.preset("debug", image_size=32, vocab_size=tokenizer.vocab_size))
    folder = tmp_path_factory.mktemp("eval") / "export"
    UniModal(model, tokenizer, PixelCodec()).save_pretrained(folder)
    return folder


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two plain-tarfile shards: synthetic eval/held-out scenes (PNG + caption + QA/objects JSON),
    one sample with only a caption, and one corrupt PNG. Returns the brace pattern."""
    folder = tmp_path_factory.mktemp("shards")
    world = World()
    samples = [world.sample(0, "eval"), world.sample(1, "eval"), world.sample(0, "heldout"),
               world.sample(1, "heldout")]
    with tarfile.open(folder / "000000.tar", "w") as tar:
        for i, s in enumerate(samples[:2]):
            _add(tar, f"s{i}.png", _png(s.image))
            _add(tar, f"s{i}.txt", s.caption.encode())
            _add(tar, f"s{i}.json", json.dumps(s.metadata()).encode())
        _add(tar, "bad.png", b"\x89PNG\r\n\x1a\n not an image")
        _add(tar, "bad.txt", b"a broken image")
    with tarfile.open(folder / "000001.tar", "w") as tar:
        for i, s in enumerate(samples[2:], start=2):
            _add(tar, f"s{i}.png", _png(s.image))
            _add(tar, f"s{i}.txt", s.caption.encode())
            _add(tar, f"s{i}.json", json.dumps(s.metadata()).encode())
        plain = world.sample(2, "eval")
        _add(tar, "plain.png", _png(plain.image))  # a user's shard: image and caption only
        _add(tar, "plain.txt", plain.caption.encode())
    return str(folder / "{000000..000001}.tar")


def _check_range(metrics: dict) -> None:
    for key, value in metrics.items():
        if key.startswith(("caption_exact", "caption_bleu4", "vqa_accuracy", "gen_")):
            assert 0.0 <= value <= 1.0, (key, value)
    assert metrics["caption_cider"] >= 0.0


def test_shapes_suite_writes_metrics_summary_and_grids(export, tmp_path):
    out = tmp_path / "shapes"
    metrics = run.main(["--model", str(export), "--suite", "shapes", "--num-samples", "8", "--num-steps", "2",
                        "--qa-per-image", "2", "--batch-size", "3", "--max-caption-tokens", "24", "--out", str(out)])
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for key in ("caption_exact", "caption_cider", "caption_bleu4", "vqa_accuracy", "gen_all_correct_seen",
                "gen_all_correct_heldout", "gen_all_correct", "vqa_accuracy_count"):
        assert key in metrics
    for category in CATEGORIES:
        assert f"gen_{category}_seen" in metrics and f"gen_{category}_heldout" in metrics
    assert (metrics["num_caption"], metrics["num_vqa"], metrics["num_gen_seen"], metrics["num_gen_heldout"]) == (
        8, 16, 4, 4)
    _check_range(metrics)
    summary = (out / "summary.md").read_text()
    assert "| caption_exact |" in summary
    for grid in ("captions", "generated_seen", "generated_heldout"):
        assert f"({grid}.png)" in summary
        assert Image.open(out / f"{grid}.png").size[0] > 128
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted({line["task"] for line in lines}) == ["caption", "generation", "vqa"]
    assert all(line["verdict"] == "OK" or line["verdict"].startswith("wrong: ")
               for line in lines if line["task"] == "generation")


def test_shards_suite_counts_corrupt_samples_and_scores_what_the_shards_carry(export, shards, tmp_path):
    out = tmp_path / "shards"
    metrics = run.main(["--model", str(export), "--suite", "shards", "--data", shards, "--num-steps", "2",
                        "--qa-per-image", "3", "--no-fid", "--out", str(out), "--no-progress"])
    assert (metrics["skipped"], metrics["skipped_corrupt_image"]) == (1, 1)
    assert metrics["num_caption"] == metrics["num_samples"] == metrics["num_gen"] == NUM_SHARD_SAMPLES
    assert metrics["num_vqa"] == 4 * 3  # 3 questions of each sample with QA; the plain one has none
    assert (metrics["num_gen_seen"], metrics["num_gen_heldout"]) == (2, 2)  # the plain sample has no objects
    assert "fid" not in metrics
    _check_range(metrics)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "captions.png").is_file() and (out / "generated.png").is_file()


@pytest.mark.parametrize("suite", ["shapes", "shards"])
def test_run_suite_gives_the_metrics_of_the_command_line(export, shards, tmp_path, suite):
    """`run_suite(model, EvalConfig(...))` is what `main(argv)` runs after parsing and loading."""
    data = shards if suite == "shards" else None
    argv = ["--model", str(export), "--suite", suite, "--num-samples", "4", "--num-steps", "2", "--qa-per-image", "1",
            "--batch-size", "3", "--max-caption-tokens", "16", "--guidance-scale", "2", "--seed", "5", "--no-fid",
            "--no-progress", "--out", str(tmp_path / "cli"), *(["--data", data] if data else [])]
    config = run.EvalConfig(suite=suite, data=data, num_samples=4, num_steps=2, qa_per_image=1, batch_size=3,
                            max_caption_tokens=16, guidance_scale=2.0, seed=5, fid=False, progress=False,
                            out_dir=str(tmp_path / "typed"))
    assert run.config_from_args(run._parser().parse_args(argv)) == dataclasses.replace(config,
                                                                                       out_dir=str(tmp_path / "cli"))
    metrics = run.run_suite(UniModal.from_pretrained(export), config)
    assert metrics == run.main(argv)
    assert json.loads((tmp_path / "typed" / "metrics.json").read_text()) == metrics


def test_run_suite_raises_what_main_reports_as_a_usage_error(export):
    model = UniModal.from_pretrained(export)
    with pytest.raises(ValueError, match="needs --data"):
        run.run_suite(model, run.EvalConfig(suite="shards"))
    with pytest.raises(ValueError, match="unknown suite 'coco'"):
        run.EvalConfig(suite="coco")
    with pytest.raises(ValueError, match="only read by the shards suite"):
        run.EvalConfig(suite="tiny", data="x.tar")


def test_a_perfect_model_scores_one_and_batches_use_consecutive_seeds():
    oracle = Oracle(WorldConfig())
    metrics = run.evaluate_shapes(oracle, num_samples=10, num_steps=1, qa_per_image=0, batch_size=4, seed=7)
    assert metrics["caption_exact"] == metrics["vqa_accuracy"] == 1.0
    assert metrics["caption_bleu4"] == pytest.approx(1.0)
    assert metrics["caption_cider"] > 1.0
    for group in ("seen", "heldout"):
        assert metrics[f"gen_all_correct_{group}"] == metrics[f"gen_object_accuracy_{group}"] == 1.0
        assert all(metrics[f"gen_{category}_{group}"] == 1.0 for category in CATEGORIES)
        assert metrics[f"num_gen_{group}"] == 5
    assert metrics["num_vqa"] == sum(len(World().sample(i, "eval").qa) for i in range(10))  # every question
    assert metrics["vqa_accuracy_exists"] == 1.0
    assert oracle.seeds == [7, 11, 15]  # image i always gets the noise of seed + i


def test_a_perfect_model_scores_one_on_synthetic_shards_with_fid_near_zero(shards, tmp_path):
    config = WorldConfig()
    settings = EvalSettings(num_steps=1, progress=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the Inception on 2 busy shared cores runs faster on one (see test_eval_fid.py)
    try:
        metrics = run_shards(Oracle(config), shards, image_size=32, num_samples=4, settings=settings, fid=True,
                             world_config=config, out_dir=tmp_path)
    finally:
        torch.set_num_threads(previous)
    assert metrics["caption_exact"] == metrics["vqa_accuracy"] == metrics["gen_all_correct"] == 1.0
    assert metrics["num_samples"] == 4 and metrics["skipped"] == 1
    # Identical sets: FID ~ 0 (KID's unbiased estimate on random subsets of 4 is too noisy to pin).
    assert abs(metrics["fid"]) < 0.1 and metrics["num_fid_real"] == metrics["num_fid_fake"] == 4


def test_wrong_generations_are_scored_and_labelled_per_category():
    config = WorldConfig()
    sample = World(config).sample(3, "eval")
    checker = Checker(config)
    blank = np.zeros_like(sample.image)
    result = checker.check(blank, sample.objects)
    assert verdict(result) == "wrong: " + ", ".join(CATEGORIES)
    recoloured = [o._replace(colour="cyan" if o.colour != "cyan" else "red") for o in sample.objects]
    assert verdict(checker.check(render(recoloured, config), sample.objects)) == "wrong: colour"
    assert verdict(checker.check(sample.image, sample.objects)) == "OK"


def test_world_config_comes_from_the_flag_then_world_json_then_the_default(tmp_path):
    assert run.load_world_config(None, tmp_path) == WorldConfig()
    (tmp_path / "world.json").write_text(json.dumps({"image_size": 24, "max_shapes": 2}))
    assert run.load_world_config(None, tmp_path) == WorldConfig(image_size=24, max_shapes=2)
    flag = tmp_path / "world.yaml"
    flag.write_text("max_shapes: 1\n")
    assert run.load_world_config(flag, tmp_path) == WorldConfig(max_shapes=1)
    (tmp_path / "bad.yaml").write_text("max_shape: 1\n")
    with pytest.raises(ValueError, match="max_shape"):
        run.load_world_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("argv, message", [
    (["--suite", "coco"], "unknown suite 'coco'"),
    (["--suite", "shards"], "needs --data"),
    (["--suite", "shapes", "--model", "MISSING"], "model folder not found"),
    (["--suite", "shapes", "--model", "NOT_EXPORT"], "not a unimodal export folder"),
])
def test_usage_errors_exit_with_status_2_and_a_message(export, tmp_path, capsys, argv, message):
    (tmp_path / "not_export").mkdir()
    names = {"MISSING": str(tmp_path / "missing"), "NOT_EXPORT": str(tmp_path / "not_export")}
    argv = [names.get(a, a) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(export)]
    assert run.main(argv) == 2
    assert message in capsys.readouterr().err


class Echo:
    """Captions every image with a fixed text; generates grey images. Enough for the shards suite."""

    config = ModelConfig.preset("debug", image_size=32, vocab_size=300)

    def caption(self, images, max_new_tokens=32):
        return ["a photo of a blue square"] * len(images)

    def answer(self, images, questions, max_new_tokens=16):
        return ["no"] * len(images)

    def generate(self, prompts, num_steps=25, guidance_scale=3.0, seed=0):
        return [Image.new("RGB", (32, 32), (128, 128, 128)) for _ in prompts]


def test_class_labelled_shards_are_scored_against_the_captions_training_reads(tmp_path):
    """KEY.png + KEY.cls, no caption: with --class-names the suite's references are exactly the
    captions the training reader decodes; without it the samples are skipped, saying why."""
    from unimodal.data import DataConfig, iter_samples

    names = tmp_path / "names.txt"
    names.write_text("red circle\nblue square\n")
    world = World()
    with tarfile.open(tmp_path / "cls.tar", "w") as tar:
        for i, label in enumerate([b"1", b"0", b"1", b"5"]):  # the last is out of range
            _add(tar, f"k{i}.png", _png(world.sample(i, "eval").image))
            _add(tar, f"k{i}.cls", label)
    data = str(tmp_path / "cls.tar")
    trained = [s.caption for s in iter_samples(data, 32, classes=DataConfig(class_names=str(names)).class_captions())]
    assert trained == ["a photo of a blue square", "a photo of a red circle", "a photo of a blue square"]

    args = run._parser().parse_args(["--model", str(tmp_path), "--suite", "shards", "--data", data, "--no-fid",
                                     "--class-names", str(names), "--num-steps", "1", "--no-progress",
                                     "--out", str(tmp_path / "eval")])
    metrics = run.run_suite(Echo(), run.config_from_args(args))
    lines = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in lines if p["task"] == "caption"] == [[c] for c in trained]
    assert [p["prompt"] for p in lines if p["task"] == "generation"] == trained
    assert metrics["caption_exact"] == pytest.approx(2 / 3) and metrics["skipped_class_out_of_range"] == 1
    with pytest.raises(ValueError, match="no usable sample.*missing_class_names.*--class-names"):
        run.run_suite(Echo(), dataclasses.replace(run.config_from_args(args), class_names=None))
    names.write_text("")
    with pytest.raises(ValueError, match="names.txt is empty"):
        run.config_from_args(args).check_inputs()
