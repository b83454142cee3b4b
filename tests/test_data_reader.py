"""The training reader end to end: tiny shards written on the fly, read back through the full pipeline."""

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from unimodal.data.config import DataConfig
from unimodal.data.reader import build_train_loader, iter_samples
from unimodal.data.synthetic import World
from unimodal.data.write_shards import write_synthetic_shards
from unimodal.layout import SequenceLayout
from unimodal.tokenizer import Tokenizer

PATCH_SIZE = 8  # 32x32 images: 4x4 = 16 patch positions


@pytest.fixture(scope="module")
def tokenizer():
    world = World()
    texts = []
    for i in range(200):
        sample = world.sample(i)
        texts += [sample.caption] + [f"question: {q['question']} answer: {q['answer']}" for q in sample.qa]
    return Tokenizer.train(texts + ["sample"], vocab_size=200)


@pytest.fixture(scope="module")
def layout(tokenizer):
    return SequenceLayout(tokenizer, PATCH_SIZE)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards x 12 synthetic samples."""
    out = tmp_path_factory.mktemp("shards")
    return write_synthetic_shards(out, 96, seed=0, max_count=12, progress=False).pattern


def config(shards, **overrides):
    values = dict(train_shards=shards, batch_size=4, num_workers=2, shuffle_buffer=16, epoch_batches=6, seed=0)
    return DataConfig(**{**values, **overrides})


def take(loader, n):
    """n batches from an endless loader, plus the sample keys of each."""
    batches, keys = [], []
    for batch in loader.endless():
        batches.append(batch)
        keys.append(list(loader.last_keys))
        if len(batches) == n:
            return batches, keys


def same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        for name in ("input_ids", "lm_labels", "example_rows", "example_starts", "example_lengths", "images",
                     "image_rows", "image_starts", "image_grids", "image_is_target"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), rtol=0, atol=0)


def test_full_pipeline_with_two_workers(shards, tokenizer, layout):
    loader = build_train_loader(config(shards), tokenizer, layout)
    batches = list(loader)  # one epoch = epoch_batches
    assert len(batches) == 6 and loader.epoch == 1 and loader.num_samples == 24 and loader.skipped == {}
    batch = batches[0]
    images = torch.stack(batch.images)
    assert images.shape == (4, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert batch.num_examples == 4 and batch.example_lengths.sum() == batch.num_tokens
    tasks = torch.cat([b.image_is_target for b in batches])
    assert 0 < tasks.sum() < len(tasks)  # generation and image->text examples both occur
    # The same seed gives the same batches; another seed, others.
    same_batches(batches, list(build_train_loader(config(shards), tokenizer, layout)))
    other = list(build_train_loader(config(shards, seed=1), tokenizer, layout))
    assert not all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, other))


@pytest.mark.parametrize("num_workers,split_at", [(2, 5), (2, 6), (0, 4)])
def test_resume_gives_the_same_next_batches(shards, tokenizer, layout, num_workers, split_at):
    cfg = config(shards, num_workers=num_workers)
    full, full_keys = take(build_train_loader(cfg, tokenizer, layout), 10)  # crosses an epoch boundary
    first = build_train_loader(cfg, tokenizer, layout)
    take(first, split_at)
    state = first.state_dict()
    resumed = build_train_loader(cfg, tokenizer, layout)
    resumed.load_state_dict(state)
    rest, rest_keys = take(resumed, 10 - split_at)
    assert rest_keys == full_keys[split_at:]
    same_batches(rest, full[split_at:])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_length_multiple_pads_every_batch(shards, tokenizer, layout, num_workers):
    """`length_multiple` pads batches (in a worker or not) to a multiple; the rows' content is unchanged."""
    plain = list(build_train_loader(config(shards, num_workers=num_workers), tokenizer, layout))
    padded = list(build_train_loader(config(shards, num_workers=num_workers, length_multiple=16), tokenizer, layout))
    assert any(b.input_ids.shape[1] % 16 for b in plain)  # otherwise the test shows nothing
    for a, b in zip(plain, padded, strict=True):
        length = a.input_ids.shape[1]
        assert b.input_ids.shape[1] % 16 == 0 and 0 <= b.input_ids.shape[1] - length < 16
        assert torch.equal(b.input_ids[:, :length], a.input_ids) and torch.equal(b.example_lengths, a.example_lengths)
        assert (b.lm_labels[:, length:] == -100).all()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_packed_rows_hold_the_same_examples(shards, tokenizer, layout, num_workers):
    """`max_tokens_per_row` packs each batch's examples into fewer, fuller rows: the same examples,
    tokens and items as one example per row, in rows of at most that many positions."""
    plain = list(build_train_loader(config(shards, num_workers=num_workers), tokenizer, layout))
    packed = list(build_train_loader(config(shards, num_workers=num_workers, max_tokens_per_row=256,
                                            length_multiple=16, row_multiple=2), tokenizer, layout))
    assert sum(b.num_rows for b in packed) < sum(b.num_rows for b in plain)
    for a, b in zip(plain, packed, strict=True):
        assert b.num_examples == a.num_examples and b.num_rows % 2 == 0 and b.input_ids.shape[1] <= 256
        assert b.input_ids.shape[1] % 16 == 0
        for e, index in enumerate(b.example_index.tolist()):
            start, length = int(b.example_starts[e]), int(b.example_lengths[e])
            assert torch.equal(b.input_ids[b.example_rows[e], start:start + length], a.input_ids[index, :length])
        assert sorted(img.sum().item() for img in b.images) == sorted(img.sum().item() for img in a.images)


