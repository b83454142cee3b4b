"""The task mixture: weights, VQA fallback, caption dropout, and what each example teaches."""

import random

import pytest
import torch

from unimodal.data.synthetic import World
from unimodal.data.tasks import TaskMixture, qa_pairs
from unimodal.layout import IGNORE_INDEX, SequenceLayout
from unimodal.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def layout():
    world = World()
    texts = []
    for i in range(100):
        sample = world.sample(i)
        texts += [sample.caption] + [f"question: {q['question']} answer: {q['answer']}" for q in sample.qa]
    return SequenceLayout(Tokenizer.train(texts, vocab_size=150), patch_size=4)


def taught(layout, example):
    """The text an example puts the LM loss on (without <eos>)."""
    return layout.tokenizer.decode([t for t in example.lm_labels if t != IGNORE_INDEX])


def test_tasks_teach_the_right_text(layout):
    sample = World().sample(3)
    image = torch.zeros(3, 8, 8)
    mixture = TaskMixture(layout, {"caption": 1.0}, max_text_tokens=128)
    task, example = mixture.example(random.Random(0), image, sample.caption, sample.metadata())
    assert task == "caption" and taught(layout, example) == sample.caption
    mixture = TaskMixture(layout, {"vqa": 1.0})
    task, example = mixture.example(random.Random(1), image, sample.caption, sample.metadata())
    answers = {q["answer"] for q in sample.qa}
    assert task == "vqa" and taught(layout, example) in answers
    mixture = TaskMixture(layout, {"generation": 1.0}, caption_dropout=0.0)
    task, example = mixture.example(random.Random(2), image, sample.caption, sample.metadata())
    assert task == "generation" and example.image_is_target == [True] and taught(layout, example) == ""
    assert layout.tokenizer.decode(example.input_ids) == sample.caption


def test_weights_fallback_and_dropout(layout):
    rng = random.Random(0)
    image, caption = torch.zeros(3, 8, 8), "a small red circle in the center"
    mixture = TaskMixture(layout, {"caption": 1.0, "vqa": 2.0, "generation": 1.0}, caption_dropout=0.25)
    tasks = [mixture.example(rng, image, caption, {})[0] for _ in range(2000)]
    assert "vqa" not in tasks and 0.4 < tasks.count("caption") / len(tasks) < 0.6  # no QA: fall back
    generation = TaskMixture(layout, {"generation": 1.0}, caption_dropout=0.25)
    empty = [len(generation.example(rng, image, caption, {})[1].input_ids) == 4 + 4 for _ in range(2000)]
    assert 0.2 < sum(empty) / len(empty) < 0.3  # <bos> <boi> 4 patches <eoi> <eos>: the caption dropped
    assert TaskMixture(layout, {"vqa": 1.0}).example(rng, image, caption, {}) is None  # nothing can use it
    messy = {"qa": [{"question": "q?", "answer": ""}, {"question": "x?", "answer": "y"}, "junk"]}
    assert qa_pairs(messy) == [("x?", "y")]
    with pytest.raises(ValueError, match="unknown task"):
        TaskMixture(layout, {"captions": 1.0})
