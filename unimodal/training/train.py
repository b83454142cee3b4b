"""Train a unimodal model: `python -m unimodal.training --config configs/tiny.yaml [key.path=value ...]`.

The same command runs one CPU process, `torchrun --nproc_per_node N`, the `deepspeed` launcher with
a hostfile, or SLURM `srun` (configs/README.md). A run does, in one folder (`runs/<name>/`):

    shards (synthetic, if asked and missing) -> tokenizer -> train (checkpoints, metrics, grids)
    -> export/ (EMA weights) -> loss_curves.png -> eval/ (if enabled) -> a summary of where things are

and continues a killed run from its latest complete checkpoint when started again (`--resume` or
`checkpoint.resume=auto`, the default).

    runs/<name>/
      config.yaml  metrics.jsonl  loss_curves.png  tensorboard/  tokenizer/  shards/ (synthetic)
      checkpoints/  samples/  export/  eval/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unimodal.api import UniModal
from unimodal.codecs import build_codec
from unimodal.evaluation.run import EvalConfig, evaluate_shapes, run_suite
from unimodal.model import UniModalModel
from unimodal.objective import Objective
from unimodal.tokenizer import Tokenizer

from . import pipeline
from .checkpoint import Checkpointer, resolve_resume, restore_rng
from .config import RunConfig, config_changes, load_run_config, save_run_config
from .ema import EMA
from .engine import DistInfo, Engine, collective_failure, deepspeed_config, init_distributed, shutdown_distributed
from .export import build_inference_model, export_run, inference_weights
from .loop import LoopContext, StopSignals, TrainingDiverged, TrainingLoop
from .metrics import PLOT_FILE, MetricsLogger, plot_losses
from .samples import SampleWriter

log = logging.getLogger("training")

EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 2
EXIT_CONFIG = 3
EXIT_COLLECTIVE = 4


# ------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """Every piece of a prepared run (tests drive these directly)."""

    config: RunConfig
    dist: DistInfo
    tokenizer: Tokenizer
    engine: Engine
    ema: EMA | None
    codec: Any
    loop: TrainingLoop
    samples: SampleWriter | None
    _inference: UniModalModel | None = None
    _inference_step: int = -1

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def train(self) -> str:
        """"finished" or "interrupted"; raises TrainingDiverged."""
        with StopSignals().installed() as signals:
            return self.loop.run(signals)

    def inference_model(self, step: int) -> UniModalModel | None:
        """A plain model with the export's weights (EMA) as of `step`, on rank 0 (None elsewhere).
        Every rank calls: gathering weights is a collective under ZeRO-3."""
        if self._inference_step != step:
            weights = inference_weights(self.engine, self.ema)
            if self.dist.is_main:
                if self._inference is None:
                    self._inference = build_inference_model(self.engine, device=self.engine.device)
                self._inference.load_state_dict(weights)
            self._inference_step = step
        return self._inference

    def write_samples(self, step: int) -> None:
        """Sample grids from the EMA weights (every rank calls; rank 0 samples)."""
        if self.config.logging.sample_every < 0:  # the same decision on every rank
            return
        model = self.inference_model(step)
        if model is not None and self.samples is not None:
            written = self.samples.write(step, model, self.tokenizer, self.codec)
            self.loop.ctx.metrics.event(step, "samples", "", **written)

    def evaluate(self, step: int) -> None:
        """A small shapes-suite eval of the EMA weights into metrics.jsonl (every rank calls)."""
        model = self.inference_model(step)
        if model is None:
            return
        with torch.random.fork_rng(devices=[]):
            metrics = evaluate_shapes(UniModal(model, self.tokenizer, self.codec), num_samples=self.config.eval.num_samples,
                                      num_steps=self.config.eval.num_steps, world_config=pipeline.world_config(self.config))
        self.loop.ctx.metrics.record(step, {f"eval/{k}": v for k, v in metrics.items()
                                            if isinstance(v, (int, float)) and not k.startswith("num_")})

    def export(self) -> Path | None:
        path = export_run(self.run_dir / "export", self.engine, self.ema, self.tokenizer, self.codec)
        if path is not None and self.config.synthetic.enabled:
            pipeline.write_world_file(self.config, path)  # unimodal.evaluation.run checks generations against this world
        return path

    def close(self) -> None:
        self.loop.ctx.metrics.close()


def seed_everything(seed: int, rank: int) -> torch.Generator:
    """Global streams (python, numpy, torch) per rank, and the loop's noise generator."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    return torch.Generator().manual_seed(seed * 10_007 + rank)


