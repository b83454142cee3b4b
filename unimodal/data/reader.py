"""The training reader: shards -> shuffled, split, decoded samples -> task examples -> padded batches.

    loader = build_train_loader(data_config, tokenizer, layout, rank, world_size)
    for batch in loader.endless():        # or: for batch in loader  (one epoch)
        ...                               # batch: unimodal.layout.Batch
        log(loader.skipped)               # {"corrupt_image": 2, ...}, summed over all workers
        save({"data": loader.state_dict(), ...})
    loader.load_state_dict(state)         # the next batches are exactly those an uninterrupted run sees

How it is built (one rank):
- The rank's work is split into S = max(1, num_workers) *streams*; DataLoader worker p plays stream
  (first_stream + p) % S and builds whole batches itself (`batch_size=None` in the DataLoader), so
  batch k of an epoch comes from stream k % S (the DataLoader's round robin), and what a stream
  produces depends only on (seed, epoch, rank, stream): shard order, shuffle buffer and the task
  draw of every sample are seeded by those numbers (the task draw also by the sample's position).
- resampled=True: each stream draws shards with replacement, endlessly; an epoch is `epoch_batches`
  batches of the rank (stream s makes batches s, s+S, ...). resampled=False: shards are shuffled per
  epoch identically on all ranks, rank r takes every world_size-th shard, stream s every S-th of those.
- Resume: the main process records, per stream, how many raw samples it has consumed (its position
  after the shuffle buffer) and its cumulative skip counts. A resumed worker replays its stream up
  to that position without decoding anything (tar reads and buffer shuffles only, counting muted),
  and worker 0 plays the stream that was due next, so the batch sequence continues exactly.
- Skips are counted in each worker and sent with every batch; `ShardLoader.skipped` sums them.
- Captions: KEY.txt, else KEY.json "caption"/"captions", else, for class-labelled sets, KEY.cls named
  by `DataConfig.class_names` (read once, when the loader is built; `unimodal.data.classes`).
- Media: images, and clips sampled to `DataConfig.num_frames` (`unimodal.video`). With
  `DataConfig.video_shards` as well as `train_shards`, each stream mixes the two sets sample by sample
  in the proportions of `media_weights`, before the shuffle buffer.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unimodal.images import ImageGeometry
from unimodal.layout import Batch, SequenceLayout
from unimodal.tokenizer import Tokenizer
from unimodal.video import VideoSampling

from .classes import ClassCaptions
from .config import DataConfig
from .samples import DecodedSample, decode_sample
from .shards import RawSample, expand_shards, iter_shard, iter_shards
from .skips import NO_TASK, SkipCounter
from .tasks import TaskMixture

logger = logging.getLogger("data")
STATE_VERSION = 1
# A stream that sees this many raw samples in a row without a usable one (or this many empty
# shards in a row when resampling) raises instead of spinning forever on a broken shard set.
MAX_CONSECUTIVE_FAILURES = 10_000


@dataclass
class EpochPlan:
    """Where each stream starts in this epoch (set by the loader before the workers start)."""

    epoch: int
    num_streams: int
    first_stream: int = 0  # the stream DataLoader worker 0 plays
    positions: list[int] = field(default_factory=list)  # raw samples already consumed, per stream
    batches: list[int] = field(default_factory=list)  # batches already produced, per stream
    skipped: list[dict[str, int]] = field(default_factory=list)  # cumulative skip counts, per stream
    done: list[bool] = field(default_factory=list)  # streams that already ended this epoch


def shuffled(samples: Iterator[RawSample], buffer_size: int, rng: random.Random) -> Iterator[RawSample]:
    """Reservoir-style shuffle: fill a buffer, then emit a random element for each new one."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Per-worker iterable of `(Batch, info)`; use it through `ShardLoader`."""

    def __init__(self, config: DataConfig, shards: Sequence[str], layout: SequenceLayout, rank: int,
                 world_size: int, video_shards: Sequence[str] = ()):
        self.config = config
        self.shards = list(shards)
        self.video_shards = list(video_shards)  # mixed in by DataConfig.media_weights (`_raw`)
        self.video = config.video_sampling()
        self.layout = layout
        self.rank = rank
        self.world_size = world_size
        self.classes = config.class_captions()  # names read once here; the workers get them with the dataset
        # the layout's pixels per patch side: native aspect buckets must be whole patches
        self.geometry = ImageGeometry(config.image_size, config.image_resize, layout.patch_size)
        self.tasks = TaskMixture(layout, config.task_weights, config.caption_dropout, config.max_text_tokens,
                                 config.vqa_turns)
        self.plan = EpochPlan(epoch=0, num_streams=1)

    def _key(self, *parts: Any) -> str:
        return ":".join(str(p) for p in (self.config.seed, self.plan.epoch, self.rank, *parts))

    def stream_shards(self, stream: int, kind: str = "image") -> Iterator[str]:
        """The shard URLs of one set (`kind` "image": train_shards, "video": video_shards) that stream
        `stream` reads this epoch."""
        shards = self.shards if kind == "image" else self.video_shards
        tag = "" if kind == "image" else f"{kind}:"  # image-only runs keep the draws they always had
        if self.config.resampled:
            rng = random.Random(f"{tag}shards:" + self._key(stream))
            return (shards[rng.randrange(len(shards))] for _ in itertools.count())
        order = list(shards)
        random.Random(f"{tag}order:{self.config.seed}:{self.plan.epoch}").shuffle(order)  # same on every rank
        return iter(order[self.rank:: self.world_size][stream:: self.plan.num_streams])

    def _raw(self, stream: int, counter: SkipCounter) -> Iterator[RawSample]:
        """The stream's raw samples: of one shard set, or of both mixed sample by sample in the
        proportions of `media_weights` (a seeded draw per sample, so a resume replays it exactly;
        when one set runs out, the other continues)."""
        kinds = [kind for kind, shards in (("image", self.shards), ("video", self.video_shards)) if shards]
        sources = {kind: self._raw_of(stream, kind, counter) for kind in kinds}
        weights = [self.config.media_weights.get(kind, 0.0) for kind in kinds]
        if len(kinds) == 1 or min(weights) <= 0:
            return sources[kinds[0] if len(kinds) == 1 else kinds[weights.index(max(weights))]]

        def mixed() -> Iterator[RawSample]:
            rng = random.Random("media:" + self._key(stream))
            live = dict(sources)
            while live:
                names = list(live)
                kind = rng.choices(names, weights=[self.config.media_weights[k] for k in names])[0]
                sample = next(live[kind], None)
                if sample is None:
                    del live[kind]
                    continue
                yield sample

        return mixed()

    def _raw_of(self, stream: int, kind: str, counter: SkipCounter) -> Iterator[RawSample]:
        if not self.config.resampled:
            return iter_shards(self.stream_shards(stream, kind), counter)
        shards = self.shards if kind == "image" else self.video_shards

        def resampled() -> Iterator[RawSample]:
            empty = 0
            for url in self.stream_shards(stream, kind):
                got = False
                for sample in iter_shard(url, counter):
                    got = True
                    yield sample
                empty = 0 if got else empty + 1
                if empty >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{empty} shards in a row gave no samples (last: {url}); are the "
                                       f"shards readable? {shards[:3]}...")

        return resampled()

    def __iter__(self) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        """Yields (batch, info) per batch, then one (None, info) with `final=True` when the stream
        ends, so skips made after the last batch (or in a stream with no batch) still reach the loader."""
        worker = get_worker_info()
        physical, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        plan = self.plan
        assert plan.num_streams == num_workers, "ShardLoader sets the plan for its own worker count"
        if worker is not None:
            torch.set_num_threads(1)  # workers share the cores with the training process
        stream = (plan.first_stream + physical) % plan.num_streams
        if plan.done[stream]:
            return
        counter = SkipCounter(plan.skipped[stream], where=f"[rank {self.rank} stream {stream}]")
        state = {"stream": stream, "position": plan.positions[stream], "batches": plan.batches[stream]}
        for examples, keys in self._batches(state, counter):
            batch = self.config.collate(self.layout, examples)
            yield batch, {**state, "num_samples": len(examples), "skipped": counter.as_dict(), "keys": keys,
                          "final": False}
        yield None, {**state, "num_samples": 0, "skipped": counter.as_dict(), "keys": [], "final": True}

    def _batches(self, state: dict[str, int], counter: SkipCounter) -> Iterator[tuple[list, list[str]]]:
        """Example lists of one stream from its saved position; advances state["position"/"batches"]."""
        cfg, stream = self.config, state["stream"]
        quota = len(range(stream, cfg.epoch_batches, self.plan.num_streams)) if cfg.resampled else None
        if quota is not None and state["batches"] >= quota:
            return
        raw = shuffled(self._raw(stream, counter), cfg.shuffle_buffer, random.Random("shuffle:" + self._key(stream)))
        counter.muted = True  # fast-forward: these samples were consumed and counted before the resume
        if sum(1 for _ in itertools.islice(raw, state["position"])) < state["position"]:
            return
        counter.muted = False
        examples, keys, failures = [], [], 0
        for sample in raw:
            state["position"] += 1
            example = self._example(sample, stream, state["position"] - 1, counter)
            failures = 0 if example is not None else failures + 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(f"{failures} samples in a row were unusable; skip counts: {counter.as_dict()}")
            if example is None:
                continue
            examples.append(example)
            keys.append(f"{sample['__url__']}#{sample['__key__']}")
            if len(examples) == cfg.batch_size:
                state["batches"] += 1
                yield examples, keys
                examples, keys = [], []
                if quota is not None and state["batches"] >= quota:
                    return
        if examples and not cfg.drop_last:
            state["batches"] += 1
            yield examples, keys

    def _example(self, raw: RawSample, stream: int, position: int, counter: SkipCounter):
        decoded = decode_sample(raw, self.geometry, counter, latents=self.config.latents,
                                rng=random.Random("caption:" + self._key(stream, position)), classes=self.classes,
                                video=self.video)
        if decoded is None:
            return None
        made = self.tasks.example(random.Random("task:" + self._key(stream, position)), decoded.image,
                                  decoded.caption, decoded.metadata)
        if made is None:
            counter.skip(NO_TASK, f"{raw['__url__']}:{raw['__key__']} (no QA pairs and only vqa is weighted)")
            return None
        return made[1]


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: SIGINT/SIGTERM sent to the whole process group (Ctrl-C, SLURM,
    `kill -- -PGID`) are the training process's to handle — it saves a checkpoint and then shuts the
    workers down itself. Without this a worker dies mid-batch (torch's handler) or prints a
    KeyboardInterrupt traceback. Workers still exit when the parent dies (torch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _keep(item):
    """DataLoader's per-item convert function: pass (Batch, info) through untouched."""
    return item


class ShardLoader:
    """Iterates batches of one rank and tracks the data position for checkpoints.

    `iter(loader)` runs one epoch from the current position; `endless()` chains epochs. Counts:
    `skipped` (dict by reason, cumulative over the run) and `num_samples` (samples in yielded batches);
    `last_keys` names the samples ("url#key") of the last batch, row by row.
    """

    def __init__(self, config: DataConfig, shards: Sequence[str], layout: SequenceLayout, rank: int = 0,
                 world_size: int = 1, video_shards: Sequence[str] = ()):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if not shards and not video_shards:
            raise ValueError("ShardLoader needs at least one shard")
        self.config = config
        self.num_streams = max(1, config.num_workers)
        for found in (shards, video_shards):
            if found and not config.resampled and len(found) < world_size * self.num_streams:
                logger.warning("data: %d shards for %d ranks x %d workers: some workers get no shard (write more, "
                               "smaller shards)", len(found), world_size, self.num_streams)
        self.dataset = ShardStream(config, shards, layout, rank, world_size, video_shards)
        self.epoch = 0
        self.num_samples = 0
        self.last_keys: list[str] = []  # "url#key" of each sample in the last yielded batch
        self._skipped_before: Counter[str] = Counter()  # epochs already finished
        self._new_epoch_position()

    def _new_epoch_position(self) -> None:
        streams = range(self.num_streams)
        self._next_stream = 0
        self._positions = [0 for _ in streams]
        self._batches = [0 for _ in streams]
        self._stream_skipped: list[dict[str, int]] = [{} for _ in streams]
        self._done = [False for _ in streams]

    @property
    def skipped(self) -> dict[str, int]:
        total = Counter(self._skipped_before)
        for counts in self._stream_skipped:
            total.update(counts)
        return dict(total)

    @property
    def batches_in_epoch(self) -> int:
        return sum(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        cfg = self.config
        if cfg.resampled and self.batches_in_epoch >= cfg.epoch_batches:
            self._finish_epoch()  # a checkpoint taken right after an epoch's last batch
        started_fresh = self.batches_in_epoch == 0
        self.dataset.plan = EpochPlan(self.epoch, self.num_streams, self._next_stream, list(self._positions),
                                      list(self._batches), [dict(s) for s in self._stream_skipped], list(self._done))
        if cfg.num_workers == 0:
            batches = iter(self.dataset)
        else:
            batches = DataLoader(self.dataset, batch_size=None, num_workers=cfg.num_workers, collate_fn=_keep,
                                 prefetch_factor=cfg.prefetch_factor, persistent_workers=False,
                                 worker_init_fn=_ignore_stop_signals)
        count = 0
        for batch, info in batches:
            stream = info["stream"]
            self._positions[stream] = info["position"]
            self._batches[stream] = info["batches"]
            self._stream_skipped[stream] = info["skipped"]
            self._next_stream = (stream + 1) % self.num_streams  # the DataLoader's round robin
            self._done[stream] = info["final"]
            if batch is None:  # a stream's closing counts
                continue
            self.num_samples += info["num_samples"]
            self.last_keys = info["keys"]
            count += 1
            yield batch
        if count == 0 and started_fresh:
            raise RuntimeError(f"an epoch of rank {self.dataset.rank} gave no batch; skip counts: {self.skipped}")
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        for counts in self._stream_skipped:
            self._skipped_before.update(counts)
        self.epoch += 1
        self._new_epoch_position()

    def endless(self) -> Iterator[Batch]:
        """Batches forever, epoch after epoch (for step-based training)."""
        while True:
            yield from self

    # ---- checkpoints ----
    def _identity(self) -> dict[str, Any]:
        cfg, ds = self.config, self.dataset
        return {"seed": cfg.seed, "rank": ds.rank, "world_size": ds.world_size, "num_streams": self.num_streams,
                "batch_size": cfg.batch_size, "resampled": cfg.resampled, "epoch_batches": cfg.epoch_batches,
                "shuffle_buffer": cfg.shuffle_buffer, "num_shards": len(ds.shards),
                **({"num_video_shards": len(ds.video_shards), "media_weights": dict(cfg.media_weights)}
                   if ds.video_shards else {})}

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch this loader yielded (plain ints, lists and dicts)."""
        return {"version": STATE_VERSION, **self._identity(), "epoch": self.epoch, "next_stream": self._next_stream,
                "positions": list(self._positions), "batches": list(self._batches),
                "stream_skipped": [dict(s) for s in self._stream_skipped], "done": list(self._done),
                "skipped_before": dict(self._skipped_before), "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`. If the stream layout changed (seed, rank, world size, workers, batch
        size, shards...), the exact position cannot be recovered: a warning is logged and reading
        starts at the beginning of the next epoch, keeping the counts."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')!r}; this reader reads {STATE_VERSION}")
        self.num_samples = int(state["num_samples"])
        changed = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if changed:
            logger.warning("data: the reader changed since the checkpoint (%s); resuming at the start of epoch %d "
                           "instead of the exact position", changed, state["epoch"] + 1)
            self._skipped_before = Counter(state["skipped_before"])
            for counts in state["stream_skipped"]:
                self._skipped_before.update(counts)
            self.epoch = int(state["epoch"]) + 1
            self._new_epoch_position()
            return
        self._skipped_before = Counter(state["skipped_before"])
        self.epoch = int(state["epoch"])
        self._next_stream = int(state["next_stream"])
        self._positions = [int(p) for p in state["positions"]]
        self._batches = [int(b) for b in state["batches"]]
        self._stream_skipped = [dict(s) for s in state["stream_skipped"]]
        self._done = [bool(d) for d in state["done"]]


def build_train_loader(config: DataConfig, tokenizer: Tokenizer, layout: SequenceLayout, rank: int = 0,
                       world_size: int = 1) -> ShardLoader:
    """The training reader of one rank (see the module docstring)."""
    if layout.tokenizer is not tokenizer:
        raise ValueError("build_train_loader: `layout` was built with another tokenizer than `tokenizer`")
    if not config.train_shards and not config.video_shards:
        raise ValueError("DataConfig.train_shards is empty; point it at shards, e.g. "
                         "'shards/train-{000000..000009}.tar' (write some with `python -m unimodal.data.write_shards`)")
    image_shards = expand_shards(config.train_shards) if config.train_shards else []
    video_shards = expand_shards(config.video_shards) if config.video_shards else []
    return ShardLoader(config, image_shards, layout, rank, world_size, video_shards)


def iter_samples(shards: str | Sequence[str], image_size: int | ImageGeometry, latents: bool = False,
                 counter: SkipCounter | None = None, classes: ClassCaptions | None = None, *,
                 video: VideoSampling | None = None) -> Iterator[DecodedSample]:
    """Every usable sample of `shards`, in order, decoded in this process (eval, latent caching).
    `classes` captions class-labelled samples (KEY.cls without a caption), as in training
    (`DataConfig.class_captions()`); without it they are skipped as missing_class_names. `image_size`
    is an int (square crops) or the model's `ImageGeometry` (`ModelConfig.image_geometry()`). Clips
    are sampled by `video` (None: `VideoSampling()`, 8 frames at 10 fps) into (3, F, H, W) tensors."""
    counter = counter or SkipCounter()
    for raw in iter_shards(expand_shards(shards), counter):
        decoded = decode_sample(raw, image_size, counter, latents=latents, classes=classes, video=video)
        if decoded is not None:
            yield decoded
