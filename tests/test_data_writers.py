"""Shard writers (synthetic, folder + CSV/JSONL, Hugging Face datasets) and latent caching."""

import csv
import io
import json
import os
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported anywhere

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.data import cache_latents, sources, write_shards
from unimodal.data.checker import Checker
from unimodal.data.config import DataConfig
from unimodal.data.reader import build_train_loader, iter_samples
from unimodal.data.synthetic import World, WorldConfig
from unimodal.layout import SequenceLayout
from unimodal.tokenizer import Tokenizer


def members(pattern_or_paths):
    paths = pattern_or_paths if isinstance(pattern_or_paths, list) else [pattern_or_paths]
    names = []
    for path in paths:
        with tarfile.open(path) as tar:
            names += tar.getnames()
    return names


def test_synthetic_cli_writes_shards_and_summary(tmp_path, capsys):
    out = tmp_path / "syn"
    assert write_shards.main(["synthetic", "--out", str(out), "--num-samples", "25", "--seed", "3",
                              "--split", "heldout", "--max-count", "10", "--image-size", "24", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 25 samples in 3 shards" in printed and f"{out}/heldout-{{000000..000002}}.tar" in printed
    paths = sorted(str(p) for p in out.glob("*.tar"))
    names = members(paths)
    assert len(names) == 75 and "000000000.png" in names and "000000000.json" in names
    samples = list(iter_samples(str(out), image_size=24))
    assert len(samples) == 25 and all(s.metadata["heldout"] for s in samples)
    assert samples[3].caption == World().sample(3, "heldout", 3).caption
    # Same arguments, same bytes (fixed tar times); an occupied folder is refused.
    again = write_shards.write_synthetic_shards(tmp_path / "again", 25, seed=3, split="heldout", max_count=10,
                                                progress=False, world_config=WorldConfig(image_size=24))
    assert [open(p, "rb").read() for p in again.shards] == [open(p, "rb").read() for p in paths]
    with pytest.raises(ValueError, match="already holds"):
        write_shards.write_synthetic_shards(out, 5, split="heldout", progress=False)


def _tar_samples(paths):
    """{key: {"png": PIL image, "txt": str, "json": dict}} of written shards."""
    samples = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if suffix == "png":
                    value = Image.open(io.BytesIO(data))
                else:
                    value = json.loads(data) if suffix == "json" else data.decode()
                samples.setdefault(key, {})[suffix] = value
    return samples


def test_synthetic_shards_cycle_canvases_in_equal_parts(tmp_path, capsys):
    canvases = [(32, 32), (48, 24), (24, 48)]
    summary = write_shards.write_synthetic_shards(tmp_path / "mixed", 12, seed=4, split="eval", canvases=canvases,
                                                  max_count=5, progress=False)
    samples = _tar_samples(summary.shards)
    assert summary.num_samples == 12 and len(samples) == 12
    checker = Checker()
    for index, (key, sample) in enumerate(sorted(samples.items())):
        canvas = canvases[index % 3]  # sample i on canvas i % 3: four of each
        assert key == f"{index:09d}"
        assert sample["json"]["canvas"] == list(canvas) and sample["png"].size == canvas
        truth = World(WorldConfig(image_size=canvas)).sample(index, "eval", seed=4)
        assert sample["txt"] == truth.caption and np.array_equal(np.asarray(sample["png"]), truth.image)
        assert {k: v for k, v in sample["json"].items() if k != "canvas"} == truth.metadata()
        assert checker.check(sample["png"], sample["json"]["objects"])["all_correct"]
    # The CLI writes the same bytes; without canvases, KEY.json has no "canvas" (shards as before).
    assert write_shards.main(["synthetic", "--out", str(tmp_path / "cli"), "--num-samples", "12", "--seed", "4",
                              "--split", "eval", "--max-count", "5", "--canvases", "32x32", "48x24", "24x48",
                              "--no-progress"]) == 0
    cli = sorted((tmp_path / "cli").glob("*.tar"))
    assert [p.read_bytes() for p in cli] == [open(p, "rb").read() for p in summary.shards]
    plain = write_shards.write_synthetic_shards(tmp_path / "plain", 3, seed=4, split="eval", progress=False)
    assert all("canvas" not in s["json"] for s in _tar_samples(plain.shards).values())
    with pytest.raises(ValueError, match="width, height"):
        write_shards.write_synthetic_shards(tmp_path / "bad", 3, canvases=[(32, 32, 3)], progress=False)
    with pytest.raises(ValueError, match=">= 12 px a side"):
        write_shards.write_synthetic_shards(tmp_path / "bad", 3, canvases=[(32, 8)], progress=False)
    with pytest.raises(SystemExit):
        write_shards.main(["synthetic", "--out", str(tmp_path / "bad"), "--num-samples", "3", "--canvases", "48by24"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_the_run_config_writes_canvas_splits_and_refuses_another_set(tmp_path):
    from unimodal.training import pipeline
    from unimodal.training.config import run_config_from_dict

    def config(canvases):
        synthetic = {"enabled": True, "num_train": 6, "num_eval": 3, "num_heldout": 3, "samples_per_shard": 10}
        return run_config_from_dict({"model": {"preset": "debug", "image_size": 32}, "data": {"image_resize": "native"},
                                     "output_dir": str(tmp_path / "run"), "synthetic": {**synthetic, "canvases": canvases}})

    mixed = config([[32, 32], [48, 24], [24, 48]])
    assert mixed.synthetic.canvases == [(32, 32), (48, 24), (24, 48)]
    assert mixed.to_dict()["synthetic"]["canvases"] == [[32, 32], [48, 24], [24, 48]]
    pipeline.ensure_synthetic_shards(mixed, True, lambda: None)
    shards = tmp_path / "run" / "shards"
    for split, count in {"train": 6, "eval": 3, "heldout": 3}.items():
        assert json.loads((shards / split / "split.json").read_text()) == {
            "num_samples": count, "seed": 0, "canvases": [[32, 32], [48, 24], [24, 48]]}
        samples = _tar_samples(sorted((shards / split).glob("*.tar")))
        assert [s["json"]["canvas"] for _, s in sorted(samples.items())] == [[32, 32], [48, 24], [24, 48]] * (count // 3)
    pipeline.ensure_synthetic_shards(mixed, True, lambda: None)  # the same canvases reuse them
    with pytest.raises(ValueError, match=r"on canvases \[\[32, 32\], \[48, 24\], \[24, 48\]\].*synthetic.canvases="
                                         r"\[\[32, 32\], \[40, 24\]\]"):
        pipeline.ensure_synthetic_shards(config([[32, 32], [40, 24]]), True, lambda: None)
    with pytest.raises(ValueError, match="synthetic.canvases=None"):  # nor the square default in that folder
        pipeline.ensure_synthetic_shards(config(None), True, lambda: None)
    with pytest.raises(ValueError, match="synthetic.canvases must be"):
        config([[48, 24, 3]])
    with pytest.raises(ValueError, match="synthetic.canvases must be"):
        config([])


def _image_folder(tmp_path, count=6):
    folder = tmp_path / "images"
    folder.mkdir()
    world = World()
    rows = []
    for i in range(count):
        sample = world.sample(i)
        name = f"img.{i}.{'png' if i % 2 else 'jpg'}"  # dots in names: keys must not use them
        Image.fromarray(sample.image).save(folder / name)
        rows.append({"file": name, "caption": sample.caption, "qa": sample.qa})
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows += [{"file": "missing.png", "caption": "a small red circle in the center"},
             {"file": "broken.png", "caption": "a small red circle in the center"},
             {"file": "img.0.jpg", "caption": "  "}]
    return folder, rows


def test_folder_writer_csv_and_jsonl(tmp_path):
    folder, rows = _image_folder(tmp_path)
    csv_path = tmp_path / "captions.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows({"file": r["file"], "caption": r["caption"]} for r in rows)
    source, total = sources.folder_source(folder, csv_path)
    summary = write_shards.write_shards(source, tmp_path / "csv", total=total, progress=False)
    assert summary.num_samples == 6 and summary.num_skipped == 3
    assert summary.skipped == {"missing_image": 1, "corrupt_image": 1, "missing_caption": 1}
    names = members(summary.shards)
    assert "000000000.jpg" in names and "000000001.png" in names  # bytes kept, no re-encoding
    decoded = list(iter_samples(summary.pattern, 32))
    assert decoded[1].metadata["source"] == "img.1.png" and decoded[1].caption == rows[1]["caption"]

    jsonl_path = tmp_path / "captions.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert write_shards.main(["folder", "--out", str(tmp_path / "jsonl"), "--images", str(folder),
                              "--captions", str(jsonl_path), "--no-progress"]) == 0
    decoded = list(iter_samples(str(tmp_path / "jsonl"), 32))
    assert len(decoded) == 6 and decoded[2].metadata["qa"] == rows[2]["qa"]  # extra fields go to the JSON
    with pytest.raises(ValueError, match="no text field"):
        sources.folder_source(folder, csv_path, text_field="description")


def test_hf_datasets_writer(tmp_path):
    datasets = pytest.importorskip("datasets")
    world = World()
    images = [Image.fromarray(world.sample(i).image) for i in range(5)]
    captions = [world.sample(i).caption for i in range(5)]
    table = datasets.Dataset.from_dict({"image": images, "text": captions, "id": list(range(5))})
    table = table.cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "hf"))
    assert write_shards.main(["hf", "--out", str(tmp_path / "out"), "--dataset-path", str(tmp_path / "hf"),
                              "--image-column", "image", "--text-column", "text", "--extra-columns", "id",
                              "--no-progress"]) == 0
    decoded = list(iter_samples(str(tmp_path / "out"), 32))
    assert [d.caption for d in decoded] == captions and decoded[4].metadata["id"] == 4
    pixels = ((decoded[0].image + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(pixels, world.sample(0).image)  # PNG bytes copied losslessly
    # A DatasetDict with a list-of-captions column.
    multi = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
        {"picture": images[:2], "captions": [[captions[0], "another"], [captions[1]]]}).cast_column(
        "picture", datasets.Image())})
    multi.save_to_disk(str(tmp_path / "dd"))
    source, total = sources.hf_source(tmp_path / "dd", "picture", "captions")
    summary = write_shards.write_shards(source, tmp_path / "dd_out", total=total, progress=False)
    decoded = list(iter_samples(summary.pattern, 32))
    assert decoded[0].caption == captions[0] and decoded[0].metadata["captions"] == [captions[0], "another"]
    with pytest.raises(ValueError, match="no column"):
        sources.hf_source(tmp_path / "hf", "img", "text")