def test_changed_reader_resumes_at_next_epoch(shards, tokenizer, layout, caplog):
    loader = build_train_loader(config(shards, num_workers=0), tokenizer, layout)
    take(loader, 2)
    other = build_train_loader(config(shards, num_workers=0, batch_size=3), tokenizer, layout)
    with caplog.at_level(logging.WARNING, logger="data"):
        other.load_state_dict(loader.state_dict())
    assert other.epoch == 1 and other.num_samples == 8 and "changed" in caplog.text


def test_two_node_split_sees_each_sample_once(shards, tokenizer, layout):
    seen = []
    for rank in range(2):
        loader = build_train_loader(config(shards, resampled=False), tokenizer, layout, rank=rank, world_size=2)
        keys = []
        for _ in loader:
            keys += loader.last_keys
        assert len(keys) == 48  # 4 of the 8 shards per rank
        seen.append(set(keys))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 96


def test_finite_epochs_reshuffle_and_resume(shards, tokenizer, layout):
    cfg = config(shards, resampled=False)
    loader = build_train_loader(cfg, tokenizer, layout)
    full, keys = take(loader, 30)  # 24 batches per epoch
    epoch_keys = sum(keys[:24], [])
    assert len(epoch_keys) == len(set(epoch_keys)) == 96  # one pass: every sample once
    assert keys[24:30] != keys[:6]  # the next epoch is shuffled differently
    first = build_train_loader(cfg, tokenizer, layout)
    take(first, 13)
    resumed = build_train_loader(cfg, tokenizer, layout)
    resumed.load_state_dict(first.state_dict())
    rest, rest_keys = take(resumed, 17)
    assert rest_keys == keys[13:]
    same_batches(rest, full[13:])


def _png(value):
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_sample_and_truncated_shard_are_counted(tmp_path, tokenizer, layout, caplog):
    good = [str(tmp_path / "good-000000.tar"), str(tmp_path / "cut-000001.tar")]
    with wds.TarWriter(good[0]) as sink:
        for i in range(10):
            sink.write({"__key__": f"a{i:03d}", "png": _png(i), "txt": "a small red circle in the center"})
        sink.write({"__key__": "corrupt", "png": b"\x89PNG not really", "txt": "a small red circle in the center"})
        sink.write({"__key__": "nocaption", "png": _png(1)})
    with wds.TarWriter(good[1]) as sink:
        for i in range(10):
            sink.write({"__key__": f"b{i:03d}", "png": _png(i), "txt": "a large blue square on the left"})
    with tarfile.open(good[1]) as tar:
        cut = next(m for m in tar.getmembers() if m.name.startswith("b006")).offset_data + 20
    data = open(good[1], "rb").read()
    open(good[1], "wb").write(data[:cut])  # b006's first file is cut: b000..b005 survive
    expected = {"corrupt_image": 1, "missing_caption": 1, "unreadable_shard": 1}
    for num_workers in (2, 0):  # counted in the workers, summed in the main process
        loader = build_train_loader(config("::".join(good), resampled=False, batch_size=5, num_workers=num_workers),
                                    tokenizer, layout)
        with caplog.at_level(logging.WARNING, logger="data"):
            keys = [k for _ in loader for k in loader.last_keys]
        assert len(keys) == 16 and loader.skipped == expected
    # Never silent: a warning line per skip (caplog sees the main process, hence num_workers=0).
    assert all(reason in caplog.text for reason in expected)
    # Resampled endless reading keeps going over the same broken shards.
    cfg = config("::".join(good), batch_size=5, epoch_batches=20)
    endless = build_train_loader(cfg, tokenizer, layout)
    take(endless, 20)
    assert endless.skipped["unreadable_shard"] >= 1 and endless.skipped["corrupt_image"] >= 1
    # A resumed run ends with the same counts as the uninterrupted one (none lost, none counted twice).
    first = build_train_loader(cfg, tokenizer, layout)
    take(first, 7)
    resumed = build_train_loader(cfg, tokenizer, layout)
    resumed.load_state_dict(first.state_dict())
    take(resumed, 13)
    assert resumed.skipped == endless.skipped and resumed.num_samples == endless.num_samples == 100


