"""The typed run configuration: defaults <- YAML file <- dot-path overrides, strict about unknown keys.

    config = load_run_config("configs/tiny.yaml", ["deepspeed.zero_stage=3", "schedule.total_steps=50"])

Every section is a dataclass; unknown keys at any depth raise `ValueError` naming the dotted path,
so a typo fails at start-up instead of silently training the wrong thing. Override values are
parsed as YAML (`true`, `3e-4`, `[1, 2]`, `null`). The resolved config is written into the run
folder as `config.yaml`, and loading that file gives back the same config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unimodal.config import ModelConfig, config_from_dict, preset_values
from unimodal.data.config import DataConfig
from unimodal.evaluation.run import EvalConfig
from unimodal.images import aspect_buckets

PRECISIONS = ("auto", "fp32", "bf16", "bf16_autocast")
OPTIMIZER_IMPLS = ("deepspeed", "torch")
COMPILE_MODES = ("none", "layers")


@dataclass
class TokenizerConfig:
    """Which tokenizer the run uses."""

    path: str | None = None  # a sentencepiece .model used as is; None = train one on the shards' text
    vocab_size: int = 512  # size of a tokenizer trained here (lowered automatically on tiny corpora)
    max_samples: int = 5000  # train-shard samples whose caption and QA text train it


MEDIA = ("image", "video")  # synthetic.media: the still shapes world, the moving-shapes world


@dataclass
class SyntheticVideoConfig:
    """The moving-shapes world's splits (`unimodal.data.motion`), written when synthetic.media has "video"."""

    num_train: int = 20000
    num_eval: int = 500
    num_heldout: int = 500
    # unimodal.data.motion.MotionConfig fields; image_size comes from model.image_size, num_frames and
    # fps from data.num_frames / data.video_fps. Saved as motion.json beside the shards and in the export.
    world: dict[str, Any] = field(default_factory=dict)


@dataclass
class SyntheticConfig:
    """Synthetic-world shards written before training when they are missing (the tiny main job)."""

    enabled: bool = False
    # Which worlds: "image" (still scenes, <shards>/{train,eval,heldout}, read by data.train_shards) and/or
    # "video" (moving shapes, <shards>/video/{train,eval,heldout}, read by data.video_shards).
    media: list[str] = field(default_factory=lambda: ["image"])
    video: SyntheticVideoConfig = field(default_factory=SyntheticVideoConfig)
    output_dir: str | None = None  # None = <run folder>/shards; relative paths resolve against the cwd
    num_train: int = 20000
    num_eval: int = 500
    num_heldout: int = 500
    samples_per_shard: int = 2000
    seed: int = 0
    # unimodal.data.synthetic.WorldConfig fields (image_size comes from model.image_size). Saved as world.json
    # beside the shards and in the export, so eval checks generations against the same world.
    world: dict[str, Any] = field(default_factory=dict)
    # [[W, H], ...] px: every split cycles through these canvases per sample (equal parts), each KEY.json
    # recording its "canvas"; None = all on the model's square image_size, as before canvases existed.
    canvases: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.media = list(self.media)
        if not self.media or len(set(self.media)) != len(self.media) or any(m not in MEDIA for m in self.media):
            raise ValueError(f"synthetic.media must list one or both of {MEDIA}, got {self.media}")
        if self.canvases is not None:
            if not self.canvases or any(len(c) != 2 or min(c) < 12 for c in self.canvases):
                raise ValueError(f"synthetic.canvases must be a non-empty list of [width, height] pairs of >= 12 "
                                 f"px, e.g. [[32, 32], [48, 24]]; got {self.canvases}")
            self.canvases = [(int(width), int(height)) for width, height in self.canvases]


@dataclass
class OptimizerConfig:
    """AdamW. `impl="deepspeed"`: DeepSpeed's own AdamW entry with `torch_adam` (no JIT-compiled
    FusedAdam); `impl="torch"`: a client `torch.optim.AdamW` (fused on GPU, foreach on CPU)."""

    impl: str = "deepspeed"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05  # applied to matrices only; norms, biases and embeddings are exempt
    fused: bool | None = None  # torch impl: None = fused on GPU, foreach on CPU


