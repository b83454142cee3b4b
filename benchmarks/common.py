"""Shared pieces of the training benchmarks: a synthetic batch, one timed training step, the analytic
FLOP count, the machine's measured matmul rate and peak memory, on the CPU or one CUDA device.

Dimension legend: B sequences, T padded length, D width, F MLP width, L layers, V vocabulary,
H query heads, Hkv key/value heads, P patch positions per image, E = C·p·p values per patch.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unimodal.config import ModelConfig
from unimodal.layout import Batch, SequenceLayout
from unimodal.model import UniModalModel
from unimodal.objective import Objective
from unimodal.tokenizer import Tokenizer
from unimodal.training.step import PlainEngine
from unimodal.training.step import TrainStep as SharedTrainStep

# Words of the synthetic shapes world (data/synthetic.py); captions are drawn from them at random so
# the sequences have the lengths real training sees without depending on the data package.
WORDS = ("a small large red green blue yellow magenta cyan circle square triangle at the top bottom left "
         "right center in on and").split()
QUESTIONS = ("how many shapes are there?", "what colour is the circle?", "what shape is on the left?",
             "is there a red square?")
ANSWERS = ("2", "red", "circle", "yes", "no", "3")
TASKS = ("generation", "caption", "vqa")  # the mix cycles through these, one sequence each

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def benchmark_tokenizer() -> Tokenizer:
    """A small sentencepiece model over the shapes-world words (trained in memory, < 1 s)."""
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    corpus += [SequenceLayout.question_text(q) + " " + a for q in QUESTIONS for a in ANSWERS]
    return Tokenizer.train(corpus, vocab_size=256)


def world_tokenizer(vocab_size: int, num_samples: int = 300) -> Tokenizer:
    """A tokenizer trained on the captions and QA text of the synthetic world's first scenes."""
    from unimodal.data.synthetic import World

    world = World()
    texts = []
    for i in range(num_samples):
        sample = world.sample(i)
        texts += [sample.caption] + [f"question: {q['question']} answer: {q['answer']}" for q in sample.qa]
    return Tokenizer.train(texts, vocab_size=vocab_size)


def caption_ids(tokenizer: Tokenizer, rng: random.Random, num_tokens: int) -> list[int]:
    """Exactly `num_tokens` non-special ids, taken from the tokenization of random shape words."""
    ids: list[int] = []
    while len(ids) < num_tokens:
        ids += tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(num_tokens)))
    return ids[:num_tokens]


