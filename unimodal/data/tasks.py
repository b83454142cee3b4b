"""The task mixture: one decoded sample -> one `unimodal.layout.Example`.

    caption     image -> its caption                      (layout.caption)
    vqa         image + up to `vqa_turns` QA pairs from KEY.json -> answers (layout.vqa_turns)
    generation  caption -> image; with probability `caption_dropout` the caption is "" so the model
                also learns the unconditional image distribution (classifier-free guidance)

The caller passes a `random.Random` seeded per sample, so the choice for a sample does not depend on
which samples came before it (this is what lets a resumed reader skip samples without replaying
any randomness).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

from unimodal.layout import Example, SequenceLayout

TASKS = ("caption", "vqa", "generation")


def qa_pairs(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The well-formed {"question", "answer"} string pairs of a sample's JSON (others are ignored)."""
    items = metadata.get("qa")
    if not isinstance(items, list):
        return []
    pairs = []
    for item in items:
        if type(item) is dict:  # JSON objects; `isinstance(_, Mapping)` costs ~10x more per call here
            question, answer = item.get("question"), item.get("answer")
            if type(question) is str and type(answer) is str and question.strip() and answer.strip():
                pairs.append((question.strip(), answer.strip()))
    return pairs


class TaskMixture:
    """Chooses a task per sample and builds its example.

    Args:
        layout: the sequence layout (it holds the tokenizer).
        task_weights: relative weight per task name in `TASKS` (missing = 0).
        caption_dropout: probability of an empty caption in a generation example.
        max_text_tokens: captions, questions and answers are truncated to this many tokens.
    """

    def __init__(self, layout: SequenceLayout, task_weights: Mapping[str, float], caption_dropout: float = 0.1,
                 max_text_tokens: int = 128, vqa_turns: int = 1):
        unknown = sorted(set(task_weights) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {TASKS}")
        self.layout = layout
        self.weights = {task: float(task_weights.get(task, 0.0)) for task in TASKS}
        if sum(self.weights.values()) <= 0:
            raise ValueError(f"task weights must have a positive sum, got {dict(task_weights)}")
        self.caption_dropout = caption_dropout
        self.max_text_tokens = max_text_tokens
        if vqa_turns < 1:
            raise ValueError(f"vqa_turns must be >= 1, got {vqa_turns}")
        self.vqa_turns = vqa_turns

    def choose(self, rng: random.Random, has_qa: bool) -> str | None:
        """A task name, or None when no task with positive weight can use the sample."""
        weights = dict(self.weights)
        task = rng.choices(TASKS, weights=[weights[t] for t in TASKS])[0]
        if task == "vqa" and not has_qa:
            weights["vqa"] = 0.0
            if sum(weights.values()) <= 0:
                return None
            task = rng.choices(TASKS, weights=[weights[t] for t in TASKS])[0]
        return task

    def _ids(self, text: str) -> list[int]:
        return self.layout.tokenizer.encode(text)[: self.max_text_tokens]

    def _truncated(self, text: str) -> str:
        """`text` cut to max_text_tokens tokens (layout.vqa takes strings). A token covers at least
        one character (plus a possible word-start piece), so short strings skip the round trip."""
        if len(text) < self.max_text_tokens - 1:
            return text
        return self.layout.tokenizer.decode(self._ids(text))

    def example(self, rng: random.Random, image: torch.Tensor, caption: str,
                metadata: Mapping[str, Any]) -> tuple[str, Example] | None:
        """(task, example) for one sample; `image` is (C, H, W) pixels in [-1, 1] or a latent."""
        pairs = qa_pairs(metadata)
        task = self.choose(rng, bool(pairs))
        if task is None:
            return None
        if task == "caption":
            return task, self.layout.caption(image, self._ids(caption))
        if task == "vqa":
            chosen = rng.sample(pairs, min(self.vqa_turns, len(pairs)))
            return task, self.layout.vqa_turns(image, [(self._truncated(q), self._truncated(a)) for q, a in chosen])
        text = [] if rng.random() < self.caption_dropout else self._ids(caption)
        return task, self.layout.generation(text, image)
