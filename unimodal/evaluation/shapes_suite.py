"""The `shapes` suite: captioning, VQA and checked generation on the synthetic world.

Scenes come from the world's `eval` and `heldout` splits (`unimodal.data.synthetic.World`), whose seed
streams differ from the `train` split's, so no evaluated scene was seen in training (the training
run's own `eval`/`heldout` shards hold these same scenes: index i of (split, seed) is fixed).

- Captioning: the first `num_samples` `eval` scenes; exact match, BLEU-4 and CIDEr-D against the
  one true caption.
- VQA: `qa_per_image` question-answer pairs of each of those images (drawn without replacement
  under the world seed; 0 = all ~27), VQAv2 accuracy overall and per question kind (count, colour,
  shape, size, position, exists).
- Generation: images from the captions of ceil(N/2) `eval` scenes ("seen": every (colour, shape)
  was in training) and floor(N/2) `heldout` scenes (each has a held-out combination); each image
  is read back by `unimodal.data.checker.Checker` and compared with the scene's objects.
- FID/KID (optional): the generated images against the true renders of the same scenes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from unimodal.data.checker import Checker
from unimodal.data.synthetic import SyntheticSample, World, WorldConfig

from .report import write_metrics_json
from .suites import (
    EvalSettings,
    Grid,
    answer_questions,
    as_pil,
    caption_images,
    caption_label,
    caption_metrics,
    fid_metrics,
    flat,
    generate_images,
    generation_label,
    generation_metrics,
    verdict,
    vqa_metrics,
    write_outputs,
)

# Question kinds by the opening words of the synthetic world's templates
# (`unimodal.data.synthetic.question_answers`).
QUESTION_KINDS = (("how many", "count"), ("what colour", "colour"), ("what shape", "shape"),
                  ("what size", "size"), ("where", "position"), ("is there", "exists"))


def question_kind(question: str, kinds: Sequence[tuple[str, str]] = QUESTION_KINDS) -> str:
    """The category of a synthetic-world question ("count", "colour", ..., or "other"): the kind of
    the first (prefix, kind) of `kinds` whose prefix opens the question (case and leading blanks
    ignored); `kinds` defaults to the still world's, the video suite passes the motion world's."""
    text = question.strip().lower()
    return next((kind for prefix, kind in kinds if text.startswith(prefix)), "other")


def select_qa(sample: SyntheticSample | Any, index: int, qa_per_image: int, world_seed: int) -> list[dict[str, str]]:
    """`qa_per_image` of the sample's QA pairs (all when 0 or when it has fewer), in their order;
    the choice depends only on (world_seed, index), so every evaluation asks the same questions.
    `sample`: anything with a `.qa` list of {"question", "answer"} (a still scene or a motion clip)."""
    if qa_per_image == 0 or qa_per_image >= len(sample.qa):
        return list(sample.qa)
    rng = np.random.default_rng([world_seed, index, 1])
    chosen = sorted(rng.choice(len(sample.qa), size=qa_per_image, replace=False))
    return [sample.qa[i] for i in chosen]


def run_shapes(model, world_config: WorldConfig | None = None, num_samples: int = 200,
               settings: EvalSettings | None = None, qa_per_image: int = 5, fid: bool = False,
               feature_path: str | None = None, world_seed: int = 0, out_dir: str | Path | None = None,
               title: str = "shapes suite") -> dict[str, Any]:
    """Run the suite on `model` (anything with `caption`/`answer`/`generate`, see `unimodal.evaluation.suites`);
    returns the flat metrics dict. With `out_dir`, also writes metrics.json, summary.md, grids
    (captions.png, generated_seen.png, generated_heldout.png) and predictions.jsonl there."""
    settings = settings or EvalSettings()
    world = World(world_config or WorldConfig())
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"the shapes suite needs num_samples >= 2 (half seen, half held-out scenes), got {num_samples}")
    if not isinstance(qa_per_image, int) or qa_per_image < 0:
        raise ValueError(f"qa_per_image must be >= 0 (0 = every QA pair), got {qa_per_image!r}")
    scenes = [world.sample(i, "eval", world_seed) for i in range(num_samples)]
    predictions: list[dict[str, Any]] = []

    # ---- captioning
    images = [s.image for s in scenes]  # (H, W, 3) uint8
    captions = caption_images(model, images, settings)
    metrics = caption_metrics(captions, [[s.caption] for s in scenes])
    predictions += [{"task": "caption", "split": "eval", "index": i, "prediction": p, "reference": s.caption}
                    for i, (p, s) in enumerate(zip(captions, scenes))]

    # ---- VQA
    asked = [(i, qa) for i, s in enumerate(scenes) for qa in select_qa(s, i, qa_per_image, world_seed)]
    answers = answer_questions(model, [images[i] for i, _ in asked], [qa["question"] for _, qa in asked], settings)
    metrics.update(vqa_metrics(answers, [[qa["answer"]] for _, qa in asked],
                               [question_kind(qa["question"]) for _, qa in asked]))
    predictions += [{"task": "vqa", "split": "eval", "index": i, "question": qa["question"], "prediction": a,
                     "reference": qa["answer"]} for (i, qa), a in zip(asked, answers)]

    # ---- generation, checked
    num_heldout = num_samples // 2 if world.config.heldout else 0
    targets = [(s, "seen", i) for i, s in enumerate(scenes[: math.ceil(num_samples / 2) if num_heldout else None])]
    targets += [(world.sample(i, "heldout", world_seed), "heldout", i) for i in range(num_heldout)]
    generated = generate_images(model, [s.caption for s, _, _ in targets], settings)
    checker = Checker(world.config)
    results = [checker.check(image, s.objects) for image, (s, _, _) in zip(generated, targets)]
    metrics.update(generation_metrics(results, [group for _, group, _ in targets]))
    predictions += [{"task": "generation", "split": "eval" if group == "seen" else "heldout", "index": i,
                     "prompt": s.caption, "verdict": verdict(r), "detected": r["detected"]}
                    for (s, group, i), r in zip(targets, results)]

    if fid:
        metrics.update(fid_metrics([as_pil(s.image) for s, _, _ in targets], generated, feature_path, settings))

    metrics = flat(metrics)
    if out_dir is not None:
        grids = [Grid("captions", [as_pil(im) for im in images],
                      [caption_label(p, s.caption) for p, s in zip(captions, scenes)])]
        for group in ("seen", "heldout"):
            chosen = [k for k, (_, g, _) in enumerate(targets) if g == group]
            grids.append(Grid(f"generated_{group}", [generated[k] for k in chosen],
                              [generation_label(targets[k][0].caption, results[k]) for k in chosen]))
        write_outputs(out_dir, metrics, grids, predictions, title, settings)
    return metrics


def canvas_name(width: int, height: int) -> str:
    return f"{width}x{height}"


def run_shapes_canvases(model, world_config: WorldConfig | None, canvases: Sequence[tuple[int, int]],
                        num_samples: int = 200, settings: EvalSettings | None = None, qa_per_image: int = 5,
                        fid: bool = False, feature_path: str | None = None, world_seed: int = 0,
                        out_dir: str | Path | None = None, title: str = "shapes suite") -> dict[str, Any]:
    """`run_shapes` once per canvas (W, H) in pixels: the same scenes drawn on each canvas, captioned
    and questioned at that size and generated at that size (`generate(height=H, width=W)`). Returns
    one flat dict whose keys are `<metric>@<W>x<H>` (e.g. `caption_exact@48x24`,
    `gen_all_correct_seen@24x48`); with `out_dir`, each canvas's report goes to `out_dir/<W>x<H>/`
    and the merged metrics.json and a summary.md with one column per canvas to `out_dir`."""
    settings = settings or EvalSettings()
    world_config = world_config or WorldConfig()
    merged: dict[str, Any] = {}
    by_canvas: dict[str, dict[str, Any]] = {}
    for width, height in canvases:
        name = canvas_name(width, height)
        metrics = run_shapes(model, world_config.with_canvas(width, height), num_samples,
                             replace(settings, height=height, width=width), qa_per_image, fid, feature_path,
                             world_seed, None if out_dir is None else Path(out_dir) / name, f"{title} at {name}")
        by_canvas[name] = metrics
        merged.update({f"{key}@{name}": value for key, value in metrics.items()})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_metrics_json(merged, out / "metrics.json")
        (out / "summary.md").write_text(canvas_summary(by_canvas, title, settings))
    return merged


def canvas_summary(by_canvas: dict[str, dict[str, Any]], title: str, settings: EvalSettings) -> str:
    """A markdown table: one row per headline metric, one column per canvas."""
    names = list(by_canvas)
    keys = [k for k in ("caption_exact", "caption_bleu4", "vqa_accuracy", "gen_all_correct_seen",
                        "gen_all_correct_heldout") if any(k in m for m in by_canvas.values())]
    lines = [f"# {title}, per canvas (W x H pixels)", "",
             "Each canvas's full report (grids, predictions) is in its own folder.", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [by_canvas[n].get(key) for n in names]
        lines.append(f"| {key} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
