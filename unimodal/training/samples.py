"""Sample grids during training: images generated for fixed prompts, captions of fixed images.

Grids go to `samples/step_XXXXXXXX_generate.png` and `..._caption.png`, with the texts in
`step_XXXXXXXX.json`. They are made with the public API (`unimodal.api.UniModal`) on a plain copy
of the model holding the EMA weights (the weights the export will hold), on rank 0 only, under a
forked RNG so that sampling never shifts the training random streams.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from unimodal.api import UniModal
from unimodal.evaluation.report import frame_strip
from unimodal.images import image_grid, to_pil
from unimodal.model import UniModalModel
from unimodal.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class SampleSet:
    """What every grid of a run shows."""

    prompts: list[str]  # generation prompts
    images: list[torch.Tensor]  # N × (3, H, W) pixels in [-1, 1] (or clips (3, F, H, W)) to caption (sizes may differ)
    references: list[str]  # the true captions of `images`
    sizes: list[tuple[int, int]] | None = None  # (height, width) per prompt; None = the model's size
    num_frames: int | None = None  # generate clips of this many frames (None = images)


class SampleWriter:
    """Writes one pair of grids per call.

    Args:
        folder: the run's samples/ folder.
        samples: fixed prompts and images.
        num_steps, guidance_scale, seed: passed to `UniModal.generate`.
    """

    def __init__(self, folder: Path, samples: SampleSet, num_steps: int, guidance_scale: float, seed: int = 0):
        self.folder = folder
        self.samples = samples
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.seed = seed

    def _generate(self, api: UniModal) -> list:
        """One image per prompt: at the model's size in one call, or, when the prompts carry sizes
        (an aspect model's sample captions), one call per size, so every canvas is drawn."""
        options = dict(num_steps=self.num_steps, guidance_scale=self.guidance_scale)
        if self.samples.num_frames is not None:
            options["num_frames"] = self.samples.num_frames
        if not self.samples.sizes:
            return api.generate(self.samples.prompts, seed=self.seed, **options)
        images: list = [None] * len(self.samples.prompts)
        for height, width in dict.fromkeys(self.samples.sizes):
            chosen = [i for i, size in enumerate(self.samples.sizes) if size == (height, width)]
            drawn = api.generate([self.samples.prompts[i] for i in chosen], seed=self.seed + chosen[0],
                                 height=height, width=width, **options)
            for i, image in zip(chosen, drawn):
                images[i] = image
        return images

    @torch.no_grad()
    def write(self, step: int, model: UniModalModel, tokenizer: Tokenizer, codec) -> dict[str, str]:
        """Generate and caption with `model` (eval mode); returns {"generate": path, "caption": path}."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"step_{step:08d}"
        api = UniModal(model, tokenizer, codec)
        written, texts = {}, {"step": step}
        with torch.random.fork_rng(devices=[]):
            if self.samples.prompts:
                generated = self._generate(api)
                path = stem.with_name(stem.name + "_generate.png")
                _grid(generated, self.samples.prompts, 5).save(path)
                written["generate"], texts["prompts"] = str(path), self.samples.prompts
            if len(self.samples.images):
                # [-1, 1] -> the API's [0, 1]; a clip (3, F, H, W) goes in as its frames (F, 3, H, W)
                captions = api.caption([(im.transpose(0, 1) if im.dim() == 4 else im) / 2 + 0.5
                                        for im in self.samples.images])
                labels = [f"model: {c} / true: {r}" for c, r in zip(captions, self.samples.references)]
                path = stem.with_name(stem.name + "_caption.png")
                shown = [to_pil(im.transpose(0, 1)) if im.dim() == 4 else to_pil(im[None])[0] for im in self.samples.images]
                _grid(shown, labels, 7).save(path)
                written["caption"] = str(path)
                texts["captions"], texts["references"] = captions, self.samples.references
        stem.with_suffix(".json").write_text(json.dumps(texts, indent=2))
        return written


def _grid(items: list, labels: list[str], max_label_lines: int):
    """A labelled grid of images, or of clips (lists of frames) drawn as frame strips, each frame
    64 px tall, two strips to a row."""
    if items and isinstance(items[0], list):
        strips = [frame_strip(clip) for clip in items]
        height = 64
        width = max(round(height * s.width / s.height) for s in strips)
        return image_grid(strips, labels, cell_size=height, cell_width=width, columns=2, max_label_lines=max_label_lines)
    return image_grid(items, labels, max_label_lines=max_label_lines)
