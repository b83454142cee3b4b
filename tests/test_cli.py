"""The `unimodal` command, run in-process on a tiny random exported model."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal import cli
from unimodal.api import UniModal
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.images import GRID_PADDING, image_grid
from unimodal.model import UniModalModel


@pytest.fixture(scope="module")
def export(tokenizer, tmp_path_factory):
    """(export folder, the UniModal it was saved from)."""
    torch.manual_seed(0)
    model = UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size))
    for param in model.denoise_head.parameters():
        torch.nn.init.normal_(param, std=0.1)
    api = UniModal(model, tokenizer, PixelCodec())
    folder = tmp_path_factory.mktemp("cli") / "export"
    api.save_pretrained(folder)
    return folder, api


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for seed, size in ((0, (16, 16)), (1, (20, 30))):
        pixels = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
        paths.append(tmp_path / f"img{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def lines(capsys):
    return capsys.readouterr().out.strip().splitlines()


def test_caption_prints_one_line_per_image(export, image_files, capsys):
    folder, api = export
    assert cli.main(["caption", *map(str, image_files), "--model", str(folder), "--max-new-tokens", "8"]) == 0
    expected = api.caption([Image.open(p).convert("RGB") for p in image_files], max_new_tokens=8)
    assert lines(capsys) == [f"{path}\t{caption}" for path, caption in zip(image_files, expected)]


def test_answer_asks_the_question_of_each_image(export, image_files, capsys):
    folder, api = export
    question = "what colour is the circle?"
    assert cli.main(["answer", *map(str, image_files), question, "--model", str(folder)]) == 0
    expected = api.answer([Image.open(p).convert("RGB") for p in image_files], [question] * 2)
    assert lines(capsys) == [f"{path}\t{answer}" for path, answer in zip(image_files, expected)]


def test_generate_saves_a_labelled_grid_and_each_image(export, tmp_path, capsys):
    folder, api = export
    prompts = ["a red circle", "a small green triangle in the center", "two blue squares!"]
    grid, out_dir = tmp_path / "out" / "grid.png", tmp_path / "each"
    assert cli.main(["generate", *prompts, "--model", str(folder), "--out", str(grid), "--out-dir", str(out_dir),
                     "--num-steps", "3", "--guidance-scale", "2.0", "--seed", "5", "--scheduler", "dpmsolver++",
                     "--cell-size", "64"]) == 0
    saved = sorted(out_dir.iterdir())
    assert [p.name for p in saved] == ["000_a-red-circle.png", "001_a-small-green-triangle-in-the-center.png",
                                       "002_two-blue-squares.png"]
    assert lines(capsys) == [*map(str, saved), str(grid)]
    with Image.open(grid) as image:
        assert image.size == image_grid(list(map(Image.open, saved)), prompts, cell_size=64).size
        assert image.width == 3 * 64 + 4 * GRID_PADDING and image.height > 64 + 2 * GRID_PADDING  # labels below
    expected = api.generate(prompts, num_steps=3, guidance_scale=2.0, seed=5, scheduler="dpmsolver++")
    for path, image in zip(saved, expected):  # the files hold exactly what the API generates
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))


def test_generate_grid_wraps_rows_and_honours_size(export, tmp_path):
    folder, _ = export
    grid = tmp_path / "grid.png"
    prompts = [f"prompt {i}" for i in range(9)]  # 8 columns, then a second row
    assert cli.main(["generate", *prompts, "--model", str(folder), "--out", str(grid), "--num-steps", "1",
                     "--height", "8", "--width", "16"]) == 0
    with Image.open(grid) as image:
        width, height = image.size
        assert width == 8 * 128 + 9 * GRID_PADDING  # 8 columns of the default 128 px cells
        row_height = (height - 3 * GRID_PADDING) / 2  # two rows of (cell + labels)
        assert row_height == int(row_height) and row_height > 128


@pytest.mark.parametrize("argv, message", [
    (["caption", "IMG", "--model", "MISSING"], "--model .*MISSING: no such folder"),
    (["caption", "nope.png", "--model", "MODEL"], "image nope.png: no such file"),
    (["caption", "BROKEN", "--model", "MODEL"], "image .*broken.png: cannot read it"),
    (["caption", "IMG", "--model", "NOT_EXPORT"], "is not a unimodal export folder: missing"),
    (["answer", "IMG", "--model", "MODEL"], "the following arguments are required: QUESTION"),
    (["caption", "IMG", "--model", "MODEL", "--max-new-tokens", "0"], "max_new_tokens must be a positive int"),
    (["generate", "a red circle", "--model", "MODEL"], "generate needs --out GRID.png and/or --out-dir"),
    (["generate", "a red circle", "--model", "MODEL", "--out", "grid"], "--out grid: name the grid file with an"),
    (["generate", "x", "--model", "MODEL", "--out", "OUT", "--scheduler", "ddim"], "unknown scheduler 'ddim'"),
    (["generate", "x", "--model", "MODEL", "--out", "OUT", "--num-steps", "0"], "num_steps must be a positive int"),
    (["generate", "x", "--model", "MODEL", "--out", "OUT", "--height", "10"], "height must be a positive multiple"),
    (["generate", "x", "--model", "MODEL", "--out", "OUT", "--guidance-scale", "0.5"], "guidance_scale must be >= 1"),
    (["generate", "x", "--model", "MODEL", "--out", "OUT", "--device", "nodevice"], "--device nodevice"),
    (["paint", "x"], "invalid choice: 'paint'"),
])
def test_bad_arguments_exit_with_status_2_and_a_message(export, image_files, tmp_path, capsys, argv, message):
    folder, _ = export
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "not_export").mkdir()
    names = {"IMG": str(image_files[0]), "MODEL": str(folder), "MISSING": str(tmp_path / "MISSING"),
             "BROKEN": str(tmp_path / "broken.png"), "NOT_EXPORT": str(tmp_path / "not_export"),
             "OUT": str(tmp_path / "grid.png")}
    with pytest.raises(SystemExit) as exit_info:
        cli.main([names.get(arg, arg) for arg in argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "grid.png").exists()
