"""Shard lists and raw tar samples in the webdataset layout (`KEY.ext` files grouped by KEY).

We read tars with a small streaming iterator of our own rather than webdataset's
`tarfile_to_samples`: on a truncated shard webdataset 1.0.2 calls the handler twice and then emits
the half-read sample merged with the next shard's first files (checked on this stack), which would
make the skip counts wrong and leak partial samples. Here a shard that fails to read is counted once
under `unreadable_shard`, the sample being read when it failed is dropped (it may be incomplete), and
reading moves on to the next shard. Keys and suffixes follow webdataset's `base_plus_ext` rule
(the key is everything before the first dot of the file name), and shards open through
`webdataset.gopen`, so `pipe:` and http(s) URLs work as they do in webdataset.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from .skips import UNREADABLE_SHARD, SkipCounter

RawSample = dict  # {"__key__": str, "__url__": str, "<suffix>": bytes, ...}, e.g. "png", "txt", "latent.npy"


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern ("dir/train-{000000..000009}.tar"), several patterns joined
    by "::", a directory (every *.tar in it, sorted), or a list of any of these."""
    if isinstance(spec, (list, tuple)):
        return [url for item in spec for url in expand_shards(item)]
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected shards as a brace pattern, a directory or a list, got {spec!r}")
    if os.path.isdir(spec):
        urls = sorted(glob.glob(os.path.join(spec, "*.tar")))
        if not urls:
            raise ValueError(f"no .tar shards in directory {spec}")
        return urls
    return list(expand_urls(spec))


def iter_shard(url: str, counter: SkipCounter) -> Iterator[RawSample]:
    """The samples of one tar, in file order. Files of one sample must be adjacent (as every
    webdataset writer makes them); files whose name has no extension or starts with "__" are ignored."""
    current: RawSample | None = None
    try:
        with gopen(url, "rb") as stream:
            tar = tarfile.open(fileobj=stream, mode="r|*")
            for info in tar:
                if not info.isreg():
                    continue
                key, suffix = base_plus_ext(info.name)
                if key is None or os.path.basename(info.name).startswith("__"):
                    continue
                if current is not None and key != current["__key__"]:
                    yield current  # complete: the next sample's first header was read whole
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[suffix.lower()] = tar.extractfile(info).read()
                tar.members = []  # streaming mode keeps every header otherwise
    except Exception as exn:  # truncated or corrupt tar, missing file, failed pipe
        counter.skip(UNREADABLE_SHARD, f"{url}: {type(exn).__name__}: {exn} (rest of the shard skipped)")
        return
    if current is not None:
        yield current


def iter_shards(urls: Iterable[str], counter: SkipCounter) -> Iterator[RawSample]:
    for url in urls:
        yield from iter_shard(url, counter)
