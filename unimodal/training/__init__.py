"""unimodal's trainer: DeepSpeed over webdataset shards, one entry point for every scale.

    python -m unimodal.training --config configs/tiny.yaml [dot.path=value ...]

Modules, one job each:
    config      typed run config: defaults <- YAML <- dot-path overrides, strict about unknown keys
    engine      the only file that imports deepspeed: distributed set-up, derived DeepSpeed config
    schedule    warm-up + cosine learning-rate factor
    checkpoint  atomic, resumable checkpoints (DeepSpeed state + step, data position, RNG, EMA)
    ema         exponential moving average of the weights (diffusers' EMAModel), ZeRO-3 aware
    export      the inference folder (EMA weights) through `unimodal.pretrained.save_export`
    metrics     progress bar, metrics.jsonl, TensorBoard, loss-curve plot
    samples     PNG grids of generated images and captions during training
    pipeline    shards, tokenizer and data loader for a run
    loop        the training loop: steps, non-finite losses, signals, periodic work
    train       `main(argv)`: wires the pieces together and runs train -> export -> eval

This package may import the core library and `unimodal.data`; the core never imports it. Needs the
`train` extra (`pip install 'unimodal[train]'`).
"""

from unimodal.extras import require_extra

require_extra("train", "deepspeed", "webdataset", feature="unimodal.training")