@dataclass
class ScheduleConfig:
    """Linear warm-up then cosine decay, counted in optimizer steps."""

    total_steps: int = 1000
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio


@dataclass
class EngineConfig:
    """What the derived DeepSpeed config is made of (see `unimodal.training.engine.deepspeed_config`).

    The micro-batch is `data.batch_size` (sequences per process per forward), so batch sizes are
    set in one place; the global batch is data.batch_size * gradient_accumulation_steps * world size.
    """

    zero_stage: int = 0  # 0-3
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0  # 0 disables clipping
    # auto: bf16 (DeepSpeed mixed precision) on GPU, fp32 on CPU. bf16_autocast: fp32 weights and
    # torch.autocast(bf16) forwards; ~2x faster matmuls on CPUs with avx512_bf16.
    precision: str = "auto"
    # "layers": torch.compile each decoder layer before training (`UniModalModel.compile_layers`):
    # 1.25-1.4x faster tiny steps on 2 CPU cores after ~20-40 s of compiling. "none" (or false): eager.
    # Not with ZeRO-3.
    compile: str = "none"
    # A collective (all-reduce, ZeRO gather, barrier) that waits longer than this ends the run with a
    # message naming the rank and the step (exit code 4) instead of hanging: a rank that died or
    # diverged. Raise it if rank 0 alone works longer than this while the others wait (writing
    # synthetic shards, training the tokenizer, in-training evals).
    collective_timeout_s: int = 600
    # Merged last into the derived DeepSpeed config, for settings this file does not model
    # (e.g. {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    every: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    keep: int = 3  # newest complete checkpoints kept; older ones are deleted
    # "auto": continue from the run folder's latest checkpoint if there is one; "never": start fresh
    # (refuses to overwrite existing checkpoints); or a path to a checkpoints folder or one checkpoint.
    resume: str = "auto"
    export: bool = True  # write the inference folder (EMA weights) at the end


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.999  # diffusers warms it up as min(decay, (1 + s) / (10 + s))
    update_every: int = 1  # optimizer steps between updates (under ZeRO-3 each update gathers weights)


@dataclass
class LoggingConfig:
    every: int = 10  # optimizer steps between metric records
    progress_bar: bool = True
    tensorboard: bool = True
    plot: bool = True  # loss curves as a PNG at the end
    sample_every: int = 0  # optimizer steps between sample grids; 0 = only at the end; -1 = never
    num_samples: int = 8  # prompts to generate and images to caption per grid
    sample_prompts: list[str] = field(default_factory=list)  # empty = captions of the grid's images
    # Shards whose first images (and captions) fill the grids; None = the synthetic eval split when
    # `synthetic.enabled`, else data.train_shards.
    sample_shards: str | None = None
    sample_steps: int = 20
    guidance_scale: float = 3.0


@dataclass
class FaultConfig:
    max_consecutive_nonfinite: int = 5  # non-finite losses in a row that stop the run


@dataclass
class RunEvalConfig:
    """The eval section: the evaluation runner on the export at the end, and a small shapes-suite
    eval of the EMA weights during training."""

    enabled: bool = False  # run `unimodal.evaluation.run.run_suite` on the export at the end (writes <run>/eval/)
    # The runner's options (`unimodal.evaluation.run.EvalConfig`). Left unset, the run fills in: out_dir =
    # <run>/eval, data (shards suite) = the sample shards, world_config = the export's world.json; progress
    # bars also need logging.progress_bar.
    final: EvalConfig = field(default_factory=EvalConfig)
    # A second runner pass on the export after `final`, e.g. {suite: video} when a run trains images and
    # clips together; out_dir defaults to <run>/eval/<suite>. null = none.
    final_video: EvalConfig | None = None
    # In-training shapes-suite metrics (eval/* in metrics.jsonl) every N steps from the EMA
    # weights; 0 = never. Needs synthetic.enabled.
    every: int = 0
    num_samples: int = 16
    num_steps: int = 10


