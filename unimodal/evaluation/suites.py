"""What every evaluation suite shares: batched inference with progress bars, scoring, and outputs.

A suite evaluates any *model-like* object with the three methods of `unimodal.UniModal` (duck
typing, so tests can pass a stub with known answers):

    caption(images, max_new_tokens=...) -> list[str]
    answer(images, questions, max_new_tokens=...) -> list[str]
    generate(prompts, num_steps=..., guidance_scale=..., seed=..[, scheduler=...]) -> list[image]

Images go in as (H, W, 3) uint8 arrays or PIL images; generated images may come back as PIL
images, (H, W, 3) uint8 arrays or (3, H, W) tensors in [-1, 1]. `generate` is called with
`seed=settings.seed + first index of the batch`, so generated image i always uses noise `seed + i`
(`UniModal.generate` gives prompt j of a call the noise of `seed + j`): results do not depend on
the batch size. `scheduler` is passed only when one is chosen.

Video clips (the `video` suite) use the same three methods: `caption` and `answer` take a list of
clips, each an (F, H, W, 3) uint8 array, and `generate(prompts, num_frames=F, ...)` returns one
clip per prompt, a list of F frames (PIL images, or anything `unimodal.data.motion.clip_frames`
reads), clip i
again from the noise of `seed + i` (`caption_clips`, `answer_clip_questions`, `generate_clips`).

The suites themselves live in `unimodal.evaluation.shapes_suite`, `unimodal.evaluation.shards_suite` and
`unimodal.evaluation.video_suite`; `unimodal.evaluation.run` is the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from unimodal.data.checker import ATTRIBUTES, to_uint8_rgb
from unimodal.images import open_image

from .caption_metrics import caption_scores
from .report import flatten_metrics, pil_frames, save_image_grid, write_markdown_summary, write_metrics_json
from .vqa_metrics import vqa_score

GRID_CELL_SIZE = 128  # px per grid cell: a 32 px image upscaled 4x (NEAREST) stays crisp
GRID_LABEL_LINES = 12  # "pred: ... | true: ..." of two 3-object captions: ~10 lines of ~20 characters at 128 px
# Frame strips (video clips): each frame GRID_STRIP_HEIGHT px tall (a 32 px frame upscaled 2x), cells as wide as the
# strip, and about GRID_STRIP_WIDTH px of cells per row (two strips of 8 such frames).
GRID_STRIP_HEIGHT = 64
GRID_STRIP_WIDTH = 1024


@dataclass
class EvalSettings:
    """How inference runs during an evaluation (the same for every suite)."""

    num_steps: int = 25  # sampling steps per generated image
    guidance_scale: float = 3.0  # classifier-free guidance (1 = off)
    scheduler: str | None = None  # None = the model's default sampler
    seed: int = 0  # generated image i uses the noise of seed + i
    batch_size: int = 50  # images per call of caption / answer / generate
    max_caption_tokens: int = 64  # a 3-object synthetic caption is ~26 tokens with a 512-token vocab
    max_answer_tokens: int = 8  # answers are one word, a number or a position
    num_grid_images: int = 32  # images per PNG grid
    progress: bool = True  # tqdm bars over batches
    height: int | None = None  # pixels of generated images; None = the model's image size
    width: int | None = None

    def __post_init__(self) -> None:
        checks = {"num_steps": self.num_steps, "batch_size": self.batch_size,
                  "max_caption_tokens": self.max_caption_tokens, "max_answer_tokens": self.max_answer_tokens}
        for name, value in checks.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {self.guidance_scale}")
        if self.num_grid_images < 0:
            raise ValueError(f"num_grid_images must be >= 0, got {self.num_grid_images}")


# ------------------------------------------------------------------------------ batched inference
def _in_batches(items: Sequence, settings: EvalSettings, desc: str, unit: str,
                call: Callable[[int, list], list]) -> list:
    """call(start, items[start:start + batch_size]) for every batch, results concatenated, with a
    tqdm bar counting items; checks that each call returns one result per item."""
    results: list = []
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not settings.progress) as bar:
        for start in range(0, len(items), settings.batch_size):
            chunk = list(items[start: start + settings.batch_size])
            out = list(call(start, chunk))
            if len(out) != len(chunk):
                raise RuntimeError(f"{desc}: the model returned {len(out)} results for {len(chunk)} inputs")
            results += out
            bar.update(len(chunk))
    return results


def caption_images(model, images: Sequence[Any], settings: EvalSettings, unit: str = "img") -> list[str]:
    """One caption per image (or clip: the model reads whatever `images` holds), greedy; `unit`
    names the items on the progress bar."""
    return _in_batches(images, settings, "caption", unit,
                       lambda start, chunk: model.caption(chunk, max_new_tokens=settings.max_caption_tokens))


def answer_questions(model, images: Sequence[Any], questions: Sequence[str], settings: EvalSettings) -> list[str]:
    """One answer per (image, question) pair (or (clip, question) pair), greedy."""
    pairs = list(zip(images, questions))
    return _in_batches(pairs, settings, "vqa", "q", lambda start, chunk: model.answer(
        [image for image, _ in chunk], [q for _, q in chunk], max_new_tokens=settings.max_answer_tokens))


def _generate_options(settings: EvalSettings) -> dict[str, Any]:
    """The keyword arguments of `model.generate` besides the prompts and seed."""
    options: dict[str, Any] = {"num_steps": settings.num_steps, "guidance_scale": settings.guidance_scale}
    if settings.scheduler is not None:
        options["scheduler"] = settings.scheduler
    if settings.height is not None or settings.width is not None:
        options.update(height=settings.height, width=settings.width)
    return options


def generate_images(model, prompts: Sequence[str], settings: EvalSettings) -> list[Image.Image]:
    """One image per prompt (image i from the noise of settings.seed + i), as PIL RGB images."""
    options = _generate_options(settings)
    images = _in_batches(prompts, settings, "generate", "img", lambda start, chunk: model.generate(
        list(chunk), seed=settings.seed + start, **options))
    return [as_pil(image) for image in images]


def caption_clips(model, clips: Sequence[np.ndarray], settings: EvalSettings) -> list[str]:
    """One caption per clip ((F, H, W, 3) uint8 arrays), greedy, `settings.batch_size` clips per call."""
    return caption_images(model, clips, settings, unit="clip")


def answer_clip_questions(model, clips: Sequence[np.ndarray], questions: Sequence[str],
                          settings: EvalSettings) -> list[str]:
    """One answer per (clip, question) pair, clips as (F, H, W, 3) uint8 arrays, greedy."""
    return answer_questions(model, clips, questions, settings)


def generate_clips(model, prompts: Sequence[str], num_frames: int, settings: EvalSettings) -> list[list[Image.Image]]:
    """One clip of `num_frames` frames per prompt (clip i from the noise of settings.seed + i, as for
    images), each a list of PIL RGB frames. Raises ValueError for num_frames < 1, RuntimeError when
    the model returns another number of clips, a clip of another length, or one it cannot read
    (frames of different sizes, no frames)."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    options = _generate_options(settings)
    clips = _in_batches(prompts, settings, "generate", "clip", lambda start, chunk: model.generate(
        list(chunk), num_frames=num_frames, seed=settings.seed + start, **options))
    result = []
    for i, clip in enumerate(clips):
        try:
            frames = pil_frames(clip)
        except ValueError as err:
            raise RuntimeError(f"generate: clip {i}: {err}") from None
        if len(frames) != num_frames:
            raise RuntimeError(f"generate: clip {i} has {len(frames)} frames, {num_frames} were asked for")
        result.append(frames)
    return result


