"""Shared fixtures: a tiny trained tokenizer and random debug-size models (no downloads)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from unimodal.config import ModelConfig
from unimodal.tokenizer import Tokenizer

CORPUS = [
    "a large red circle at the top left and a small blue square at the bottom right",
    "a small green triangle in the center",
    "question: what colour is the circle? answer: red",
    "question: how many shapes are there? answer: 2",
    "a large yellow square on the left and a small purple circle on the right",
]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS * 4, vocab_size=120)


@pytest.fixture
def debug_config(tokenizer) -> ModelConfig:
    return ModelConfig.preset("debug", vocab_size=tokenizer.vocab_size)
