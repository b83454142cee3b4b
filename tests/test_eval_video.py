"""The video suite on stub models of the moving-shapes world: a model that knows every clip scores 1,
one that plays its clips backwards fails exactly on direction; the runner writes the report (frame
strip grids, GIFs, the FVD note) and the command line refuses what the suite does not read."""

import json

import numpy as np
import pytest
from PIL import Image

from unimodal.data.motion import MotionConfig, MotionWorld
from unimodal.evaluation import run
from unimodal.evaluation.report import frame_strip
from unimodal.evaluation.suites import GRID_STRIP_HEIGHT, EvalSettings, Grid, generate_clips, verdict
from unimodal.evaluation.video_suite import FVD_NOTE, VIDEO_QUESTION_KINDS, run_video, video_question_kind
from unimodal.images import image_grid

NUM_CLIPS = 6
ATTRIBUTES = ("count", "colour", "shape", "direction")
KINDS = {kind for _, kind in VIDEO_QUESTION_KINDS}


class Truth:
    """Knows the first eval and heldout clips of a motion world: captions and answers a clip by its
    bytes, generates the rendered clip of a prompt's scene (played backwards with `reverse`)."""

    def __init__(self, config: MotionConfig | None = None, num: int = NUM_CLIPS, world_seed: int = 0,
                 reverse: bool = False, num_frames: int | None = None):
        world = MotionWorld(config)
        samples = [world.sample(i, split, world_seed) for split in ("eval", "heldout") for i in range(num)]
        self.by_bytes = {s.frames.tobytes(): s for s in samples}
        self.by_prompt = {s.caption: s.frames for s in samples}
        self.reverse, self.num_frames, self.calls = reverse, num_frames, []

    def _sample(self, clip):
        clip = np.asarray(clip)
        assert clip.dtype == np.uint8 and clip.ndim == 4 and clip.shape[-1] == 3  # (F, H, W, 3) uint8
        return self.by_bytes[clip.tobytes()]

    def caption(self, clips, max_new_tokens=32):
        return [self._sample(clip).caption for clip in clips]

    def answer(self, clips, questions, max_new_tokens=8):
        return [{qa["question"]: qa["answer"] for qa in self._sample(clip).qa}[question]
                for clip, question in zip(clips, questions)]

    def generate(self, prompts, num_frames=8, num_steps=25, guidance_scale=3.0, seed=0):
        self.calls.append({"prompts": list(prompts), "num_frames": num_frames, "seed": seed})
        clips = []
        for prompt in prompts:
            frames = self.by_prompt[prompt][:: -1 if self.reverse else 1][: self.num_frames]
            clips.append([Image.fromarray(frame) for frame in frames])
        return clips


def test_a_model_that_knows_every_clip_scores_one_and_batches_use_consecutive_seeds():
    model = Truth()
    metrics = run.evaluate_video(model, num_samples=NUM_CLIPS, num_steps=1, qa_per_image=0, batch_size=4, seed=7)
    assert metrics["caption_exact"] == metrics["vqa_accuracy"] == 1.0
    assert metrics["caption_bleu4"] == pytest.approx(1.0)
    for group in ("seen", "heldout"):
        assert metrics[f"gen_all_correct_{group}"] == metrics[f"gen_object_accuracy_{group}"] == 1.0
        assert all(metrics[f"gen_{attribute}_{group}"] == 1.0 for attribute in ATTRIBUTES)
        assert f"gen_position_{group}" not in metrics and metrics[f"num_gen_{group}"] == NUM_CLIPS // 2
    assert metrics["gen_all_correct"] == 1.0 and metrics["num_frames"] == 8
    world = MotionWorld()
    assert metrics["num_vqa"] == sum(len(world.sample(i, "eval").qa) for i in range(NUM_CLIPS))  # every question
    kinds = {key[len("vqa_accuracy_"):] for key in metrics if key.startswith("vqa_accuracy_")}
    assert kinds == KINDS and all(metrics[f"vqa_accuracy_{kind}"] == 1.0 for kind in kinds)
    assert [call["seed"] for call in model.calls] == [7, 11]  # clip i always gets the noise of seed + i
    assert [len(call["prompts"]) for call in model.calls] == [4, 2]
    assert all(call["num_frames"] == 8 for call in model.calls)
    assert not any("fvd" in key or "fid" in key for key in metrics)


