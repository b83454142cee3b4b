"""The `shards` suite: evaluation on any held-out shard set in the common webdataset layout.

Each sample is `KEY.jpg|png|webp` + `KEY.txt` (the caption) + optional `KEY.json` (the layout of
img2dataset and most public image-text sets);
a class-labelled sample (`KEY.cls`, an integer, and no caption) is captioned from its class name
exactly as in training when `classes` is given (`--class-names`, `unimodal.data.classes`), and that
caption is its reference. Samples are read once, in order, with the training reader's decoding (`data.iter_samples`: images
resized on the shorter side and center-cropped to the model's resolution); corrupt or incomplete
samples are skipped and counted (`skipped`, `skipped_<reason>` in the metrics).

- Captioning: exact match, BLEU-4 and CIDEr-D against `KEY.txt` (plus any extra reference
  captions listed in `KEY.json` under "captions").
- VQA: where `KEY.json` holds {"qa": [{"question", "answer"}, ...]}: every pair (or
  `qa_per_image` of them), VQAv2 accuracy; an "answers" list in a pair gives several references.
- Generation: one image from each sample's caption; FID/KID against the shards' images (on by
  default). Where `KEY.json` holds the synthetic world's "objects" (our own synthetic shards), the
  images are also read back by the checker, split by the sample's "heldout" flag.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unimodal.data import iter_samples
from unimodal.data.checker import Checker, as_objects
from unimodal.data.classes import ClassCaptions
from unimodal.data.skips import SkipCounter
from unimodal.data.synthetic import WorldConfig
from unimodal.data.tasks import qa_pairs
from unimodal.images import to_pil

from .suites import (
    EvalSettings,
    Grid,
    answer_questions,
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


def _references(caption: str, metadata: dict[str, Any]) -> list[str]:
    extra = metadata.get("captions")
    extra = [c.strip() for c in extra if isinstance(c, str) and c.strip()] if isinstance(extra, list) else []
    return list(dict.fromkeys([caption, *extra]))


def _answers(metadata: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(question, reference answers) pairs of a sample: `unimodal.data.tasks.qa_pairs`, widened to a pair's
    "answers" list where it has one (VQAv2 has 10 answers per question)."""
    pairs = []
    for question, answer in qa_pairs(metadata):
        references = [answer]
        for item in metadata["qa"]:
            if isinstance(item, dict) and item.get("question", "").strip() == question:
                more = item.get("answers")
                if isinstance(more, list) and all(isinstance(a, str) for a in more) and more:
                    references = list(more)
                break
        pairs.append((question, references))
    return pairs


def _objects(metadata: dict[str, Any]):
    """The synthetic world's objects of a sample, or None when it has none (or malformed ones)."""
    try:
        return as_objects(metadata["objects"]) if isinstance(metadata.get("objects"), list) else None
    except (ValueError, TypeError):
        return None


def run_shards(model, data: str | Sequence[str], image_size: int, num_samples: int | None = None,
               settings: EvalSettings | None = None, qa_per_image: int = 0, fid: bool = True,
               feature_path: str | None = None, world_config: WorldConfig | None = None,
               out_dir: str | Path | None = None, title: str = "shards suite",
               classes: ClassCaptions | None = None) -> dict[str, Any]:
    """Run the suite on the first `num_samples` usable samples (None = all) of the shards `data`
    (a brace pattern, a directory of .tar files or a list); returns the flat metrics dict and,
    with `out_dir`, writes metrics.json, summary.md, captions.png, generated.png, predictions.jsonl.
    `classes` captions class-labelled samples (KEY.cls, no caption) as training does; without it
    they are skipped (skipped_missing_class_names)."""
    settings = settings or EvalSettings()
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive integer or None (all), got {num_samples!r}")
    counter = SkipCounter(where=" (eval)")
    samples = list(itertools.islice(iter_samples(data, image_size, counter=counter, classes=classes), num_samples))
    skipped = {f"skipped_{reason}": count for reason, count in sorted(counter.counts.items())}
    if not samples:
        raise ValueError(f"no usable sample in the shards {data!r} (skipped: {counter.as_dict() or 'none'}); "
                         "expected KEY.png|jpg|webp + KEY.txt per sample (or KEY.cls with --class-names)")
    if fid and len(samples) < 2:
        raise ValueError(f"FID/KID need at least 2 samples, the shards {data!r} gave {len(samples)}; pass --no-fid")
    images = to_pil(torch.stack([s.image for s in samples]))  # decoded [-1, 1] tensors -> PIL
    references = [_references(s.caption, s.metadata) for s in samples]
    predictions: list[dict[str, Any]] = []

    captions = caption_images(model, images, settings)
    metrics: dict[str, Any] = caption_metrics(captions, references)
    predictions += [{"task": "caption", "key": s.key, "prediction": p, "reference": r}
                    for s, p, r in zip(samples, captions, references)]

    asked = [(i, q, refs) for i, s in enumerate(samples)
             for q, refs in (_answers(s.metadata)[:qa_per_image] if qa_per_image else _answers(s.metadata))]
    answers = answer_questions(model, [images[i] for i, _, _ in asked], [q for _, q, _ in asked], settings)
    metrics.update(vqa_metrics(answers, [refs for _, _, refs in asked]))
    predictions += [{"task": "vqa", "key": samples[i].key, "question": q, "prediction": a, "reference": refs}
                    for (i, q, refs), a in zip(asked, answers)]

    prompts = [s.caption for s in samples]
    generated = generate_images(model, prompts, settings)
    results: list[dict[str, Any] | None] = [None] * len(samples)
    checked = [(i, objects) for i, s in enumerate(samples) if (objects := _objects(s.metadata)) is not None]
    if checked:
        checker = Checker(world_config or WorldConfig())
        for i, objects in checked:
            results[i] = checker.check(generated[i], objects)
        groups = ["heldout" if samples[i].metadata.get("heldout") else "seen" for i, _ in checked]
        metrics.update(generation_metrics([results[i] for i, _ in checked], groups))
    metrics["num_gen"] = len(generated)  # the checked ones are num_gen_seen + num_gen_heldout
    predictions += [{"task": "generation", "key": s.key, "prompt": p,
                     **({"verdict": verdict(r), "detected": r["detected"]} if r is not None else {})}
                    for s, p, r in zip(samples, prompts, results)]
    if fid:
        metrics.update(fid_metrics(images, generated, feature_path, settings))

    metrics.update({"skipped": sum(counter.counts.values()), **skipped, "num_samples": len(samples)})
    metrics = flat(metrics)
    if out_dir is not None:
        grids = [Grid("captions", images, [caption_label(p, r[0]) for p, r in zip(captions, references)]),
                 Grid("generated", generated, [generation_label(p, r) for p, r in zip(prompts, results)])]
        write_outputs(out_dir, metrics, grids, predictions, title, settings)
    return metrics