def prepare_run(config: RunConfig) -> Run:
    """Distributed set-up, data, tokenizer, model, engine, EMA and resume: a run ready to train."""
    dist = init_distributed(config.deepspeed.collective_timeout_s)
    barrier = (lambda: torch.distributed.barrier()) if dist.world_size > 1 else (lambda: None)
    run_dir = config.run_dir
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    pipeline.resolve_shards(config)
    config.data.class_captions()  # read and check data.class_names now, before the model is built
    pipeline.ensure_synthetic_shards(config, dist.is_main, barrier)
    tokenizer = pipeline.load_tokenizer(config, dist.is_main, barrier)
    config.model.vocab_size = tokenizer.vocab_size
    if dist.is_main:
        save_run_config(config, run_dir / "config.yaml")

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = UniModalModel(config.model)
    engine = Engine(model, config, dist)
    ema = EMA(engine, config.ema.decay, config.ema.update_every) if config.ema.enabled else None
    codec = build_codec(config.model).to(dist.device)
    generator = seed_everything(config.seed, dist.rank)
    loader = pipeline.build_loader(config, tokenizer, dist.rank, dist.world_size)

    checkpointer = Checkpointer(run_dir / "checkpoints", engine, config.checkpoint.keep)
    checkpointer.extra_files["config.yaml"] = yaml.safe_dump(config.to_dict(), sort_keys=False)
    checkpointer.remove_stale()
    start_step, num_nonfinite = 0, 0
    restore_from = resolve_resume(config.checkpoint.resume, checkpointer.save_dir)
    if restore_from is not None:
        state = checkpointer.load(restore_from, ema)
        start_step = engine.global_step
        if state is not None:
            if state["step"] != start_step:
                raise RuntimeError(f"{restore_from}: trainer state is at step {state['step']} but DeepSpeed's at "
                                   f"{start_step}; the checkpoint is inconsistent")
            loader.load_state_dict(state["data"])
            restore_rng(state["rng"], generator)
            num_nonfinite = int(state.get("num_nonfinite", 0))
        log.info("resumed from %s at step %d", restore_from, start_step)
        warn_if_config_changed(restore_from, config)

    metrics = MetricsLogger(run_dir, config.schedule.total_steps, start_step, enabled=dist.is_main,
                            progress_bar=config.logging.progress_bar, tensorboard=config.logging.tensorboard)
    samples = None  # rank 0 only; other ranks still take part in gathering the weights
    if config.logging.sample_every >= 0 and dist.is_main:
        sample_set = pipeline.sample_set(config)
        if sample_set is not None:
            samples = SampleWriter(run_dir / "samples", sample_set, config.logging.sample_steps,
                                   config.logging.guidance_scale, seed=config.seed)
    ctx = LoopContext(config=config, engine=engine, ema=ema, loader=loader, objective=Objective(config.model),
                      codec=codec, checkpointer=checkpointer, metrics=metrics, generator=generator,
                      num_nonfinite=num_nonfinite)
    run = Run(config, dist, tokenizer, engine, ema, codec, TrainingLoop(ctx, start_step), samples)
    ctx.periodic = [(config.logging.sample_every, run.write_samples), (config.eval.every, run.evaluate)]
    if dist.is_main:
        log.info("run folder %s | %.2fM parameters | world size %d | ZeRO %d | %s | step %d of %d",
                 run_dir, model.num_parameters() / 1e6, dist.world_size, config.deepspeed.zero_stage,
                 engine.precision, start_step, config.schedule.total_steps)
    return run


