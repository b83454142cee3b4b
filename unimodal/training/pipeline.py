"""What a run reads: shards (written first when the synthetic world is asked for), the tokenizer
(given, or trained on the shards' text and stored in the run folder), the data loader and the
fixed images/prompts of the sample grids.

Steps that write files run on rank 0 while the other ranks wait (`barrier`), so every rank then
reads the same shards and the same tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from unimodal.data.classes import CLASS_SUFFIX, ClassCaptions, class_caption
from unimodal.data.motion import MotionConfig
from unimodal.data.motion_shards import write_motion_shards
from unimodal.data.reader import build_train_loader, iter_samples
from unimodal.data.samples import sample_caption
from unimodal.data.shards import expand_shards, iter_shards
from unimodal.data.skips import SkipCounter
from unimodal.data.synthetic import WorldConfig
from unimodal.data.tasks import qa_pairs
from unimodal.data.write_shards import write_synthetic_shards
from unimodal.layout import SequenceLayout
from unimodal.tokenizer import Tokenizer

from .config import RunConfig
from .samples import SampleSet

log = logging.getLogger(__name__)

SPLITS = ("train", "eval", "heldout")
TOKENIZER_DIR = "tokenizer"
WORLD_FILE = "world.json"  # the name unimodal.evaluation.run looks for in an export folder
MOTION_FILE = "motion.json"  # the moving-shapes world, likewise (the video suite)


# -------------------------------------------------------------------------------------- shards
def synthetic_dir(config: RunConfig) -> Path:
    """Where the synthetic splits live: `synthetic.output_dir`, or <run folder>/shards."""
    return Path(config.synthetic.output_dir) if config.synthetic.output_dir else config.run_dir / "shards"


def video_dir(config: RunConfig) -> Path:
    """Where the moving-shapes splits live: <synthetic folder>/video."""
    return synthetic_dir(config) / "video"


def resolve_shards(config: RunConfig) -> None:
    """Point empty shard settings at the synthetic splits (train for training, eval for grids): the
    still world's for data.train_shards, the moving-shapes world's for data.video_shards."""
    if not config.synthetic.enabled:
        if not config.data.train_shards and not config.data.video_shards:
            raise ValueError("data.train_shards is empty and synthetic.enabled is false: point data.train_shards "
                             "(or data.video_shards) at shards (a brace pattern, a folder of .tar files or a list), "
                             "or enable synthetic")
        return
    media = config.synthetic.media
    if "image" in media and not config.data.train_shards:
        config.data.train_shards = str(synthetic_dir(config) / "train")
    if "video" in media and not config.data.video_shards:
        config.data.video_shards = str(video_dir(config) / "train")
    if config.logging.sample_shards is None:
        config.logging.sample_shards = str((synthetic_dir(config) if "image" in media else video_dir(config)) / "eval")


def world_config(config: RunConfig) -> WorldConfig:
    """The synthetic world of the run: `synthetic.world` at the model's image size."""
    return WorldConfig.from_dict({**config.synthetic.world, "image_size": config.model.image_size})


def world_json(config: RunConfig) -> dict:
    """The world config as it reads back from world.json (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(world_config(config))))


def motion_config(config: RunConfig) -> MotionConfig:
    """The moving-shapes world of the run: `synthetic.video.world` at the model's image size and the
    data's clip length and frame rate."""
    return MotionConfig.from_dict({**config.synthetic.video.world, "image_size": config.model.image_size,
                                   "num_frames": config.data.num_frames, "fps": config.data.video_fps})


def motion_json(config: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(motion_config(config))))


def _write_json(path: Path, values: dict) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(values, indent=2))
    os.replace(tmp, path)
    return path


def write_world_file(config: RunConfig, folder: Path) -> list[Path]:
    """world.json (WorldConfig fields) and/or motion.json (MotionConfig fields) of the run's
    synthetic media into `folder`, each written atomically; unimodal.evaluation reads them there."""
    written = []
    if "image" in config.synthetic.media:
        written.append(_write_json(folder / WORLD_FILE, world_json(config)))
    if "video" in config.synthetic.media:
        written.append(_write_json(folder / MOTION_FILE, motion_json(config)))
    return written


