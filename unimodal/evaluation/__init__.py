"""Evaluation of unimodal models: metrics, reports and (in `unimodal.evaluation.run`) the runner.

One module per job; import what you need from it:

- `unimodal.evaluation.caption_metrics`: `bleu4`, `cider_d`, `exact_match`, `caption_scores` (coco-caption numbers,
  Python tokenizer, no Java).
- `unimodal.evaluation.vqa_metrics`: `vqa_accuracy`, `vqa_score`, `normalize_answer` (official VQAv2 rules).
- `unimodal.evaluation.image_metrics`: `fid_kid`, `extract_features`, `fid_kid_from_features`,
  `InceptionFeatureExtractor` (torchmetrics + the standard FID Inception; needs the `eval` extra).
- `unimodal.evaluation.report`: `write_metrics_json`, `save_image_grid`, `write_markdown_summary`, and for
  video clips `frame_strip` (a clip's frames side by side) and `save_gif`.
- `unimodal.evaluation.shapes_suite`, `.shards_suite`, `.video_suite`: the suites (`run_shapes`, `run_shards`,
  `run_video`), sharing `unimodal.evaluation.suites`.

- `unimodal.evaluation.run`: `EvalConfig` and `run_suite(model, config)`, the runner as a function (also
  reachable as `unimodal.evaluation.EvalConfig` / `.run_suite`, imported on first use).

Nothing is imported up front, so `import unimodal.evaluation.caption_metrics` stays light (no torch).
"""

_LAZY = {"EvalConfig", "run_suite"}  # from .run, which imports torch: loaded when first asked for


def __getattr__(name: str):
    if name in _LAZY:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