def test_plain_tarfile_jpg_shards_read_unchanged(tmp_path, tokenizer, layout):
    """An img2dataset-style shard written by plain tarfile: KEY.jpg + KEY.txt, no JSON, odd sizes."""
    world = World()
    path = tmp_path / "plain-000000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(10):
            sample = world.sample(i)
            image = Image.fromarray(sample.image).resize((48, 40))  # not square, not 32 px
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            for name, payload in ((f"{i:05d}.jpg", buffer.getvalue()), (f"{i:05d}.txt", sample.caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    decoded = list(iter_samples(str(path), image_size=32))
    assert [d.caption for d in decoded] == [world.sample(i).caption for i in range(10)]
    assert decoded[0].image.shape == (3, 32, 32) and decoded[0].metadata == {}
    loader = build_train_loader(config(str(tmp_path), resampled=False, num_workers=0, batch_size=4), tokenizer, layout)
    batches = list(loader)  # VQA draws fall back to caption/generation: no QA in these samples
    assert [b.input_ids.shape[0] for b in batches] == [4, 4, 2] and loader.skipped == {}


def test_config_errors(shards, tokenizer, layout):
    with pytest.raises(ValueError, match="unknown task"):
        DataConfig(task_weights={"captioning": 1.0})
    with pytest.raises(ValueError, match="length_multiple must be positive"):
        DataConfig(length_multiple=0)
    with pytest.raises(ValueError, match="row_multiple must be positive"):
        DataConfig(row_multiple=0)
    with pytest.raises(ValueError, match="max_tokens_per_row must be >= 0"):
        DataConfig(max_tokens_per_row=-1)
    with pytest.raises(ValueError, match="unknown DataConfig"):
        DataConfig.from_dict({"train_shard": "x"})
    with pytest.raises(ValueError, match="train_shards is empty"):
        build_train_loader(DataConfig(), tokenizer, layout)
    with pytest.raises(ValueError, match="rank"):
        build_train_loader(config(shards), tokenizer, layout, rank=2, world_size=2)


def test_finite_resume_when_one_worker_runs_dry_first(tmp_path, tokenizer, layout):
    """Shards of unequal sizes: one worker finishes its shards early, the other goes on alone."""
    write_synthetic_shards(tmp_path, 27, seed=0, max_count=12, prefix="a", progress=False)  # 12, 12, 3
    write_synthetic_shards(tmp_path, 10, seed=1, max_count=4, prefix="b", progress=False)  # 4, 4, 2
    cfg = config(str(tmp_path), resampled=False, batch_size=3, seed=2)
    full, keys = take(build_train_loader(cfg, tokenizer, layout), 14)
    assert len(set(sum(keys[:13], []))) == 37  # the first epoch: 13 batches (some partial)
    for split_at in (4, 9, 12):
        first = build_train_loader(cfg, tokenizer, layout)
        take(first, split_at)
        resumed = build_train_loader(cfg, tokenizer, layout)
        resumed.load_state_dict(first.state_dict())
        rest, rest_keys = take(resumed, 14 - split_at)
        assert rest_keys == keys[split_at:], split_at
        same_batches(rest, full[split_at:])


def test_skip_counter_plugs_into_webdataset(tmp_path):
    from unimodal.data.skips import SkipCounter

    counter = SkipCounter()
    pipeline = wds.tarfile_to_samples(handler=counter.handler("unreadable_shard"))
    assert list(pipeline([{"url": str(tmp_path / "missing.tar")}])) == []
    assert counter.as_dict() == {"unreadable_shard": 1}


def _tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_captions_come_from_txt_or_json(tmp_path):
    """KEY.txt first; else KEY.json "caption"; else one of "captions" (the first in eval); else skipped."""
    import json
    import random

    from unimodal.data.samples import sample_caption
    from unimodal.data.skips import SkipCounter

    several = {"captions": ["one", "two", "three"]}
    url = _tar(tmp_path / "c.tar", [
        ("a.PNG", _png(0)), ("a.txt", b"from txt"), ("a.json", json.dumps({"caption": "ignored"}).encode()),
        ("b.png", _png(0)), ("b.json", json.dumps({"caption": "from json"}).encode()),
        ("c.Jpeg", _jpeg(0)), ("c.json", json.dumps(several).encode()),
        ("d.png", _png(0)), ("d.json", b"{}"),
    ])
    counter = SkipCounter()
    samples = list(iter_samples(url, 16, counter=counter))
    assert [s.caption for s in samples] == ["from txt", "from json", "one"]
    assert counter.as_dict() == {"missing_caption": 1}
    raw = {"json": json.dumps(several).encode()}
    assert {sample_caption(raw, random.Random(seed)) for seed in range(30)} == {"one", "two", "three"}


def _jpeg(value):
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("resampled", [True, False])
def test_an_empty_tar_fails_fast_with_a_message(tmp_path, tokenizer, layout, resampled):
    import time

    empty = _tar(tmp_path / "empty.tar", [])
    loader = build_train_loader(config(empty, num_workers=0, resampled=resampled), tokenizer, layout)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="shards in a row gave no samples|gave no batch"):
        next(iter(loader))
    assert time.perf_counter() - start < 30


def test_fewer_shards_than_workers_finishes(tmp_path, tokenizer, layout, caplog):
    one = write_synthetic_shards(tmp_path, 6, max_count=12, progress=False).pattern
    loader = build_train_loader(config(one, num_workers=2, resampled=False), tokenizer, layout)
    assert "some workers get no shard" in caplog.text
    assert sum(batch.input_ids.shape[0] for batch in loader) == 6


# ---- class-labelled shards: KEY.jpg + KEY.cls (an integer) and no caption, as ImageNet-style sets are stored
CLASS_NAMES = ["red circle", "blue square", "green triangle"]
CLASS_SHARD = [  # (key, files, expected caption or the skip reason)
    ("a", {"jpg": _jpeg(10), "cls": b"0"}, "a photo of a red circle"),
    ("b", {"png": _png(20), "cls": b" 2\n"}, "a photo of a green triangle"),
    ("c", {"png": _png(30), "txt": b"own caption", "cls": b"1"}, "own caption"),  # KEY.txt first
    ("d", {"png": _png(40), "json": b'{"caption": "json caption"}', "cls": b"x"}, "json caption"),  # then json
    ("e", {"png": _png(50), "cls": b"seven"}, "bad_class"),
    ("f", {"png": _png(60), "cls": b"3"}, "class_out_of_range"),
    ("g", {"png": _png(70), "cls": b"-1"}, "class_out_of_range"),
    ("h", {"jpg": _jpeg(80), "cls": b"1"}, "a photo of a blue square"),
]
SKIP_REASONS = ("bad_class", "class_out_of_range")


@pytest.fixture
def class_shard(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASS_NAMES) + "\n")
    url = _tar(tmp_path / "cls.tar", [(f"{key}.{suffix}", data) for key, files, _ in CLASS_SHARD
                                      for suffix, data in files.items()])
    return url, str(names)


