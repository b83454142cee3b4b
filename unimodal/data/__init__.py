"""Data for unimodal: webdataset shards, the synthetic shapes worlds (still and moving) and their checkers,
the training reader.

Entry points
------------
Training (one call per rank)::

    from unimodal.data import DataConfig, build_train_loader
    loader = build_train_loader(DataConfig(train_shards="shards/train-{000000..000009}.tar"),
                                tokenizer, layout, rank, world_size)
    for batch in loader.endless():       # unimodal.layout.Batch; `for batch in loader` = one epoch
        ...
        metrics["data/skipped"] = loader.skipped          # {"corrupt_image": 1, ...}, all workers
        checkpoint["data"] = loader.state_dict()          # per rank: save every rank's
    loader.load_state_dict(checkpoint["data"])            # next batches = those of an unbroken run

Eval (in process, no shards needed)::

    from unimodal.data import World, WorldConfig, Checker, parse_caption
    world = World(WorldConfig())                          # image_size=32 by default
    sample = world.sample(index, split="eval" | "heldout", seed=0)   # .image (H,W,3) uint8, .caption,
                                                                     # .qa, .objects, .heldout
    Checker(world.config).check(generated_image, sample.objects)     # {"count", "colour", "shape",
                                                                     #  "position", "size", "all_correct", ...}
    Checker(world.config).check(image, parse_caption(prompt))       # from a caption instead
    iter_samples("shards/eval", image_size)   # decoded samples of a shard folder/pattern, in order

Command lines (each module has `main(argv=None)`)::

    python -m unimodal.data.write_shards synthetic --out shards/train --num-samples 20000 --seed 0 --split train
    python -m unimodal.data.write_shards folder --out DIR --images IMAGES --captions captions.csv|jsonl
    python -m unimodal.data.write_shards motion --out DIR --num-samples 20000 --split train   # moving shapes, GIF clips
    python -m unimodal.data.write_shards videos --out DIR --videos VIDEOS --captions captions.csv|jsonl
    python -m unimodal.data.write_shards hf --out DIR --dataset-path DIR --image-column image --text-column text
    python -m unimodal.data.cache_latents --shards PATTERN --out DIR --codec vae --vae-path VAE --image-size 256
    # in Python: unimodal.data.write_shards.write_synthetic_shards(out_dir, num_samples, seed, split) -> WriteSummary
    # (the CLI modules are not imported here, so `python -m unimodal.data.<module>` runs them cleanly)

Modules: synthetic (world, captions, QA), checker (read scenes back), motion (the moving-shapes world),
motion_checker (read clips back), motion_shards (its shard writer), sources + write_shards (writer),
shards (tar reading), samples (decoding), tasks (task mixture), reader (loader), skips (counting),
cache_latents, config (DataConfig). This package imports the core library; the core never imports it.
Needs webdataset (the `train` or `eval` extra).
"""

from unimodal.extras import require_extra

require_extra(("train", "eval"), "webdataset", feature="unimodal.data")

# ruff: noqa: E402 (the check comes first)

from .checker import Checker, check, parse_caption
from .config import DataConfig
from .reader import ShardLoader, build_train_loader, iter_samples
from .synthetic import SceneObject, SyntheticSample, World, WorldConfig
from .tasks import TASKS, TaskMixture

__all__ = ["Checker", "check", "parse_caption", "DataConfig", "ShardLoader", "build_train_loader", "iter_samples",
           "SceneObject", "SyntheticSample", "World", "WorldConfig", "TASKS", "TaskMixture"]