def warn_if_config_changed(checkpoint_dir: Path, config: RunConfig) -> None:
    """Log a warning naming every key whose value differs from the config the checkpoint was saved
    with: resuming (the default when the run folder has checkpoints) under another config is allowed,
    e.g. to lengthen a run, but a trial run's folder silently reused by a full run is a common mistake."""
    saved = Path(checkpoint_dir) / "config.yaml"
    if not saved.is_file():
        return
    changes = [line for line in config_changes(yaml.safe_load(saved.read_text()) or {}, config.to_dict())
               if not line.startswith("checkpoint.resume:")]
    if changes:
        log.warning("resuming %s under a config that differs from the one it was saved with (use another "
                    "name=... or delete %s for a fresh run):\n  %s", checkpoint_dir, config.run_dir, "\n  ".join(changes))


# ------------------------------------------------------------------------------ after training
def eval_config(config: RunConfig, export_dir: Path, final: EvalConfig | None = None) -> EvalConfig:
    """`final` (default `eval.final`) with what the run fills in when unset: out_dir <run>/eval (a
    second pass, `eval.final_video`: <run>/eval/<suite>), the sample shards and data.class_names (with
    its template) for the shards suite, the export's world.json (motion.json for the video suite); no
    progress bars without logging.progress_bar."""
    second = final is not None
    final = final or config.eval.final
    world = export_dir / (pipeline.MOTION_FILE if final.suite == "video" else pipeline.WORLD_FILE)
    data = final.data
    if final.suite == "shards" and not data:
        data = str(config.logging.sample_shards or config.data.train_shards)
    if final.suite == "shards" and final.class_names is None and config.data.class_names is not None:
        final = dataclasses.replace(final, class_names=config.data.class_names,
                                    class_caption_template=config.data.class_caption_template)
    out_dir = final.out_dir or str(config.run_dir / "eval" / (final.suite if second else ""))
    return dataclasses.replace(final, data=data, out_dir=out_dir.rstrip("/"),
                               world_config=final.world_config or (str(world) if world.is_file() else None),
                               progress=final.progress and config.logging.progress_bar)


def run_eval(config: RunConfig, export_dir: Path, metrics_path: Path, step: int) -> Path | None:
    """`unimodal.evaluation.run.run_suite` on the export (rank 0), if eval is enabled: `eval.final`, then
    `eval.final_video` when set; their headline numbers are also appended to metrics.jsonl as eval/*
    (eval/<suite>/* for the second) at the final step. A usage error (missing shards or feature file)
    is logged and the run still finishes. Returns the first pass's folder."""
    if not config.eval.enabled:
        return None
    passes = [(eval_config(config, export_dir), "eval/")]
    if config.eval.final_video is not None:
        second = eval_config(config, export_dir, config.eval.final_video)
        passes.append((second, f"eval/{second.suite}/"))
    first = None
    for suite, prefix in passes:
        try:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            result = run_suite(UniModal.from_pretrained(export_dir, device=device), suite)
        except (ValueError, FileNotFoundError) as error:
            log.error("evaluation failed: %s (settings: %s)", error, suite)
            continue
        numbers = {f"{prefix}{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not k.startswith("num_")}
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps({"step": step, **numbers}) + "\n")
        first = first or Path(suite.out_dir)
    return first