def synthetic_batch(config: ModelConfig, tokenizer: Tokenizer, batch_size: int, caption_tokens: int = 12,
                    seed: int = 0, vqa_turns: int = 1, max_tokens_per_row: int = 0, length_multiple: int = 1,
                    row_multiple: int = 1) -> Batch:
    """A batch mixing generation / caption / VQA sequences (of `vqa_turns` QA pairs) as the layout
    builds them: one example per row, or packed into rows of `max_tokens_per_row` as
    `data.max_tokens_per_row` does (`SequenceLayout.pack`).

    Images are random latents of the model's latent shape (the pixel codec's latents are the pixels),
    so the codec is not part of the step, as in training on pre-encoded latents.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    layout = SequenceLayout.for_model(tokenizer, config, latents=True)
    shape = (config.latent_channels, config.latent_size, config.latent_size)
    examples = []
    for i in range(batch_size):
        image = torch.rand(shape, generator=generator) * 2 - 1
        task = TASKS[i % len(TASKS)]
        if task == "generation":
            examples.append(layout.generation(caption_ids(tokenizer, rng, caption_tokens), image))
        elif task == "caption":
            examples.append(layout.caption(image, caption_ids(tokenizer, rng, caption_tokens)))
        else:
            pairs = [(rng.choice(QUESTIONS), rng.choice(ANSWERS)) for _ in range(vqa_turns)]
            examples.append(layout.vqa_turns(image, pairs))
    if max_tokens_per_row:
        return layout.pack(examples, max_tokens_per_row, length_multiple, row_multiple)
    return layout.collate(examples, length_multiple)


# ---------------------------------------------------------------------------------------------------
# The analytic FLOP model
# ---------------------------------------------------------------------------------------------------
@dataclass
class FlopCount:
    dense: int  # 6 · N_matmul · B·T: every Linear of the backbone, the LM head over all positions
    attention: int  # 3 · L · 2 · 2·B·T²·D: QKᵀ and A·V, forward + backward, over the full T×T square
    adapters: int  # 6 · (patch embed + denoise head) matmul parameters · tokens they see

    @property
    def total(self) -> int:
        return self.dense + self.attention + self.adapters


def matmul_params(config: ModelConfig) -> int:
    """Weights of the per-token matmuls of the backbone and LM head (embeddings/norms excluded)."""
    d, f, num_layers = config.hidden_size, config.ffn_size, config.num_layers
    head_dim = d // config.num_heads
    kv = (config.num_kv_heads or config.num_heads) * head_dim
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o projections; gate, up, down (SwiGLU)
    return num_layers * per_layer + d * config.vocab_size


def step_flops(config: ModelConfig, batch_size: int, seq_len: int, num_images: int,
               num_patches: int | None = None) -> FlopCount:
    """FLOPs of one training step (forward + backward; the optimizer's O(N) work is not counted).

    A matmul of an (M, K) by a (K, N) matrix costs 2·M·K·N; the backward pass costs twice the forward
    (gradients of the input and of the weight), hence the factors 6 = 2 · 3 and 3 below:

        dense     = 6 · N_matmul · B · T
                    N_matmul = L·(2·D² + 2·D·Hkv·Dh + 3·D·F) + D·V     (q,o + k,v + SwiGLU; LM head)
        attention = 3 · L · 2 · (2 · B · T² · D)                     (QKᵀ and A·V, each 2·B·T²·D)
        adapters  = 6 · S · (E·D + D·E)  +  6 · N · (2 · 256·D + D·D + D·2D)
                    (patch projection and denoise projection per patch, S patches in all (default
                    N · P); time MLP and adaLN per image)

    All positions count, padding included, and attention counts the full T×T square although the
    mask would let a causal kernel skip about half of it: this is the work the kernels are asked to do.
    """
    d = config.hidden_size
    tokens = batch_size * seq_len
    dense = 6 * matmul_params(config) * tokens
    attention = 3 * config.num_layers * 2 * (2 * batch_size * seq_len**2 * d)
    adapter_patch = 2 * config.patch_dim * d  # PatchEmbed.proj (linear adapter) + DenoiseHead.proj
    if config.patch_adapter == "mlp":
        adapter_patch += d * d
    adapter_image = 256 * d + d * d + d * 2 * d  # TimestepEmbedding (2 Linears) + adaLN modulation
    if num_patches is None:
        num_patches = num_images * config.num_image_tokens
    adapters = 6 * (num_patches * adapter_patch + num_images * adapter_image)
    return FlopCount(dense, attention, adapters)


# ---------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------
# Side of the reference matmul per device type: 2048² keeps a CPU probe to a few tens of ms; a GPU needs
# 8192² (~1.1 TFLOP) before launch overhead stops hiding its peak rate.
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, matched on substrings of
# `torch.cuda.get_device_name()`; the first match wins, so specific variants come before the family.
# The NVL parts (H100 NVL, H200 NVL) run at lower clocks and are left out: unknown gives None.
PEAK_BF16_FLOPS = (
    (("H100", "PCIE"), 756e12),  # H100 PCIe ("NVIDIA H100 PCIe")
    (("H100",), 989e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (("H200",), 989e12),  # H200 SXM ("NVIDIA H200"): same tensor cores as H100 SXM, more/faster HBM
    (("A100",), 312e12),  # A100 SXM4 and PCIe
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a known GPU by its name (see `PEAK_BF16_FLOPS`), else None."""
    name = device_name.upper()
    if "NVL" in name:
        return None
    for keys, peak in PEAK_BF16_FLOPS:
        if all(key in name for key in keys):
            return peak
    return None


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device; the CPU model (from /proc/cpuinfo where readable) otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A callable that waits for the device's queued work: `torch.cuda.synchronize` on CUDA (kernels
    run asynchronously, so a timer read without it measures the launch), a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------