def as_pil(image: Any) -> Image.Image:
    """PIL image, (H, W, 3) uint8 array or (3, H, W) float in [-1, 1] -> PIL RGB image."""
    if isinstance(image, Image.Image):
        return open_image(image)  # the project's one input rule
    return Image.fromarray(to_uint8_rgb(image))


# ------------------------------------------------------------------------------ scoring
def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """caption_exact / caption_bleu4 / caption_cider and num_caption."""
    return {**caption_scores(list(predictions), [list(r) for r in references]), "num_caption": len(predictions)}


def vqa_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """vqa_accuracy (VQAv2 rules, `unimodal.evaluation.vqa_metrics`) and num_vqa; with `kinds` (one label per
    question) also vqa_accuracy_<kind> and num_vqa_<kind>. Empty input gives only num_vqa = 0."""
    if not predictions:
        return {"num_vqa": 0}
    scores = [vqa_score(p, list(r)) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, Any] = {"vqa_accuracy": float(np.mean(scores)), "num_vqa": len(scores)}
    for kind in sorted(set(kinds or [])):
        chosen = [s for s, k in zip(scores, kinds, strict=True) if k == kind]
        metrics[f"vqa_accuracy_{kind}"] = float(np.mean(chosen))
        metrics[f"num_vqa_{kind}"] = len(chosen)
    return metrics