SPLIT_FILE = "split.json"  # beside a written split's shards: its sample count, seed and canvases if set


def check_split(folder: Path, wanted: dict, split: str, section: str = "synthetic.") -> None:
    """Raise ValueError when an existing split was written with another sample count, seed or set of
    canvases (e.g. by a short trial run in the same run folder), instead of silently training on it."""
    record = folder / SPLIT_FILE
    if not record.is_file():  # written before split.json existed: nothing to compare with
        return
    found = json.loads(record.read_text())
    if found != wanted:
        key = {"train": "num_train", "eval": "num_eval", "heldout": "num_heldout"}[split]
        found_on = wanted_on = ""
        if "canvases" in found or "canvases" in wanted:  # None: the model's square image_size
            found_on, wanted_on = f" on canvases {found.get('canvases')}", f", synthetic.canvases={wanted.get('canvases')}"
        raise ValueError(f"{folder} holds {found['num_samples']} samples of seed {found['seed']}{found_on}, but the "
                         f"config asks for {section}{key}={wanted['num_samples']}, synthetic.seed={wanted['seed']}"
                         f"{wanted_on}: use another name=... (or synthetic.output_dir) or delete {folder.parent}")


def ensure_synthetic_shards(config: RunConfig, is_main: bool, barrier: Callable[[], None]) -> None:
    """Write each missing synthetic split (rank 0; the others wait): the still world's with
    `write_synthetic_shards` and/or the moving-shapes world's with `write_motion_shards`.

    A split is written into a hidden staging folder and renamed when complete, so an interrupted
    write is redone rather than half-used. Raises ValueError when the folder holds another world's
    shards, or a split of another count or seed (and whatever the writers raise).
    """
    if not config.synthetic.enabled:
        return
    syn = config.synthetic
    if is_main and "image" in syn.media:
        extra = {} if syn.canvases is None else {"canvases": [list(canvas) for canvas in syn.canvases]}
        world = world_config(config)
        _ensure_splits(synthetic_dir(config), WORLD_FILE, world_json(config), "synthetic.",
                       {"train": syn.num_train, "eval": syn.num_eval, "heldout": syn.num_heldout}, syn.seed, extra,
                       lambda out, count, split: write_synthetic_shards(
                           out, count, seed=syn.seed, split=split, world_config=world, canvases=syn.canvases,
                           max_count=syn.samples_per_shard, progress=False))
    if is_main and "video" in syn.media:
        motion = motion_config(config)
        _ensure_splits(video_dir(config), MOTION_FILE, motion_json(config), "synthetic.video.",
                       {"train": syn.video.num_train, "eval": syn.video.num_eval, "heldout": syn.video.num_heldout},
                       syn.seed, {}, lambda out, count, split: write_motion_shards(
                           out, count, seed=syn.seed, split=split, motion_config=motion,
                           max_count=syn.samples_per_shard, progress=False))
    barrier()


def _ensure_splits(root: Path, world_file: str, world: dict, section: str, counts: dict[str, int], seed: int,
                   extra: dict, write: Callable[[Path, int, str], object]) -> None:
    """The splits of one world under `root`, its settings in `root/world_file` (`section` names the
    config keys in messages; `extra` is recorded in split.json, e.g. the canvases)."""
    root.mkdir(parents=True, exist_ok=True)
    settings = root / world_file
    if settings.is_file() and json.loads(settings.read_text()) != world:
        raise ValueError(f"{root} holds shards of another synthetic world ({settings}); point "
                         "synthetic.output_dir elsewhere or delete that folder")
    _write_json(settings, world)
    for split in SPLITS:
        final = root / split
        wanted = {"num_samples": counts[split], "seed": seed, **extra}
        if final.is_dir():
            check_split(final, wanted, split, section)
            continue
        if counts[split] <= 0:
            continue
        staging = root / f".{split}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("writing %d %s samples to %s", counts[split], split, final)
        log.info("%s", write(staging, counts[split], split))
        (staging / SPLIT_FILE).write_text(json.dumps(wanted))
        os.replace(staging, final)


