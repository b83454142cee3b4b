"""`DataConfig`: what the training reader reads and how it turns samples into examples.

Batch sizes and epoch lengths are per rank (a micro-batch, the unit DeepSpeed's
`train_micro_batch_size_per_gpu` means). Unknown keys are an error, as for every config here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from unimodal.config import config_from_dict
from unimodal.video import VideoSampling

from .classes import CLASS_CAPTION_TEMPLATE, ClassCaptions, check_template, load_class_captions
from .tasks import TASKS

MEDIA_KINDS = ("image", "video")  # the keys of DataConfig.media_weights: train_shards, video_shards


@dataclass
class DataConfig:
    # Shards: a brace pattern ("shards/train-{000000..000009}.tar"), several joined by "::", a
    # directory of .tar files, or a list of these. Any shard set in the webdataset image-text
    # layout (KEY.png|jpg|webp, or a clip KEY.gif|mp4|webm|frames.npy, + KEY.txt [+ KEY.json]) works as it is.
    train_shards: str | list[str] = ""
    image_size: int = 32  # images are resized (shorter side) and center-cropped to this (the budget when native)
    # "square": every image is cropped to image_size²; "native": it keeps its aspect ratio, in the
    # bucket nearest it of about image_size² pixels (unimodal.images.ImageGeometry, aspect_buckets).
    # The model records it (model.image_resize), so caption/answer/eval size their inputs alike.
    image_resize: str = "square"
    # Class-labelled sets (ImageNet-style KEY.jpg + KEY.cls, an integer class index, no caption): a
    # file of class names, one per line (line 1 names class 0), or a .json list of names. A sample
    # without a caption of its own (KEY.txt, KEY.json) is captioned `class_caption_template` with
    # its class name; without this file such samples are skipped (missing_class_names).
    class_names: str | None = None
    class_caption_template: str = CLASS_CAPTION_TEMPLATE  # "{name}" is replaced by the class name
    # Clips (KEY.gif|mp4|webm|... or pre-decoded KEY.frames.npy) are sampled to num_frames frames at
    # video_fps frames per second (sample-and-hold, a window centred in the clip: unimodal.video), each
    # frame sized like an image; shorter clips are skipped (short_clip).
    num_frames: int = 8
    video_fps: float = 10.0
    # A second shard set, of clips, mixed with train_shards sample by sample in the proportions of
    # media_weights (joint image + video training, as Sora trains on both). Either set may be empty;
    # a shard set may also hold both kinds (each sample is whatever it holds).
    video_shards: str | list[str] = ""
    media_weights: dict[str, float] = field(default_factory=lambda: {"image": 1.0, "video": 1.0})
    latents: bool = False  # read KEY.latent.npy (unimodal.data.cache_latents) instead of images, as stored
    batch_size: int = 32  # per rank
    num_workers: int = 2  # DataLoader worker processes per rank; 0 reads in the main process
    prefetch_factor: int = 4  # batches each worker prepares ahead
    shuffle_buffer: int = 1000  # samples held for shuffling (raw bytes, decoded only when they leave)
    seed: int = 0
    # True: shards are drawn with replacement, endlessly (training); an "epoch" is then just
    # `epoch_batches` batches per rank, which also bounds the fast-forward work of a resume.
    # False: each epoch is one pass over the shards, split between ranks and workers by shard, so
    # every sample is seen by exactly one rank per epoch (needs >= world_size * num_workers shards).
    resampled: bool = True
    epoch_batches: int = 1000  # batches per rank per epoch (resampled only)
    drop_last: bool = False  # drop a last partial batch of each worker (resampled=False only)
    # Relative weights of the three tasks; a sample without QA pairs that draws "vqa" falls back
    # to the other tasks in proportion to their weights.
    task_weights: dict[str, float] = field(default_factory=lambda: {"caption": 1.0, "vqa": 1.0, "generation": 1.0})
    # Probability that a generation example gets an empty caption (classifier-free guidance).
    caption_dropout: float = 0.1
    max_text_tokens: int = 128  # captions, questions and answers are cut to this many tokens
    # QA pairs per VQA example (distinct, drawn from KEY.json): more answer supervision per image
    # for a few tokens each. The first turn is always the single-question inference format.
    vqa_turns: int = 1
    # Packed rows: the examples of a micro-batch are packed into rows of at most this many positions
    # (best-fit decreasing, `SequenceLayout.pack`); each keeps its own positions and attention, so
    # the losses equal those of the examples one by one, without the padding of one example per
    # row. 0 puts one example in each row (padded to the longest).
    max_tokens_per_row: int = 0
    # Shapes: rows are padded to a multiple of `length_multiple` positions, and the number of rows
    # to a multiple of `row_multiple` (empty rows). A few shapes, seen again and again, run faster
    # on the CPU than a new shape every step: oneDNN and inductor build kernels per shape
    # (docs/experiments/2026-11-25-benchmarks-cpu-gpu.md, "Shapes").
    row_multiple: int = 1
    length_multiple: int = 1

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        return config_from_dict(cls, values)

    def collate(self, layout, examples):
        """The micro-batch of `examples`: packed rows (`max_tokens_per_row`) or one example per row."""
        if self.max_tokens_per_row:
            return layout.pack(examples, self.max_tokens_per_row, self.length_multiple, self.row_multiple)
        return layout.collate(examples, self.length_multiple)

    def video_sampling(self) -> VideoSampling:
        """How clips are sampled (`unimodal.video.VideoSampling`)."""
        return VideoSampling(self.num_frames, self.video_fps)

    def class_captions(self) -> ClassCaptions | None:
        """The class names of `class_names` with the caption template, or None when it is unset.
        Reads and checks the file at each call (`unimodal.data.classes.load_class_names`: ValueError
        naming the file and line when it is missing, empty or has a blank name); a run calls this a
        few times, and the training reader once, handing the result to its workers."""
        return load_class_captions(self.class_names, self.class_caption_template)

    def validate(self) -> None:
        positive = ["image_size", "batch_size", "epoch_batches", "prefetch_factor", "max_text_tokens", "vqa_turns",
                    "shuffle_buffer", "row_multiple", "length_multiple"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"DataConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_frames < 1 or not math.isfinite(self.video_fps) or self.video_fps <= 0:
            raise ValueError(f"DataConfig.num_frames must be >= 1 and video_fps a positive number, got "
                             f"{self.num_frames} and {self.video_fps}")
        unknown_media = sorted(set(self.media_weights) - set(MEDIA_KINDS))
        if unknown_media or any(w < 0 for w in self.media_weights.values()):
            raise ValueError(f"DataConfig.media_weights maps {MEDIA_KINDS} to weights >= 0, got {self.media_weights}")
        if self.train_shards and self.video_shards and sum(self.media_weights.get(k, 0.0) for k in MEDIA_KINDS) <= 0:
            raise ValueError(f"DataConfig.media_weights must give train_shards or video_shards a positive weight, "
                             f"got {self.media_weights}")
        if self.image_resize not in ("square", "native"):
            raise ValueError(f"DataConfig.image_resize must be 'square' or 'native', got {self.image_resize!r}")
        if self.max_tokens_per_row < 0:
            raise ValueError(f"DataConfig.max_tokens_per_row must be >= 0 (0 = one example per row), "
                             f"got {self.max_tokens_per_row}")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ValueError(f"DataConfig.task_weights has unknown task(s) {unknown}; tasks are {TASKS}")
        if any(w < 0 for w in self.task_weights.values()) or sum(self.task_weights.values()) <= 0:
            raise ValueError(f"DataConfig.task_weights must be >= 0 with a positive sum, got {self.task_weights}")
        if self.class_names is not None and not (isinstance(self.class_names, str) and self.class_names.strip()):
            raise ValueError(f"DataConfig.class_names must be a path to a class names file or null, "
                             f"got {self.class_names!r}")
        check_template(self.class_caption_template, "DataConfig.class_caption_template")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"DataConfig.caption_dropout must lie in [0, 1], got {self.caption_dropout}")
