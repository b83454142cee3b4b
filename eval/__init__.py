"""Evaluation of unimodal models: metrics, reports and (in `eval.run`) the runner.

One module per job; import what you need from it:

- `eval.caption_metrics`: `bleu4`, `cider_d`, `exact_match`, `caption_scores` (coco-caption numbers,
  Python tokenizer, no Java).
- `eval.vqa_metrics`: `vqa_accuracy`, `vqa_score`, `normalize_answer` (official VQAv2 rules).
- `eval.image_metrics`: `fid_kid`, `extract_features`, `fid_kid_from_features`,
  `InceptionFeatureExtractor` (torchmetrics + the standard FID Inception; needs the `eval` extra).
- `eval.report`: `write_metrics_json`, `save_image_grid`, `write_markdown_summary`.

Nothing is imported here, so `import eval.caption_metrics` stays light (no torch).
"""
