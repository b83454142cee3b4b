"""Real inputs as they come: one decoding rule (`unimodal.images.open_image`) for every path.

The same file goes through the shard writer + training reader, the API (path, bytes, PIL), the CLI
and the FID input, and every path must give the same tensor; the rule's values are checked too.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import unimodal.api
from unimodal import cli
from unimodal.api import UniModal
from unimodal.codecs import PixelCodec
from unimodal.config import ModelConfig
from unimodal.data.reader import iter_samples
from unimodal.data.sources import checked_image, folder_source
from unimodal.data.write_shards import write_shards
from unimodal.evaluation.image_metrics import _as_chw_uint8
from unimodal.images import open_image, to_model_tensor
from unimodal.model import UniModalModel

SIZE = 16
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def rgba_square() -> Image.Image:
    """A red square on a fully transparent background (whose hidden colour is black)."""
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[4:12, 4:12] = (255, 0, 0, 255)
    return Image.fromarray(pixels, "RGBA")


def expected_square() -> np.ndarray:
    expected = np.full((16, 16, 3), 255, np.uint8)
    expected[4:12, 4:12] = RED
    return expected


def exif_jpeg() -> bytes:
    """Stored landscape (32 x 24: red left half, blue right half) with EXIF Orientation 6 (rotate
    90 degrees clockwise to display): upright it is 24 x 32, red on top, blue below."""
    pixels = np.zeros((24, 32, 3), np.uint8)
    pixels[:, :16], pixels[:, 16:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black (transparent), 1 green
    image.paste(1, (0, 0, 8, 16))
    image.info["transparency"] = 0
    return image


INPUTS = {  # name -> (encoded file bytes, file suffix)
    "rgba png": (encode(rgba_square()), "png"),
    "exif jpeg": (exif_jpeg(), "jpg"),
    "16-bit grey png": (encode(Image.fromarray(np.full((16, 16), 32768, np.uint16))), "png"),
    "palette png with transparency": (encode(palette_with_transparency()), "png"),
    "la png": (encode(Image.fromarray(np.dstack([np.full((16, 16), 0, np.uint8),
                                                  np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))]), "LA")),
               "png"),
    "1-bit png": (encode(Image.fromarray(np.eye(16, dtype=bool))), "png"),
    "cmyk jpeg": (encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), "JPG"),
    "float tiff": (encode(Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "F"),
                          "TIFF"), "tiff"),
}


# ---------------------------------------------------------------------------- the rule's values
def test_transparency_is_composited_on_white():
    assert np.array_equal(np.asarray(open_image(encode(rgba_square()))), expected_square())
    tensor = to_model_tensor(rgba_square(), SIZE)
    assert_close(tensor, torch.from_numpy(expected_square()).permute(2, 0, 1).float() / 127.5 - 1)
    # arrays with an alpha channel follow the same rule
    assert_close(to_model_tensor(np.asarray(rgba_square()), SIZE), tensor)
    # a palette image with a transparent index: the transparent half is white, the other green
    palette = np.asarray(open_image(palette_with_transparency()))
    assert (palette[:, :8] == (0, 255, 0)).all() and (palette[:, 8:] == WHITE).all()


def test_exif_orientation_is_applied_first():
    image = open_image(exif_jpeg())
    assert image.size == (24, 32)  # upright: portrait
    pixels = np.asarray(image).astype(int)
    assert (np.abs(pixels[:12] - RED) < 40).all() and (np.abs(pixels[-12:] - BLUE) < 40).all()
    with Image.open(io.BytesIO(exif_jpeg())) as raw:  # the stored pixels, rotated by hand
        by_hand = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(image), np.asarray(by_hand))


def test_sixteen_bit_is_scaled_never_clipped():
    flat = Image.fromarray(np.full((16, 16), 32768, np.uint16))
    assert flat.mode.startswith("I;16")
    assert_close(to_model_tensor(flat, SIZE), torch.zeros(3, SIZE, SIZE), atol=2 / 255, rtol=0)  # one 8-bit step
    ramp = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.array_equal(np.asarray(open_image(Image.fromarray(ramp)))[..., 0], expected)
    assert_close(to_model_tensor(ramp, SIZE), torch.from_numpy(ramp / 65535).float().expand(3, -1, -1) * 2 - 1)
    assert np.asarray(open_image(Image.fromarray(np.full((4, 4), 65535, np.int32), "I"))).min() == 255


def test_other_modes_follow_the_documented_rule():
    assert np.array_equal(np.asarray(open_image(Image.fromarray(np.eye(4, dtype=bool))))[..., 0], np.eye(4) * 255)
    assert np.asarray(open_image(Image.new("CMYK", (4, 4), (0, 255, 255, 0)))).tolist()[0][0] == list(RED)
    half = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert np.asarray(open_image(half)).max() == 128
    with pytest.raises(ValueError, match=r"mode F\) must lie in \[0, 1\]"):
        open_image(Image.fromarray(np.full((4, 4), 3.0, np.float32), "F"))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        open_image(Image.fromarray(np.full((4, 4), -5, np.int32), "I"))


def test_float_range_follows_the_dtype_not_the_pixels():
    """A [-1, 1] image with no negative pixel used to be re-scaled as [0, 1]; now floats are
    always [0, 1], the same pixel gets the same value whatever its neighbours, and negatives raise."""
    image = torch.full((3, SIZE, SIZE), 0.5)
    darker = image.clone()
    darker[:, 0, 0] = 0.0
    assert_close(to_model_tensor(image, SIZE), torch.zeros(3, SIZE, SIZE))
    assert_close(to_model_tensor(darker, SIZE)[:, 1:], torch.zeros(3, SIZE - 1, SIZE))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*\(x \+ 1\) / 2"):
        to_model_tensor(image * 2 - 1.2, SIZE)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or infinite"):
            to_model_tensor(torch.full((3, 4, 4), bad), SIZE)


# ------------------------------------------------------------------- one tensor through every path
@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    api = UniModal(UniModalModel(ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)), tokenizer,
                   PixelCodec())
    folder = tmp_path_factory.mktemp("inputs") / "export"
    api.save_pretrained(folder)
    return folder, api


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for index, (name, (data, suffix)) in enumerate(INPUTS.items()):
        paths[name] = folder / f"photo.{index}.v2.{suffix}"  # dots in the name, suffixes in any case
        paths[name].write_bytes(data)
    return paths


def loader_tensors(files, tmp_path, image_size):
    """Through the folder converter, the tar shards and the training reader's decoding."""
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(f'{{"file": "{p.name}", "caption": "{name}"}}\n' for name, p in files.items()))
    source, total = folder_source(next(iter(files.values())).parent, captions)
    summary = write_shards(source, tmp_path / "shards", total=total, progress=False)
    assert summary.num_samples == len(files) and not summary.skipped
    return {s.caption: s.image for s in iter_samples(summary.pattern, image_size)}