def verdict(result: Mapping[str, Any], attributes: Sequence[str] = ATTRIBUTES) -> str:
    """A checker result in a few words: "OK", or "wrong: shape, colour" (the failed categories among
    `attributes`, in their order; an image whose categories all match but whose objects are bound
    wrongly is "wrong: binding"). `attributes`: the checker's categories, the still checker's
    `unimodal.data.checker.ATTRIBUTES` by default (`unimodal.data.motion.MOTION_ATTRIBUTES` for clips).
    Raises KeyError when `result` lacks one of them."""
    if result["all_correct"]:
        return "OK"
    failed = [a for a in attributes if not result[a]]
    return "wrong: " + (", ".join(failed) if failed else "binding")


def generation_metrics(results: Sequence[Mapping[str, Any]], groups: Sequence[str],
                       attributes: Sequence[str] = ATTRIBUTES) -> dict[str, Any]:
    """Per-group means of the checker's categories (`attributes`: the still checker's by default,
    `MOTION_ATTRIBUTES` for clips).

    For each group g (e.g. "seen", "heldout"): gen_all_correct_g, gen_<attribute>_g (images:
    count, colour, shape, position, size; clips: count, colour, shape, direction),
    gen_object_accuracy_g and num_gen_g; over all: gen_all_correct and num_gen. Keys: see
    `unimodal.data.checker.Checker.check` / `unimodal.data.motion.MotionChecker.check`.
    """
    metrics: dict[str, Any] = {}
    for group in dict.fromkeys(groups):
        chosen = [r for r, g in zip(results, groups, strict=True) if g == group]
        for key in ("all_correct", *attributes, "object_accuracy"):
            metrics[f"gen_{key}_{group}"] = float(np.mean([float(r[key]) for r in chosen]))
        metrics[f"num_gen_{group}"] = len(chosen)
    if results:
        metrics["gen_all_correct"] = float(np.mean([float(r["all_correct"]) for r in results]))
    metrics["num_gen"] = len(results)
    return metrics


def fid_metrics(real: Sequence[Image.Image], fake: Sequence[Image.Image], feature_path: str | None,
                settings: EvalSettings) -> dict[str, Any]:
    """fid / kid_mean / kid_std of `fake` against `real` (the standard FID Inception, or the
    TorchScript extractor at `feature_path`) and num_fid_real / num_fid_fake."""
    from .image_metrics import fid_kid  # torch + torchmetrics: only imported when FID is asked for

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID/KID need at least 2 real and 2 generated images, got {len(real)} and {len(fake)}; "
                         "raise --num-samples or pass --no-fid")
    scores = fid_kid(list(real), list(fake), feature_path=feature_path, progress=settings.progress,
                     seed=settings.seed)
    return {**scores, "num_fid_real": len(real), "num_fid_fake": len(fake)}


# ------------------------------------------------------------------------------ outputs
def caption_label(prediction: str, reference: str) -> str:
    """Grid label of a captioned image: "[OK] caption" or "pred: ... | true: ..."."""
    if prediction.strip().lower() == reference.strip().lower():
        return f"[OK] {reference}"
    return f"pred: {prediction or '(empty)'} | true: {reference}"


