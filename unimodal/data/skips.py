"""Counting what the data pipeline skips: never fatal, never silent.

Every skipped sample (or unreadable shard) is counted under a reason and logged as a warning: the
first `LOG_FIRST` per reason, then at every power of ten, so a badly broken shard set cannot flood
the log but still shows up in it. The counts travel with each batch from the data-loader workers to
the main process, where `ShardLoader.skipped` sums them for the training log.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger("data")

# Reasons, one word each, as they appear in `ShardLoader.skipped` and the writer's summary.
CORRUPT_IMAGE = "corrupt_image"  # image bytes that PIL cannot decode
MISSING_IMAGE = "missing_image"  # no image (KEY.png|jpg|...) and no clip (KEY.gif|mp4|...|frames.npy); writing: a missing file
CORRUPT_VIDEO = "corrupt_video"  # clip bytes that cannot be decoded (or, when writing, a file of no known video type)
SHORT_CLIP = "short_clip"  # a clip shorter than the num_frames / fps seconds its sampled window needs
MISSING_CAPTION = "missing_caption"  # no non-empty KEY.txt, nor a KEY.json "caption"/"captions", nor a KEY.cls
MISSING_CLASS_NAMES = "missing_class_names"  # a KEY.cls (and no caption) but no DataConfig.class_names to name it
BAD_CLASS = "bad_class"  # a KEY.cls that is not an integer
CLASS_OUT_OF_RANGE = "class_out_of_range"  # a KEY.cls with no line in the class names file
BAD_JSON = "bad_json"  # KEY.json that is not a JSON object
MISSING_LATENT = "missing_latent"  # DataConfig.latents=True but no KEY.latent.npy
CORRUPT_LATENT = "corrupt_latent"  # KEY.latent.npy that numpy cannot load
UNREADABLE_SHARD = "unreadable_shard"  # a missing, truncated or corrupt tar: the rest of that shard is skipped
NO_TASK = "no_task"  # no task can use the sample (e.g. only VQA is weighted and it has no QA pairs)

LOG_FIRST = 10


class SkipCounter:
    """Counts skips by reason; `muted` turns counting and logging off (used while fast-forwarding
    through samples a resumed run has already consumed and counted)."""

    def __init__(self, counts: dict[str, int] | None = None, where: str = ""):
        self.counts: Counter[str] = Counter(counts or {})
        self.where = where
        self.muted = False

    def skip(self, reason: str, detail: str = "") -> None:
        if self.muted:
            return
        self.counts[reason] += 1
        count = self.counts[reason]
        if count <= LOG_FIRST or _is_power_of_ten(count):
            more = f" (further {reason} skips are logged at powers of ten)" if count == LOG_FIRST else ""
            logger.warning("data%s: skipped %s #%d: %s%s", self.where, reason, count, detail, more)

    def handler(self, reason: str) -> Callable[[Exception], bool]:
        """A webdataset-style handler: count the exception under `reason` and continue."""

        def handle(exn: Exception) -> bool:
            self.skip(reason, f"{type(exn).__name__}: {exn}")
            return True

        return handle

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
