"""Parameter-free noising processes: they noise images, give the training target, and make the
diffusers scheduler that drives sampling. The network only predicts.

Time convention (one, everywhere in unimodal): t ∈ [0, 1], t = 0 is the clean image, t = 1 pure
noise. The network receives `1000 · t` through its timestep embedding.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from .config import ModelConfig

NUM_TRAIN_TIMESTEPS = 1000


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift: t' = s·t / (1 + (s − 1)·t); s > 1 spends more time at high noise.
    It is the same map diffusers' flow schedulers apply with `shift=`."""
    return shift * t / (1 + (shift - 1) * t)


SAMPLE_MIN_TIME = 0.05  # x-prediction: v̂ = (x_t − x̂0) / max(t, this), JiT's clip of the divisor


def _per_item(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class FlowMatching:
    """Rectified flow: x_t = (1 − t)·x0 + t·ε, sampled along the velocity v = ε − x0.

    `prediction="velocity"`: the network predicts v. `"sample"`: it predicts the clean x0, turned
    into v̂ = (x_t − x̂0) / max(t, SAMPLE_MIN_TIME) for the sampler, and trained with the loss on v
    (x-prediction with a v-loss: JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models
    Denoise", §4). A clean image lies near a low-dimensional manifold and noise does not, so
    x-prediction still denoises when a patch holds more values than the model is wide (a clip's
    8-frame patches: 384 values into a width of 192), where v-prediction leaves noise behind.
    """

    schedulers = ("euler", "dpmsolver++")

    def __init__(self, time_sampling: str = "logit_normal", time_shift: float = 1.0, prediction: str = "velocity",
                 clip_time_shift: float | None = None):
        self.time_sampling = time_sampling
        self.time_shift = time_shift
        self.clip_time_shift = time_shift if clip_time_shift is None else clip_time_shift
        self.prediction = prediction

    def shift_for(self, is_clip: bool) -> float:
        """The time shift of an image (`time_shift`) or of a clip (`clip_time_shift`)."""
        return self.clip_time_shift if is_clip else self.time_shift

    def sample_time(self, num: int, generator: torch.Generator | None = None, device="cpu",
                    shift: float | torch.Tensor | None = None) -> torch.Tensor:
        """(num,) training times in (0, 1): logit-normal (SD3) or uniform, then shifted by `shift`
        (a number, or (num,) one per item; None = `time_shift`)."""
        if self.time_sampling == "logit_normal":
            # Same density as diffusers' compute_density_for_timestep_sampling("logit_normal", 0, 1).
            t = torch.sigmoid(torch.randn(num, generator=generator, device=device))
        else:
            t = torch.rand(num, generator=generator, device=device)
        return shift_time(t, self.time_shift if shift is None else shift)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return (1 - t) * x0 + t * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0 if self.prediction == "sample" else noise - x0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) weight of each item's squared error: 1, or for x-prediction 1 / max(t, SAMPLE_MIN_TIME)²,
        which makes the error on x̂0 the error on the velocity v̂ = (x_t − x̂0) / max(t, ·)."""
        if self.prediction == "sample":
            return t.clamp(min=SAMPLE_MIN_TIME).pow(-2)
        return torch.ones_like(t)

    def scheduler_output(self, pred: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the scheduler steps with (the velocity) from the network's prediction at `sample` = x_t,
        times `t` (R,), one per item."""
        if self.prediction == "sample":
            return (sample - pred) / _per_item(t.clamp(min=SAMPLE_MIN_TIME), sample)
        return pred

    def make_scheduler(self, name: str = "euler", shift: float | None = None):
        """A diffusers scheduler whose `step(model_output, timestep, sample)` takes our velocity, its
        sigmas shifted by `shift` (None = `time_shift`; `shift_for(is_clip)` for a clip)."""
        shift = self.time_shift if shift is None else shift
        if name == "euler":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
        if name == "dpmsolver++":
            return DPMSolverMultistepScheduler(
                num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
                use_flow_sigmas=True, flow_shift=shift, algorithm_type="dpmsolver++")
        raise ValueError(f"unknown scheduler {name!r} for the flow objective; choose one of {self.schedulers}")

    def model_time(self, scheduler, timestep: torch.Tensor) -> torch.Tensor:
        """Our t ∈ [0, 1] for a scheduler timestep (flow schedulers use timestep = 1000·σ)."""
        return timestep.float() / NUM_TRAIN_TIMESTEPS


class DDPMProcess:
    """DDPM with a cosine schedule; the network predicts the noise ε.

    t ∈ [0, 1] maps to the discrete step k = round(t · 999); x_k = √ᾱ_k·x0 + √(1 − ᾱ_k)·ε.
    """

    schedulers = ("ddpm", "ddim", "dpmsolver++")

    def __init__(self, time_shift: float = 1.0):
        self.time_shift = time_shift  # kept for the config's sake: DDPM's times are not shifted
        self._train_scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                                              beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")

    def shift_for(self, is_clip: bool) -> None:
        return None  # DDPM's steps are not shifted

    def sample_time(self, num: int, generator: torch.Generator | None = None, device="cpu",
                    shift: None = None) -> torch.Tensor:
        return torch.randint(0, NUM_TRAIN_TIMESTEPS, (num,), generator=generator, device=device).float() / (
            NUM_TRAIN_TIMESTEPS - 1)

    def _steps(self, t: torch.Tensor) -> torch.Tensor:
        return (t * (NUM_TRAIN_TIMESTEPS - 1)).round().long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noised = self._train_scheduler.add_noise(x0, noise, self._steps(t).cpu())
        # t = 0 means "clean" in our convention (a conditioning image), not DDPM step 0's tiny noise.
        clean = (t <= 0).view(-1, *([1] * (x0.dim() - 1)))
        return torch.where(clean, x0, noised)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def scheduler_output(self, pred: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pred

    def make_scheduler(self, name: str = "ddim", shift: None = None):
        common = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                      prediction_type="epsilon")
        if name == "ddpm":
            return DDPMScheduler(**common)
        if name == "ddim":
            return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
        if name == "dpmsolver++":
            return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++")
        raise ValueError(f"unknown scheduler {name!r} for the ddpm objective; choose one of {self.schedulers}")

    def model_time(self, scheduler, timestep: torch.Tensor) -> torch.Tensor:
        return timestep.float() / (NUM_TRAIN_TIMESTEPS - 1)


def make_process(config: ModelConfig) -> FlowMatching | DDPMProcess:
    if config.objective == "flow":
        return FlowMatching(config.time_sampling, config.time_shift, config.prediction, config.clip_time_shift)
    return DDPMProcess(config.time_shift)


def default_scheduler_name(config: ModelConfig) -> str:
    return "euler" if config.objective == "flow" else "ddim"


__all__ = ["FlowMatching", "DDPMProcess", "make_process", "default_scheduler_name", "shift_time"]