def generation_label(prompt: str, result: Mapping[str, Any] | None, attributes: Sequence[str] = ATTRIBUTES) -> str:
    """Grid label of a generated image or clip: "[OK] prompt", "[wrong: shape] prompt" (`verdict`
    over `attributes`), or the prompt."""
    return prompt if result is None else f"[{verdict(result, attributes)}] {prompt}"


@dataclass
class Grid:
    """A PNG grid to write: images with one label each (cut to `num_grid_images`), in cells of
    `cell_width` x `cell_size` pixels (`cell_width` None = square) and at most `columns` per row."""

    name: str  # file stem and summary section
    images: list[Image.Image]
    labels: list[str]
    cell_size: int = GRID_CELL_SIZE
    cell_width: int | None = None
    columns: int = 8

    @classmethod
    def of_strips(cls, name: str, strips: Sequence[Image.Image], labels: Sequence[str]) -> Grid:
        """A grid of frame strips (`report.frame_strip`): each frame GRID_STRIP_HEIGHT px tall, cells
        as wide as the widest strip at that height, and GRID_STRIP_WIDTH / cell width columns, rounded
        (at least 1)."""
        aspect = max((s.width / s.height for s in strips), default=1.0)
        cell_width = max(GRID_STRIP_HEIGHT, round(GRID_STRIP_HEIGHT * aspect))
        return cls(name, list(strips), list(labels), cell_size=GRID_STRIP_HEIGHT, cell_width=cell_width,
                   columns=max(1, round(GRID_STRIP_WIDTH / cell_width)))


def write_outputs(out_dir: str | Path, metrics: Mapping[str, Any], grids: Sequence[Grid],
                  predictions: Sequence[Mapping[str, Any]], title: str, settings: EvalSettings,
                  notes: Sequence[str] = ()) -> dict[str, Path]:
    """metrics.json, summary.md, one PNG per non-empty grid and predictions.jsonl (one line per
    prediction, for reading failures) in `out_dir`; returns the paths written by name. `notes`: lines
    quoted at the top of summary.md, after the FID warning (`metric_notes`) if there is one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"metrics": write_metrics_json(metrics, out / "metrics.json")}
    grid_paths: dict[str, Path] = {}
    for grid in grids:
        count = min(len(grid.images), settings.num_grid_images)
        if count:
            grid_paths[grid.name] = save_image_grid(grid.images[:count], grid.labels[:count], out / f"{grid.name}.png",
                                                    cell_size=grid.cell_size, columns=grid.columns,
                                                    max_label_lines=GRID_LABEL_LINES, cell_width=grid.cell_width)
    paths.update(grid_paths)
    paths["summary"] = write_markdown_summary(metrics, grid_paths, out / "summary.md", title=title,
                                              notes=[*metric_notes(metrics), *notes])
    lines = [json.dumps(p, ensure_ascii=False) for p in predictions]
    (out / "predictions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    paths["predictions"] = out / "predictions.jsonl"
    return paths


# Published FIDs use 50,000 generated images; below ~10,000 the bias (upwards for FID) is large.
FID_COMPARABLE_SAMPLES = 10_000


def metric_notes(metrics: Mapping[str, Any]) -> list[str]:
    """Warnings for the summary: FID/KID from few samples are biased and not comparable to papers."""
    num_fid = min(int(metrics.get("num_fid_real", 0)), int(metrics.get("num_fid_fake", 0)))
    if "fid" not in metrics or num_fid >= FID_COMPARABLE_SAMPLES:
        return []
    return [f"Warning: FID/KID here come from {num_fid} samples per set. With a few hundred or thousand samples "
            "they are biased (FID upwards) and comparable only to runs with the same sample count and reference "
            "set, not to published numbers (50,000 samples)."
            + ("" if metrics.get("kid_std") is not None else " kid_std is not reported: every KID subset held "
               "all samples, so there was no spread to measure.")]


def flat(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics exactly as metrics.json stores them (flat, plain numbers, NaN -> None)."""
    return flatten_metrics(metrics)