def test_class_labelled_samples_are_captioned_from_the_names_file(class_shard):
    from unimodal.data.skips import SkipCounter

    url, names = class_shard
    counter = SkipCounter()
    samples = list(iter_samples(url, 16, counter=counter, classes=DataConfig(class_names=names).class_captions()))
    assert [(s.key, s.caption) for s in samples] == [(k, c) for k, _, c in CLASS_SHARD if c not in SKIP_REASONS]
    assert counter.as_dict() == {"bad_class": 1, "class_out_of_range": 2}


def test_cached_latents_of_class_labelled_shards_keep_the_class_captions(class_shard, tmp_path):
    """`cache_latents --class-names` captions class-only samples as training does; the latent shards
    then read back with those captions, without the names file."""
    from unimodal.data import cache_latents

    url, names = class_shard
    assert cache_latents.main(["--shards", url, "--out", str(tmp_path / "px"), "--codec", "pixel", "--image-size", "16",
                               "--no-progress", "--class-names", names]) == 0
    cached = list(iter_samples(str(tmp_path / "px"), 16, latents=True))
    assert [(s.key, s.caption) for s in cached] == [(k, c) for k, _, c in CLASS_SHARD if c not in SKIP_REASONS]


def test_class_labelled_shards_train_to_the_class_captions(class_shard):
    """Through the training reader (a worker process): caption examples whose LM targets decode to
    exactly the class captions, and the bad labels counted by reason."""
    url, names = class_shard
    expected = sorted(c for _, _, c in CLASS_SHARD if c not in SKIP_REASONS)
    world = World()
    texts = [world.sample(i).caption for i in range(100)] + expected
    tokenizer = Tokenizer.train(texts, vocab_size=200)
    layout = SequenceLayout(tokenizer, PATCH_SIZE)
    cfg = config(url, class_names=names, num_workers=1, resampled=False, batch_size=2, image_size=16,
                 task_weights={"caption": 1.0, "vqa": 0.0, "generation": 0.0}, caption_dropout=0.0)
    loader = build_train_loader(cfg, tokenizer, layout)
    captions = []
    for batch in loader:
        for labels in batch.lm_labels:
            ids = [int(t) for t in labels if t != -100 and t != tokenizer.eos_id]
            captions.append(tokenizer.decode(ids))
    assert sorted(captions) == expected
    assert loader.skipped == {"bad_class": 1, "class_out_of_range": 2}


