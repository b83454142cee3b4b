"""The `video` suite: captioning, VQA and checked generation of clips of the moving-shapes world.

The `shapes` suite (`unimodal.evaluation.shapes_suite`) on clips: clips come from the `eval` and
`heldout` splits of `unimodal.data.motion.MotionWorld`, whose seed streams differ from the `train`
split's, so no evaluated clip was seen in training (index i of (split, seed) is fixed).

- Captioning: the first `num_samples` `eval` clips; exact match, BLEU-4 and CIDEr-D against the one
  true caption ("a red circle moves from left to right and a blue square stays still").
- VQA: `qa_per_image` question-answer pairs of each of those clips (drawn as `select_qa` draws them;
  0 = all), VQAv2 accuracy overall and per question kind (count, direction, colour, shape, exists).
- Generation: clips of the world's `num_frames` frames from the captions of ceil(N/2) `eval` clips
  ("seen": every (colour, shape) was in training) and floor(N/2) `heldout` clips (each has a
  held-out combination); each is read back by `unimodal.data.motion.MotionChecker` and compared
  with the clip's objects: count, colour, shape and direction.

The metric keys are the image suite's (caption_exact, vqa_accuracy, gen_all_correct_seen, ...), with
gen_direction_<group> in place of the still checker's position and size. FVD is not reported: it
needs the pretrained I3D network (`FVD_NOTE`, also written at the top of summary.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from unimodal.data.motion import MOTION_ATTRIBUTES, MotionConfig, MotionWorld
from unimodal.data.motion_checker import MotionChecker

from .report import frame_strip, save_gif
from .shapes_suite import question_kind, select_qa
from .suites import (
    GRID_CELL_SIZE,
    EvalSettings,
    Grid,
    answer_clip_questions,
    caption_clips,
    caption_label,
    caption_metrics,
    flat,
    generate_clips,
    generation_label,
    generation_metrics,
    verdict,
    vqa_metrics,
    write_outputs,
)

# Question kinds by the opening words of the motion world's templates
# (`unimodal.data.motion.motion_question_answers`): "does the red circle move?" asks about motion.
VIDEO_QUESTION_KINDS = (("how many", "count"), ("which way", "direction"), ("does the", "direction"),
                        ("what colour", "colour"), ("what shape", "shape"), ("is there", "exists"))
NUM_GIFS = 8  # generated clips per group written as animated GIFs to out_dir/clips/
FVD_NOTE = ("FVD is not reported: it needs the pretrained I3D video network (Kinetics-400 weights), which "
            "cannot be obtained offline, and a stand-in network would give numbers comparable to nothing. "
            "Generation is scored by the motion checker instead (gen_all_correct_*, gen_direction_*, ...).")


def video_question_kind(question: str) -> str:
    """The category of a motion-world question: "count", "direction", "colour", "shape", "exists" or "other"."""
    return question_kind(question, VIDEO_QUESTION_KINDS)


def run_video(model, motion_config: MotionConfig | None = None, num_samples: int = 200,
              settings: EvalSettings | None = None, qa_per_image: int = 5, world_seed: int = 0,
              out_dir: str | Path | None = None, title: str = "video suite") -> dict[str, Any]:
    """Run the suite on `model` and return the flat metrics dict.

    Args:
        model: anything with `caption(clips, ...)`, `answer(clips, questions, ...)` and
            `generate(prompts, num_frames=F, ...)` for clips (see `unimodal.evaluation.suites`): clips go in
            as (F, H, W, 3) uint8 arrays, generated clips come back as F frames each.
        motion_config: the world the model was trained on (default `MotionConfig()`).
        num_samples: eval clips captioned and questioned, and clips generated (half seen, half
            held-out; all seen when the world has no held-out combination). At least 2.
        settings: inference settings (batch size, sampling steps, guidance, seed, ...).
        qa_per_image: questions per clip, 0 = every question of the clip.
        world_seed: seed of the world's eval/heldout clips.
        out_dir: when given, also writes metrics.json, summary.md (with `FVD_NOTE`), the frame-strip
            grids captions.png, generated_seen.png and generated_heldout.png, predictions.jsonl,
            and the first `NUM_GIFS` generated clips of each group as clips/<group>_<i>.gif.
        title: heading of summary.md.

    Returns:
        caption_exact, caption_bleu4, caption_cider, num_caption; vqa_accuracy, vqa_accuracy_<kind>,
        num_vqa, num_vqa_<kind>; gen_{all_correct,count,colour,shape,direction,object_accuracy}_<group>
        and num_gen_<group> for group in (seen, heldout); gen_all_correct, num_gen; num_frames.

    Raises:
        ValueError: num_samples < 2 or qa_per_image < 0.
        RuntimeError: the model returns a wrong number of results or clips of the wrong length.
    """
    settings = settings or EvalSettings()
    world = MotionWorld(motion_config or MotionConfig())
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"the video suite needs num_samples >= 2 (half seen, half held-out clips), got {num_samples}")
    if not isinstance(qa_per_image, int) or qa_per_image < 0:
        raise ValueError(f"qa_per_image must be >= 0 (0 = every QA pair), got {qa_per_image!r}")
    num_frames = world.config.num_frames
    clips = [world.sample(i, "eval", world_seed) for i in range(num_samples)]
    predictions: list[dict[str, Any]] = []

    # ---- captioning
    frames = [c.frames for c in clips]  # (F, H, W, 3) uint8
    captions = caption_clips(model, frames, settings)
    metrics = caption_metrics(captions, [[c.caption] for c in clips])
    predictions += [{"task": "caption", "split": "eval", "index": i, "prediction": p, "reference": c.caption}
                    for i, (p, c) in enumerate(zip(captions, clips))]

    # ---- VQA
    asked = [(i, qa) for i, c in enumerate(clips) for qa in select_qa(c, i, qa_per_image, world_seed)]
    answers = answer_clip_questions(model, [frames[i] for i, _ in asked], [qa["question"] for _, qa in asked], settings)
    metrics.update(vqa_metrics(answers, [[qa["answer"]] for _, qa in asked],
                               [video_question_kind(qa["question"]) for _, qa in asked]))
    predictions += [{"task": "vqa", "split": "eval", "index": i, "question": qa["question"], "prediction": a,
                     "reference": qa["answer"]} for (i, qa), a in zip(asked, answers)]

    # ---- generation, checked
    num_heldout = num_samples // 2 if world.config.heldout else 0
    targets = [(c, "seen", i) for i, c in enumerate(clips[: math.ceil(num_samples / 2) if num_heldout else None])]
    targets += [(world.sample(i, "heldout", world_seed), "heldout", i) for i in range(num_heldout)]
    generated = generate_clips(model, [c.caption for c, _, _ in targets], num_frames, settings)
    checker = MotionChecker(world.config)
    results = [checker.check(clip, c.objects) for clip, (c, _, _) in zip(generated, targets)]
    metrics.update(generation_metrics(results, [group for _, group, _ in targets], MOTION_ATTRIBUTES))
    metrics["num_frames"] = num_frames
    predictions += [{"task": "generation", "split": "eval" if group == "seen" else "heldout", "index": i,
                     "prompt": c.caption, "verdict": verdict(r, MOTION_ATTRIBUTES), "detected": r["detected"]}
                    for (c, group, i), r in zip(targets, results)]

    metrics = flat(metrics)
    if out_dir is not None:
        write_video_outputs(out_dir, metrics, clips, captions, targets, generated, results, predictions, title,
                            settings, world.config.fps)
    return metrics


def write_video_outputs(out_dir: str | Path, metrics: dict[str, Any], clips: list, captions: list[str],
                        targets: list[tuple[Any, str, int]], generated: list[list], results: list[dict[str, Any]],
                        predictions: list[dict[str, Any]], title: str, settings: EvalSettings,
                        fps: float) -> dict[str, Path]:
    """The report of `run_video` in `out_dir`: `write_outputs` with frame-strip grids and the FVD note,
    then the first `NUM_GIFS` generated clips of each group as clips/<group>_<index>.gif at `fps`,
    upscaled (NEAREST) to about GRID_CELL_SIZE px (at most settings.num_grid_images per group, as in
    the grids). Returns the paths by name."""
    out = Path(out_dir)
    grids = [Grid.of_strips("captions", [frame_strip(c.frames) for c in clips[: settings.num_grid_images]],
                            [caption_label(p, c.caption) for p, c in zip(captions, clips)][: settings.num_grid_images])]
    for group in ("seen", "heldout"):
        chosen = [k for k, (_, g, _) in enumerate(targets) if g == group][: settings.num_grid_images]
        grids.append(Grid.of_strips(f"generated_{group}", [frame_strip(generated[k]) for k in chosen],
                                    [generation_label(targets[k][0].caption, results[k], MOTION_ATTRIBUTES)
                                     for k in chosen]))
    notes = [FVD_NOTE, f"Generated clips play as GIFs in clips/ (the first {NUM_GIFS} of each group, {fps:g} fps); "
             "the grids show each clip's frames left to right."]
    paths = write_outputs(out, metrics, grids, predictions, title, settings, notes=notes)
    for group in ("seen", "heldout"):
        chosen = [k for k, (_, g, _) in enumerate(targets) if g == group][: min(NUM_GIFS, settings.num_grid_images)]
        for k in chosen:
            name = f"{group}_{targets[k][2]:03d}"
            scale = max(1, GRID_CELL_SIZE // max(generated[k][0].size))  # a 32 px clip plays at 128 px
            paths[f"clip_{name}"] = save_gif(generated[k], out / "clips" / f"{name}.gif", fps=fps, scale=scale)
    return paths