class HalfSizeCodec:
    """A stand-in codec: 2x average pooling, (N, 3, H, W) -> (N, 3, H/2, W/2)."""

    latent_channels, downsample_factor = 3, 2

    def encode(self, images):
        return torch.nn.functional.avg_pool2d(images, 2)


def test_cache_latents_and_read_them(tmp_path):
    shards = write_shards.write_synthetic_shards(tmp_path / "images", 20, max_count=8, progress=False)
    summary = cache_latents.cache_latents(shards.pattern, tmp_path / "latents", HalfSizeCodec(), image_size=32,
                                          batch_size=6, dtype="float16", progress=False)
    assert summary.num_samples == 20 and summary.skipped == {}
    info = json.loads((tmp_path / "latents" / "latents.json").read_text())
    assert info["downsample_factor"] == 2 and info["num_samples"] == 20
    names = members(summary.shards)
    assert "000000000.latent.npy" in names and "000000000.json" in names and "000000000.png" not in names
    images = list(iter_samples(shards.pattern, 32))
    latents = list(iter_samples(summary.pattern, 32, latents=True))
    assert latents[5].caption == images[5].caption and latents[5].metadata == images[5].metadata
    torch.testing.assert_close(latents[5].image, HalfSizeCodec().encode(images[5].image[None])[0], atol=1e-3, rtol=0)
    tokenizer = Tokenizer.train([s.caption for s in images] + ["question: answer:"] +
                                [q["question"] + " " + q["answer"] for s in images for q in s.metadata["qa"]], 150)
    layout = SequenceLayout(tokenizer, 8)
    cfg = DataConfig(train_shards=summary.pattern, latents=True, batch_size=4, num_workers=2, epoch_batches=3)
    batches = list(build_train_loader(cfg, tokenizer, layout))
    assert len(batches) == 3 and torch.stack(batches[0].images).shape == (4, 3, 16, 16)
    # Reading image shards as latents counts every sample as missing its latent.
    missing = build_train_loader(DataConfig(train_shards=shards.pattern, latents=True, num_workers=0,
                                            resampled=False), tokenizer, layout)
    with pytest.raises(RuntimeError, match="no batch"):
        list(missing)
    assert missing.skipped == {"missing_latent": 20}


def test_cache_latents_cli_with_pixel_codec(tmp_path, capsys):
    pytest.importorskip("unimodal.codecs")
    shards = write_shards.write_synthetic_shards(tmp_path / "images", 6, progress=False)
    assert cache_latents.main(["--shards", shards.pattern, "--out", str(tmp_path / "px"), "--codec", "pixel",
                               "--image-size", "32", "--no-progress"]) == 0
    assert "wrote 6 samples" in capsys.readouterr().out
    image = next(iter_samples(shards.pattern, 32)).image
    latent = next(iter_samples(str(tmp_path / "px"), 32, latents=True)).image
    torch.testing.assert_close(latent, image)