def test_clips_played_backwards_are_wrong_on_direction_only(tmp_path):
    settings = EvalSettings(num_steps=1, progress=False)
    metrics = run_video(Truth(reverse=True), num_samples=NUM_CLIPS, settings=settings, qa_per_image=1, out_dir=tmp_path)
    world = MotionWorld()
    for group, split in (("seen", "eval"), ("heldout", "heldout")):
        clips = [world.sample(i, split) for i in range(NUM_CLIPS // 2)]
        movers = [any(o.direction != "still" for o in c.objects) for c in clips]
        assert any(movers)  # else this test would not test reversal
        assert metrics[f"gen_direction_{group}"] == metrics[f"gen_all_correct_{group}"] == 1 - np.mean(movers)
        assert all(metrics[f"gen_{attribute}_{group}"] == 1.0 for attribute in ("count", "colour", "shape"))
        lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
        verdicts = [line["verdict"] for line in lines if line["task"] == "generation" and line["split"] == split]
        assert verdicts == ["wrong: direction" if moves else "OK" for moves in movers]
    assert metrics["caption_exact"] == 1.0  # understanding is untouched


def test_run_suite_writes_metrics_summary_strip_grids_gifs_and_predictions(tmp_path):
    out = tmp_path / "video"
    config = run.EvalConfig(suite="video", num_samples=NUM_CLIPS, num_steps=1, qa_per_image=2, batch_size=4,
                            out_dir=str(out), progress=False)
    metrics = run.run_suite(Truth(), config)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for key in ("caption_exact", "caption_bleu4", "caption_cider", "vqa_accuracy", "gen_all_correct_seen",
                "gen_all_correct_heldout", "gen_direction_seen", "gen_direction_heldout"):
        assert key in metrics
    assert (metrics["num_caption"], metrics["num_vqa"], metrics["num_gen_seen"], metrics["num_gen_heldout"]) == (
        NUM_CLIPS, 2 * NUM_CLIPS, NUM_CLIPS // 2, NUM_CLIPS // 2)
    summary = (out / "summary.md").read_text()
    assert FVD_NOTE in summary and "| gen_direction_seen |" in summary and "fvd |" not in summary
    for grid in ("captions", "generated_seen", "generated_heldout"):
        assert f"({grid}.png)" in summary
        width, height = Image.open(out / f"{grid}.png").size
        assert width > 8 * 32 * 2  # a strip of 8 frames of 32 px, each frame shown at 2x, not squashed to 128 px
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted({line["task"] for line in lines}) == ["caption", "generation", "vqa"]
    assert all(line["verdict"] == "OK" for line in lines if line["task"] == "generation")
    gifs = sorted(p.name for p in (out / "clips").glob("*.gif"))
    assert gifs == [f"{group}_{i:03d}.gif" for group in ("heldout", "seen") for i in range(NUM_CLIPS // 2)]
    gif = Image.open(out / "clips" / "seen_000.gif")
    assert (gif.n_frames, gif.size) == (8, (128, 128))  # 32 px frames played at 4x


def test_frame_strips_lay_frames_left_to_right_and_fill_wide_grid_cells():
    clip = MotionWorld().sample(0, "eval").frames  # (8, 32, 32, 3)
    strip = frame_strip(clip)
    assert strip.size == (8 * 32 + 7, 32)
    assert np.array_equal(np.asarray(strip)[:, :32], clip[0]) and np.array_equal(np.asarray(strip)[:, -32:], clip[-1])
    assert frame_strip([Image.fromarray(f) for f in clip], gap=0).size == (8 * 32, 32)
    grid = Grid.of_strips("clips", [strip] * 3, ["a", "b", "c"])
    assert (grid.cell_size, grid.cell_width, grid.columns) == (GRID_STRIP_HEIGHT, 526, 2)
    square = image_grid([strip], cell_size=128)
    wide = image_grid([strip], cell_size=grid.cell_size, cell_width=grid.cell_width)
    assert square.size[0] == 128 + 8 and wide.size[0] == 526 + 8  # the default squashes a strip into 128 px
    cell = np.asarray(wide)[4: 4 + 64, 4: 4 + 526]
    assert np.array_equal(cell[::2, :64:2], clip[0])  # the first frame, upscaled 2x (NEAREST)
    with pytest.raises(ValueError, match="share one size"):
        frame_strip([Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))])


def test_question_kinds_cover_every_motion_question_and_verdicts_take_the_attributes():
    world = MotionWorld()
    kinds = {video_question_kind(qa["question"]) for i in range(20) for qa in world.sample(i, "eval").qa}
    assert kinds == KINDS
    result = {"all_correct": False, "count": True, "colour": True, "shape": True, "direction": False}
    assert verdict(result, ATTRIBUTES) == "wrong: direction"
    with pytest.raises(KeyError):
        verdict(result)  # the still checker's attributes: a clip result has no position


def test_a_clip_of_the_wrong_length_is_an_error():
    settings = EvalSettings(num_steps=1, progress=False)
    prompts = [MotionWorld().sample(0, "eval").caption]
    with pytest.raises(RuntimeError, match="has 5 frames, 8 were asked for"):
        generate_clips(Truth(num_frames=5), prompts, 8, settings)


def test_motion_config_comes_from_the_flag_then_motion_json_then_the_default(tmp_path):
    assert run.load_motion_config(None, tmp_path) == MotionConfig()
    (tmp_path / "world.json").write_text(json.dumps({"image_size": 24}))  # the still world's: not read for video
    assert run.load_motion_config(None, tmp_path) == MotionConfig()
    (tmp_path / "motion.json").write_text(json.dumps({"image_size": [48, 32], "num_frames": 6}))
    assert run.load_motion_config(None, tmp_path) == MotionConfig(image_size=(48, 32), num_frames=6)
    flag = tmp_path / "motion.yaml"
    flag.write_text("max_shapes: 1\n")
    assert run.load_motion_config(flag, tmp_path) == MotionConfig(max_shapes=1)
    (tmp_path / "bad.yaml").write_text("num_frame: 4\n")
    with pytest.raises(ValueError, match="num_frame"):
        run.load_motion_config(tmp_path / "bad.yaml")
    for suite, name in (("video", "motion.json"), ("shapes", "world.json")):
        args = run._parser().parse_args(["--model", str(tmp_path), "--suite", suite])
        assert run.config_from_args(args).world_config == str(tmp_path / name)


@pytest.mark.parametrize("extra, message", [
    (["--canvases", "32x32"], "only read by the shapes suites"),
    (["--fid"], "no FID/FVD"),
    (["--data", "x.tar"], "only read by the shards suite"),
])
def test_the_command_line_refuses_what_the_video_suite_does_not_read(tmp_path, capsys, extra, message):
    assert run.main(["--model", str(tmp_path), "--suite", "video", *extra]) == 2
    assert message in capsys.readouterr().err