@dataclass
class RunConfig:
    """A whole training run. Sections map one-to-one onto YAML sections."""

    name: str = "run"
    output_dir: str | None = None  # default runs/<name>
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    eval: RunEvalConfig = field(default_factory=RunEvalConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def validate(self) -> None:
        """Cross-field checks; raise ValueError naming the field."""
        engine, sched = self.deepspeed, self.schedule
        if engine.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {engine.zero_stage}")
        if engine.precision not in PRECISIONS:
            raise ValueError(f"deepspeed.precision={engine.precision!r}; expected one of {PRECISIONS}")
        if engine.compile is False:  # YAML reads an unquoted `off`/`false`/`no` as false
            engine.compile = "none"
        if engine.compile not in COMPILE_MODES:
            raise ValueError(f"deepspeed.compile={engine.compile!r}; expected one of {COMPILE_MODES}")
        if engine.compile != "none" and engine.zero_stage == 3:
            raise ValueError("deepspeed.compile='layers' does not work with zero_stage 3 (ZeRO-3 gathers each "
                             "layer's parameters in hooks that torch.compile cannot trace); use 'none'")
        if self.optimizer.impl not in OPTIMIZER_IMPLS:
            raise ValueError(f"optimizer.impl={self.optimizer.impl!r}; expected one of {OPTIMIZER_IMPLS}")
        positive = {"deepspeed.gradient_accumulation_steps": engine.gradient_accumulation_steps,
                    "deepspeed.collective_timeout_s": engine.collective_timeout_s,
                    "schedule.total_steps": sched.total_steps, "checkpoint.every": self.checkpoint.every,
                    "checkpoint.keep": self.checkpoint.keep, "logging.every": self.logging.every,
                    "ema.update_every": self.ema.update_every,
                    "faults.max_consecutive_nonfinite": self.faults.max_consecutive_nonfinite}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= sched.warmup_steps <= sched.total_steps:
            raise ValueError(f"schedule.warmup_steps must lie in [0, total_steps={sched.total_steps}], "
                             f"got {sched.warmup_steps}: for a short run set both, e.g. schedule.total_steps=20 "
                             f"schedule.warmup_steps=5")
        if not 0.0 <= sched.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must lie in [0, 1], got {sched.min_lr_ratio}")
        if not 0.0 <= self.ema.decay < 1.0:
            raise ValueError(f"ema.decay must lie in [0, 1), got {self.ema.decay}")
        if self.eval.every < 0 or (self.eval.every > 0 and not self.synthetic.enabled):
            raise ValueError(f"eval.every={self.eval.every}: in-training eval needs synthetic.enabled and every >= 0")
        if self.eval.every > 0 and "image" not in self.synthetic.media:
            raise ValueError("eval.every: the in-training eval is the still shapes suite; it needs \"image\" in "
                             "synthetic.media (evaluate clips at the end with eval.final.suite=video)")
        if self.eval.every > 0 and self.eval.num_samples < 2:
            raise ValueError(f"eval.num_samples must be >= 2 (half seen, half held-out scenes), got {self.eval.num_samples}")
        if self.logging.sample_every < -1:
            raise ValueError(f"logging.sample_every must be -1 (never), 0 (at the end) or positive, got "
                             f"{self.logging.sample_every}")
        if len(self.optimizer.betas) != 2:
            raise ValueError(f"optimizer.betas needs two values, got {self.optimizer.betas}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-safe: tuples become lists)."""
        return _plain(dataclasses.asdict(self))


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dot-path keys whose values differ between two `RunConfig.to_dict()` results, as
    "key: old -> new" lines (e.g. to warn when a run resumes under another config)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        path, before, after = f"{prefix}{key}", old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += config_changes(before, after, f"{path}.")
        elif before != after:
            changes.append(f"{path}: {before!r} -> {after!r}")
    return changes


# ---------------------------------------------------------------------------------------- loading
def _moved_keys() -> dict[str, str]:
    """Keys of older configs that are gone, each with what to write instead."""
    runner = ", ".join(f"eval.final.{f.name}" for f in dataclasses.fields(EvalConfig))
    return {
        "eval.extra_args": "eval.extra_args (command-line strings for the eval runner) is gone: set the runner's "
                           f"options as typed keys instead: {runner} (e.g. eval.final.num_samples=200)",
        "eval.suite": "eval.suite moved to eval.final.suite",
        "data.length_buckets": "data.length_buckets is gone: packed rows replace the buckets; set "
                               "data.max_tokens_per_row (e.g. 256; 0 = one example per row) and data.row_multiple / "
                               "data.length_multiple",
        "data.bucket_row_multiple": "data.bucket_row_multiple is gone: set data.row_multiple (rows of a packed batch)",
    }


def _reject_moved(dotted: str) -> None:
    message = _moved_keys().get(dotted)
    if message is not None:
        raise ValueError(message)


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults <- YAML at `path` (and the files it `extends`) <- `key.path=value` overrides. A YAML
    without `name` is named after its file (configs/tiny.yaml -> "tiny")."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(Path(path))
        values.setdefault("name", Path(path).stem)
    for override in overrides:
        apply_override(values, override)
    return run_config_from_dict(values)


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict. `extends: other.yaml` (relative to this file) loads that file first
    and merges this one over it, section by section."""
    if not path.is_file():
        raise FileNotFoundError(f"no run config at {path}")
    if path.resolve() in _seen:
        raise ValueError(f"config files extend each other in a cycle: {[str(p) for p in _seen]}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config sections, got {type(values).__name__}")
    parent = values.pop("extends", None)
    if parent is None:
        return values
    return deep_merge(read_yaml(path.parent / parent, (*_seen, path.resolve())), values)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`; nested dicts merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_dicts else value
    return merged


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and check a RunConfig. `data.image_size` and `data.seed` default to `model.image_size`
    and the run `seed`, so one value sets both; an explicit data.image_size must agree."""
    values = dict(values)
    data = dict(values.get("data") or {})
    model_values = dict(values.get("model") or {})
    # data.image_resize is the key a user sets; the model records it, so inference resizes alike.
    # It wins over model.image_resize, which a run's saved config.yaml also carries.
    if "image_resize" in data:
        if data["image_resize"] not in ("square", "native"):
            raise ValueError(f"data.image_resize must be 'square' or 'native', got {data['image_resize']!r}")
        model_values["image_resize"] = data["image_resize"]
    values["model"] = model_values
    synthetic = values.get("synthetic") or {}
    # A run that reads clips records their length and rate in the model, as caption/answer sample
    # video files alike (ModelConfig.num_frames / video_fps).
    if data.get("video_shards") or (synthetic.get("enabled") and "video" in (synthetic.get("media") or [])):
        model_values["num_frames"] = data.get("num_frames", DataConfig.num_frames)
        model_values["video_fps"] = data.get("video_fps", DataConfig.video_fps)
    model = _build(ModelConfig, model_values, "model")
    data.setdefault("image_resize", model.image_resize)
    data.setdefault("image_size", model.image_size)
    data.setdefault("seed", values.get("seed", RunConfig.seed))
    values["data"] = data
    config = _build(RunConfig, values, "")
    if not config.data.latents and config.data.image_size != config.model.image_size:
        raise ValueError(f"data.image_size={config.data.image_size} differs from model.image_size="
                         f"{config.model.image_size}; set model.image_size only (data follows it)")
    check_canvases(config)
    return config


def check_canvases(config: RunConfig) -> None:
    """Refuse canvases that would train on wrong labels or fail after training: synthetic canvases
    must be the model's own input sizes (native aspect buckets, or its square), and every evaluation
    canvas must be whole patches, before any step runs. Raises ValueError naming the key."""
    model = config.model
    multiple = model.input_patch_size()
    for width, height in config.synthetic.canvases or []:
        if model.image_resize == "square" and (width, height) != (model.image_size, model.image_size):
            raise ValueError(f"synthetic.canvases has {width}x{height}, but images are cropped to "
                             f"{model.image_size}x{model.image_size} (data.image_resize: square), which would cut "
                             f"shapes out of their captions; set data.image_resize=native")
        if model.image_resize == "native" and (width, height) not in aspect_buckets(model.image_size, multiple):
            raise ValueError(f"synthetic.canvases has {width}x{height}, which is not one of the native buckets of "
                             f"about {model.image_size}x{model.image_size} px in {multiple}-px patches, so its images "
                             f"would be resized and cropped; pick canvases from unimodal.images.aspect_buckets("
                             f"{model.image_size}, {multiple})")
    for canvas in config.eval.final.canvases or []:
        width, height = canvas
        if width % multiple or height % multiple:
            raise ValueError(f"eval.final.canvases has {width}x{height}: both sides must be multiples of {multiple} "
                             f"(the model's pixels per patch)")


def save_run_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)


def apply_override(values: dict[str, Any], override: str) -> None:
    """Set `values[a][b][c] = parsed` for the override "a.b.c=parsed" (value parsed as YAML)."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {override!r} has an empty key segment")
    _check_path(parts, override)
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _check_path(parts: list[str], override: str) -> None:
    """Reject an override whose path does not exist in the schema (free-form dicts excepted)."""
    cls: Any = RunConfig
    for depth, part in enumerate(parts):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return  # inside a free-form dict (e.g. deepspeed.overrides): anything goes
        hints = typing.get_type_hints(cls)
        known = set(hints) | ({"preset"} if cls is ModelConfig else set())
        if part not in known:
            _reject_moved(".".join(parts[:depth + 1]))
            where = ".".join(parts[:depth]) or "the run config"
            raise ValueError(f"override {override!r}: {where} has no key {part!r}; known: {sorted(known)}")
        cls = _dataclass_of(hints.get(part))


def _dataclass_of(hint: Any) -> Any:
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _build(cls, values: Any, path: str):
    """Instantiate dataclass `cls` from a nested dict, coercing scalar types and naming bad paths."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path or 'the run config'} must be a mapping, got {type(values).__name__}")
    if cls is ModelConfig:
        values = dict(values)
        base = preset_values(values.pop("preset")) if "preset" in values else {}
        values = {**base, **values}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    for key in unknown:
        _reject_moved(f"{path}.{key}".lstrip("."))
    if unknown:
        where = path or "the run config"
        raise ValueError(f"unknown key(s) {[f'{path}.{k}'.lstrip('.') for k in unknown]} in {where}; "
                         f"known: {sorted(hints)}")
    built = {}
    for name, value in values.items():
        sub = _dataclass_of(hints[name])
        dotted = f"{path}.{name}".lstrip(".")
        if sub is not None and value is None and type(None) in typing.get_args(hints[name]):
            built[name] = None  # an optional section left out (e.g. eval.final_video: null)
        else:
            built[name] = _build(sub, value, dotted) if sub is not None else _coerce(value, hints[name], dotted)
    try:
        return config_from_dict(cls, built)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path or 'run config'}: {error}") from None


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """YAML quirks -> declared types: '3e-4' -> 3e-4 for floats, ints -> floats, lists -> tuples."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0], path) if len(options) == 1 else value
    try:
        if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, str):
            return int(value)
        if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. an unquoted number in a list of prompts
        if origin is tuple and isinstance(value, list):
            return tuple(_coerce(v, args[0] if args else Any, path) for v in value)
        if origin is list and isinstance(value, list) and args:
            return [_coerce(v, args[0], path) for v in value]
    except ValueError:
        raise ValueError(f"{path}={value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