class MatmulProbe:
    """The machine's matmul rate: FLOP/s of a (size × size) @ (size × size) `torch.mm` in `dtype` on
    `device` (on the CPU with the current thread count). Each call times `reps` products and keeps the
    fastest; calling it between training steps (see `time_steps`) samples the machine under the same
    load as the steps, so the ratio of the two stays meaningful on a shared, noisy machine. `size`
    None takes the device's default (`MATMUL_SIZE`)."""

    def __init__(self, dtype: torch.dtype, size: int | None = None, reps: int = 3,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        size = size or MATMUL_SIZE[self.device.type]
        self.size, self.reps = size, reps
        self.sync = device_sync(self.device)
        self.a = torch.randn(size, size, device=self.device).to(dtype)
        self.b = torch.randn(size, size, device=self.device).to(dtype)
        self.out = torch.empty(size, size, dtype=dtype, device=self.device)
        self.rates: list[float] = []
        torch.mm(self.a, self.b, out=self.out)  # first call: kernel selection, page faults, cuBLAS set-up
        self.sync()

    @property
    def nbytes(self) -> int:
        """Memory the probe keeps on its device (subtracted from the step's peak RSS or GPU memory)."""
        return sum(t.numel() * t.element_size() for t in (self.a, self.b, self.out))

    def __call__(self) -> float:
        best = float("inf")
        for _ in range(self.reps):
            self.sync()
            start = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            self.sync()
            best = min(best, time.perf_counter() - start)
        self.rates.append(2 * self.size**3 / best)
        return self.rates[-1]


def measure_matmul_flops(dtype: torch.dtype, size: int | None = None, samples: int = 5,
                         device: torch.device | str = "cpu") -> float:
    """Median over `samples` probes of the (size × size) matmul rate (see `MatmulProbe`)."""
    probe = MatmulProbe(dtype, size, device=device)
    for _ in range(samples):
        probe()
    return statistics.median(probe.rates)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux `clear_refs`); False if unsupported."""
    gc.collect()
    _malloc_trim()  # give freed heap back first, or the earlier peak's pages stay resident
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """Current resident memory of this process in MiB (0 where /proc is unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since start, or since `reset_peak_rss`)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def make_optimizer(model: torch.nn.Module, lr: float = 1e-4) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with the fused kernel where this torch has one for the parameters' device (CPU or CUDA),
    else the foreach (multi-tensor) path. Fused measured ~8% less CPU time per tiny step than foreach
    (torch 2.13, batch 32, one thread). Build it after the model is on its device."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, foreach=True), "foreach"


class TrainStep:
    """One training step exactly as the training loop runs it (`unimodal.training.step.TrainStep`:
    noise, forward, losses, backward), with a torch AdamW in place of DeepSpeed's.

    The batch (collated or packed) is made once: building it is the data loader's work. Model and
    batch are already on the device the step runs on (the batch's); its items are latents, so the
    codec is not part of the step. `dtype` bfloat16 runs forward under `torch.autocast` over fp32
    weights. The noise is drawn from a CPU generator on every device, so a seed gives the same noise
    on the CPU and a GPU.
    """

    def __init__(self, model: UniModalModel, batch: Batch, dtype: torch.dtype = torch.float32,
                 optimizer: str = "auto", compile: str | None = None, seed: int = 0):
        self.model = model.train()
        self.batch = batch
        if optimizer == "auto":
            self.optimizer, self.optimizer_kind = make_optimizer(model)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            kwargs = {"fused": True} if optimizer == "fused" else {"foreach": optimizer == "foreach"}
            self.optimizer, self.optimizer_kind = torch.optim.AdamW(params, lr=1e-4, **kwargs), optimizer
        # compile: None = eager, "layers" = the training loop's deepspeed.compile (regional), "model" = whole model.
        if compile == "layers":
            model.compile_layers()
        forward: Callable = torch.compile(model) if compile == "model" else model
        engine = PlainEngine(model, self.optimizer, dtype, forward)
        self.step = SharedTrainStep(engine, Objective(model.config), codec=None,
                                    generator=torch.Generator().manual_seed(seed), latents_cached=True)

    def __call__(self) -> float:
        losses, _ = self.step(self.batch)
        return float(losses.loss.detach())


def time_steps(step: Callable[[], object], num_steps: int, warmup: int,
               between: Callable[[], object] | None = None,
               sync: Callable[[], object] | None = None) -> list[float]:
    """Seconds of each of `num_steps` calls after `warmup` untimed ones; `between` runs (untimed) after
    each timed step, e.g. a `MatmulProbe`. `sync` (e.g. `device_sync("cuda")`) runs before the timer
    starts and before it stops, so queued GPU work is counted in the step that queued it."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(num_steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
        if between is not None:
            between()
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