def test_every_path_gives_the_same_tensor(exported, files, tmp_path, monkeypatch):
    folder, api = exported
    size = api.config.image_size
    from_loader = loader_tensors(files, tmp_path, size)
    seen = []  # what the API's conversion returns when the CLI calls it
    original = unimodal.api.to_model_tensor
    monkeypatch.setattr(unimodal.api, "to_model_tensor", lambda image, s: seen.append(original(image, s)) or seen[-1])
    assert cli.main(["caption", *map(str, files.values()), "--model", str(folder), "--max-new-tokens", "2"]) == 0
    for (name, path), from_cli in zip(files.items(), seen):
        expected = from_loader[name]
        assert_close(from_cli, expected, atol=0, rtol=0, msg=f"{name}: CLI vs loader")
        assert_close(to_model_tensor(path, size), expected, atol=0, rtol=0, msg=f"{name}: API path")
        assert_close(to_model_tensor(path.read_bytes(), size), expected, atol=0, rtol=0, msg=f"{name}: bytes")
        with Image.open(path) as image:
            assert_close(to_model_tensor(image, size), expected, atol=0, rtol=0, msg=f"{name}: PIL")
            fid_input = _as_chw_uint8(image, 0)  # FID/KID see the same pixels, before resizing
        assert_close(fid_input, torch.from_numpy(np.array(open_image(path))).permute(2, 0, 1))
    monkeypatch.undo()
    assert api.caption([files["rgba png"]], max_new_tokens=4) == api.caption(
        [from_loader["rgba png"][None].add(1).div(2)[0]], max_new_tokens=4)


def test_converter_stores_other_formats_as_the_rule_decodes_them():
    data, _ = INPUTS["float tiff"]
    png, suffix = checked_image(data, "x.tiff")
    assert suffix == "png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(open_image(data)))
    skip = checked_image(data[:40], "cut.tiff")
    assert skip.reason == "corrupt_image" and "cut.tiff" in skip.detail


def test_large_jpeg_paths_decode_like_the_reader(tmp_path):
    """A JPEG much larger than the model decodes at reduced scale, identically in reader and API."""
    pixels = np.random.RandomState(0).randint(0, 256, (96, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG")
    (tmp_path / "big.jpg").write_bytes(data)
    from unimodal.data.samples import decode_image
    assert_close(to_model_tensor(tmp_path / "big.jpg", SIZE), decode_image(data, SIZE), atol=0, rtol=0)


# --------------------------------------------------------------------------- numeric arguments
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_arguments_raise_naming_them(exported, bad):
    _, api = exported
    image = [torch.zeros(3, 8, 8)]
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        api.generate(["x"], num_steps=1, guidance_scale=bad)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        api.caption(image, temperature=bad)
    with pytest.raises(ValueError, match="top_p must be a finite number"):
        api.answer(image, ["q"], top_p=bad)
    for name in ("num_steps", "height", "width"):
        with pytest.raises(ValueError, match=name):
            api.generate(["x"], **{name: bad})


def test_cli_rejects_non_finite_floats(exported, tmp_path, capsys):
    folder, _ = exported
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "x", "--model", str(folder), "--out", str(tmp_path / "g.png"), "--guidance-scale", "nan"])
    assert exit_info.value.code == 2 and "guidance_scale must be a finite number" in capsys.readouterr().err


def test_generate_pt_output_reads_back_as_the_same_image(exported):
    _, api = exported
    tensors = api.generate(["a red circle"], num_steps=2, output_type="pt")
    images = api.generate(["a red circle"], num_steps=2)
    assert tensors.min() >= 0 and tensors.max() <= 1
    assert_close(to_model_tensor(tensors[0], api.config.image_size), to_model_tensor(images[0], api.config.image_size),
                 atol=1 / 127.5, rtol=0)