def test_class_labels_without_names_are_skipped_with_what_to_set(class_shard, caplog, monkeypatch):
    from unimodal.data import classes
    from unimodal.data.skips import SkipCounter

    monkeypatch.setattr(classes, "_warned_unconfigured", False)
    url, _ = class_shard
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="data"):
        samples = list(iter_samples(url, 16, counter=counter))
    assert [s.caption for s in samples] == ["own caption", "json caption"]
    assert counter.as_dict() == {"missing_class_names": 6}
    advice = [r.getMessage() for r in caplog.records if "set data.class_names" in r.getMessage()
              and "skipped missing_class_names" not in r.getMessage()]
    assert len(advice) == 1 and f"{url}:a" in advice[0]  # once, naming the first key


def test_a_json_list_of_class_names_and_a_custom_template(tmp_path):
    import json

    path = tmp_path / "names.json"
    path.write_text(json.dumps(CLASS_NAMES))
    classes = DataConfig(class_names=str(path), class_caption_template="{name}, a class").class_captions()
    assert classes.names == tuple(CLASS_NAMES) and classes.caption(1) == "blue square, a class"


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("\n", "line 1 .class 0. is blank"),
    ("tench\n\ngoldfish\n", "line 2 .class 1. is blank"),
    ("tench\n   \n", "line 2 .class 1. is blank"),
])
def test_class_names_file_must_name_every_class(tmp_path, text, message):
    path = tmp_path / "names.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"names.txt.*{message}"):
        DataConfig(class_names=str(path)).class_captions()


def test_bad_class_names_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found: .*missing.txt"):
        DataConfig(class_names=str(tmp_path / "missing.txt")).class_captions()
    (tmp_path / "names.json").write_text('["tench", " "]')
    with pytest.raises(ValueError, match=r"names.json: item 1 \(class 1\)"):
        DataConfig(class_names=str(tmp_path / "names.json")).class_captions()
    with pytest.raises(ValueError, match="must contain {name}"):
        DataConfig(class_caption_template="a photo")
    with pytest.raises(ValueError, match="only field is {name}"):
        DataConfig(class_caption_template="a {name} of {kind}")