# ------------------------------------------------------------------------------------ tokenizer
def shard_texts(spec: str | list[str], max_samples: int, classes: ClassCaptions | None = None) -> Iterator[str]:
    """Captions (as the reader picks them: `sample_caption`, else the class caption of a KEY.cls
    with `classes`), questions (as the layout phrases them) and answers of the first `max_samples`
    samples of `spec`, read from the raw shard files without decoding any image."""
    counter = SkipCounter(where="[tokenizer corpus]")
    unused = SkipCounter()
    unused.muted = True  # bad class labels are counted by the reader, not twice
    for raw in islice(iter_shards(expand_shards(spec), counter), max_samples):
        caption = sample_caption(raw)
        if not caption and CLASS_SUFFIX in raw and classes is not None:
            caption = class_caption(raw, classes, unused, raw["__key__"]) or ""
        if caption:
            yield caption
        if "json" in raw:
            try:
                metadata = json.loads(raw["json"])
            except ValueError:
                continue
            if isinstance(metadata, dict):
                for question, answer in qa_pairs(metadata):
                    yield SequenceLayout.question_text(question)
                    yield answer


def load_tokenizer(config: RunConfig, is_main: bool, barrier: Callable[[], None]) -> Tokenizer:
    """A given `.model` is used as is; otherwise the run folder's tokenizer, trained there (by
    rank 0) the first time on the text of the first `tokenizer.max_samples` samples of each training
    shard set (data.train_shards, data.video_shards)."""
    if config.tokenizer.path:
        return Tokenizer.from_file(config.tokenizer.path)
    folder = config.run_dir / TOKENIZER_DIR
    if is_main and not (folder / "tokenizer.model").is_file():
        texts = [text for spec in (config.data.train_shards, config.data.video_shards) if spec  # images' and clips' words
                 for text in shard_texts(spec, config.tokenizer.max_samples, config.data.class_captions())]
        if not texts:
            raise ValueError(f"no caption text found in data.train_shards={config.data.train_shards!r} (or "
                             f"data.video_shards) to train a tokenizer; pass tokenizer.path to a sentencepiece .model "
                             "instead")
        log.info("training a %d-token tokenizer on %d texts from the train shards", config.tokenizer.vocab_size,
                 len(texts))
        Tokenizer.train(texts, vocab_size=config.tokenizer.vocab_size).save_pretrained(folder)
    barrier()
    return Tokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------- data loader
def build_loader(config: RunConfig, tokenizer: Tokenizer, rank: int, world_size: int):
    layout = SequenceLayout.for_model(tokenizer, config.model, config.data.latents)
    return build_train_loader(config.data, tokenizer, layout, rank, world_size)


def sample_set(config: RunConfig) -> SampleSet | None:
    """The fixed prompts and images of the grids: the first `logging.num_samples` samples of
    `logging.sample_shards` (their captions are the prompts unless `logging.sample_prompts` is set)."""
    spec = config.logging.sample_shards or config.data.train_shards
    count = config.logging.num_samples
    if count <= 0:
        return None
    try:
        samples = list(islice(iter_samples(spec, config.model.image_geometry(), classes=config.data.class_captions(),
                                           video=config.data.video_sampling()), count))
    except ValueError as error:  # no shards there
        log.warning("no sample grids: %s", error)
        return None
    images = [s.image for s in samples]
    references = [s.caption for s in samples]
    prompts = list(config.logging.sample_prompts) or references
    # Prompts that are the samples' own captions are drawn at their images' sizes, when those vary.
    sizes = [tuple(image.shape[-2:]) for image in images]
    square = (config.model.image_size, config.model.image_size)
    varied = not config.logging.sample_prompts and any(size != square for size in sizes)
    clips = [image.shape[1] for image in images if image.dim() == 4]  # frames of the clips among the samples
    return SampleSet(prompts=prompts[:count], images=images, references=references,
                     sizes=sizes[:count] if varied else None, num_frames=clips[0] if clips else None)