def finish(run: Run) -> dict[str, str]:
    """Final grids, export, loss plot and eval; returns where they are (rank 0)."""
    config, where = run.config, {"run folder": str(run.run_dir)}
    step = run.loop.step
    run.write_samples(step)
    if config.checkpoint.export:
        export = run.export()
        if export is not None:
            where["model (export)"] = str(export)
    if not run.dist.is_main:
        return where
    run.close()
    where["metrics"] = str(run.run_dir / "metrics.jsonl")
    if config.logging.plot and plot_losses(run.run_dir / "metrics.jsonl", run.run_dir / PLOT_FILE):
        where["loss curves"] = str(run.run_dir / PLOT_FILE)
    grids = sorted((run.run_dir / "samples").glob(f"step_{step:08d}_*.png"))
    if grids:
        where["sample grids"] = ", ".join(str(g) for g in grids)
    where["checkpoints"] = str(run.run_dir / "checkpoints")
    if config.checkpoint.export and "model (export)" in where:
        report = run_eval(config, Path(where["model (export)"]), run.run_dir / "metrics.jsonl", step)
        if report is not None:
            where["eval report"] = str(report)
    return where


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m unimodal.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="run config YAML (configs/tiny.yaml, ...); defaults apply without one")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                        help="continue from the run folder's latest checkpoint (default behaviour), or from PATH "
                             "(a checkpoints folder or one checkpoint)")
    parser.add_argument("--fresh", action="store_true", help="never resume (refuses a folder with checkpoints)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved run config and the derived DeepSpeed config, then exit")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, parsed as YAML")
    args = parser.parse_intermixed_args(argv)
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume key=value`: an override after a bare --resume
        args.resume = "auto"
    return args


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def collective_failure_message(problem: str, error: BaseException, config: RunConfig, run: Run | None) -> str:
    """The one line a rank prints when a collective times out or loses its peer: which rank, which step."""
    rank = int(os.environ.get("RANK", "0"))
    if run is None:
        where = "during set-up"
    elif run.loop.step < config.schedule.total_steps:
        where = f"at step {run.loop.step + 1} ({run.loop.step} done)"
    else:
        where = f"after the last step ({run.loop.step}: checkpoint, grids or export)"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"rank {rank}: {problem} {where}; another rank probably diverged or died: look for its error above "
            f"(deepspeed.collective_timeout_s={config.deepspeed.collective_timeout_s} sets the limit). [{detail}]")


def main(argv: list[str] | None = None) -> int:
    """Run the whole job; returns the process exit code (0 done, 130 interrupted, 2 diverged,
    3 bad config, 4 a collective timed out or lost a rank)."""
    args = parse_args(argv)
    _setup_logging()
    try:
        config = load_run_config(args.config, args.overrides)
        config.data.class_captions()  # a missing, empty or blank-lined data.class_names file is a config error
        if args.resume and args.fresh:
            raise ValueError("--resume and --fresh contradict each other")
    except (ValueError, FileNotFoundError) as error:  # a user error: say what is wrong, no traceback
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if args.resume:
        config.checkpoint.resume = args.resume
    if args.fresh:
        config.checkpoint.resume = "never"
    if args.dry_run:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(yaml.safe_dump({"run": config.to_dict(), f"deepspeed (world size {world}, {device.type})":
                              deepspeed_config(config, world, device)}, sort_keys=False))
        return 0
    run = None
    try:
        run = prepare_run(config)
        outcome = run.train()
        where = finish(run) if outcome == "finished" else {}
    except TrainingDiverged as error:
        run.close()
        log.error("%s", error)
        return EXIT_DIVERGED
    except RuntimeError as error:  # a collective that timed out (or whose peer is gone) must end the run, not hang it
        problem = collective_failure(error, config.deepspeed.collective_timeout_s)
        if problem is None:
            raise
        message = collective_failure_message(problem, error, config, run)
        log.error("%s", message)
        if run is not None:
            run.loop.ctx.metrics.event(run.loop.step, "collective_failed", "", error=message)  # logged above
            run.close()
        return EXIT_COLLECTIVE
    if outcome == "interrupted":
        run.close()
        if run.dist.is_main:
            print(f"interrupted: checkpoint at step {run.loop.step} in {run.run_dir / 'checkpoints'}; "
                  f"run the same command again to continue", flush=True)
        return EXIT_INTERRUPTED
    shutdown_distributed()
    if run.dist.is_main:
        width = max(len(k) for k in where)
        print("\n".join(["done."] + [f"  {k:<{width}}  {v}" for k, v in where.items()]), flush=True)
        (run.run_dir / "outputs.json").write_text(json.dumps(where, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
