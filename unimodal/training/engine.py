"""The one file that talks to DeepSpeed.

Everything DeepSpeed-specific lives here: filling in the distributed environment, the DeepSpeed
config derived from the run config (so batch sizes, precision and ZeRO stage are set in one place,
as in gpt-neox), the engine's forward/backward/step, ZeRO-3 parameter gathering and checkpoint
files. The loop calls `Engine` methods and never asks which ZeRO stage is running.

Launchers: one CPU process (no launcher: we fill RANK/WORLD_SIZE/... ourselves), `torchrun`, the
`deepspeed` launcher (hostfile) and SLURM `srun` (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID are
mapped onto the torch variables) all end up in `init_distributed`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

# Without a GPU, tell DeepSpeed so: it then skips its accelerator probe and the warning that every
# CPU run would print first, even for --help.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed
from deepspeed.accelerator import get_accelerator
from torch import nn

from .config import RunConfig, deep_merge
from .schedule import WarmupCosine

log = logging.getLogger(__name__)

# DeepSpeed prints its config and timers every `steps_per_print` steps; our own logging does that.
_NEVER = 10**12


# ------------------------------------------------------------------------------ distributed set-up
@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_environment() -> None:
    """Fill the variables `torch.distributed` reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    - torchrun / the deepspeed launcher set them already: nothing to do.
    - SLURM `srun` sets SLURM_PROCID/NTASKS/LOCALID: mapped; MASTER_ADDR must come from the job
      script (the first host of SLURM_JOB_NODELIST, see configs/README.md).
    - No launcher: one process, rank 0 of 1, on a free local port (DeepSpeed would otherwise try
      MPI discovery through mpi4py).
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        if int(env["WORLD_SIZE"]) > 1 and "MASTER_ADDR" not in env:
            raise RuntimeError("running under SLURM with several tasks but MASTER_ADDR is unset: export "
                               "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) in the job script")
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(_free_port()) if env["WORLD_SIZE"] == "1" else "29500"


def _skip_cpu_shm_comm_build() -> None:
    """On CPU, `init_distributed` JIT-compiles a shared-memory comm op (30-60 s on a fresh machine).
    The gloo backend works without it (losses are identical), so we stub the builder out. The module
    must be fetched with importlib: `import deepspeed.comm.torch` binds the torch package instead."""
    module = importlib.import_module("deepspeed.comm.torch")
    module.build_shm_op = lambda: None


def _limit_cpu_threads() -> None:
    """torchrun sets OMP_NUM_THREADS=1 per rank; the deepspeed launcher does not, and several ranks
    each using every core ran 16x slower in our measurement. Split the cores between local ranks."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    if local_ranks > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))


def init_distributed(timeout_s: float = 600) -> DistInfo:
    """Initialise the process group once per process (later calls reuse it) and pick the device.

    `timeout_s` bounds every collective (DeepSpeed hands it to `torch.distributed.init_process_group`).
    gloo then raises a RuntimeError in the rank that waited (`collective_failure` recognises it);
    NCCL's watchdog tears the process down itself (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default),
    logging the rank and the collective that timed out.
    """
    prepare_environment()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines repeat our own logs
    on_gpu = get_accelerator().device_name() != "cpu"
    if not on_gpu:
        _skip_cpu_shm_comm_build()
        _limit_cpu_threads()
    deepspeed.init_distributed(timeout=timedelta(seconds=timeout_s), verbose=False)
    local_rank = int(os.environ["LOCAL_RANK"])
    if on_gpu:
        get_accelerator().set_device(local_rank)
        device = torch.device(get_accelerator().device_name(local_rank))
    else:
        device = torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def collective_failure(error: BaseException, timeout_s: float) -> str | None:
    """What went wrong, when `error` comes from the communication backend; None for any other error.

    gloo raises a plain RuntimeError from its C++ source ("[.../gloo/transport/tcp/unbound_buffer.cc:78]
    Timed out waiting 5000ms for recv operation to complete", "... Connection reset by peer");
    NCCL errors that reach Python are `torch.distributed.DistBackendError`.
    """
    text = str(error)
    if not (isinstance(error, torch.distributed.DistBackendError) or "gloo" in text or "NCCL" in text):
        return None
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"a collective waited more than {timeout_s:g} s"
    return "a collective failed"


def shutdown_distributed() -> None:
    """Destroy the process group (multi-process runs; single in-process runs keep it for reuse)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------ the DeepSpeed config
def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on accelerators, "fp32" on CPU (DeepSpeed refuses fp16 on CPU; we never use it)."""
    if precision == "auto":
        return "fp32" if device.type == "cpu" else "bf16"
    return precision


def deepspeed_config(config: RunConfig, world_size: int, device: torch.device) -> dict[str, Any]:
    """The DeepSpeed config for a run: every number in it comes from the run config."""
    engine, optim = config.deepspeed, config.optimizer
    precision = resolve_precision(engine.precision, device)
    zero: dict[str, Any] = {"stage": engine.zero_stage}
    if engine.zero_stage == 3:
        # Lets engine.save_16bit_model / GatheredParameters produce full weights for export.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": engine.gradient_accumulation_steps,
        "train_batch_size": config.data.batch_size * engine.gradient_accumulation_steps * world_size,
        "gradient_clipping": engine.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Fail"},
    }
    if optim.impl == "deepspeed":
        # `torch_adam` must sit INSIDE params: next to "type" it is ignored and FusedAdam gets
        # JIT-compiled (60-90 s). adam_w_mode=True is decoupled weight decay (AdamW).
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay,
            "torch_adam": True, "adam_w_mode": True}}
    else:
        ds["zero_allow_untested_optimizer"] = True  # a client torch.optim.AdamW under ZeRO 1-3
    return deep_merge(ds, engine.overrides)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norm scales and embedding tables are exempt (GPT-2/nanoGPT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.dim() < 2 or "embed_tokens" in name or name.endswith(".bias")
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # ZeRO partitions each group: none empty


# ------------------------------------------------------------------------------------- the engine
class Engine:
    """A DeepSpeed engine around a `UniModalModel`, with the few verbs the loop needs.

    Args:
        model: the full (unpartitioned) model, built identically on every rank.
        config: the run config; the DeepSpeed config is derived from it.
        dist: from `init_distributed`.
    """

    def __init__(self, model: nn.Module, config: RunConfig, dist: DistInfo):
        self.dist = dist
        self.precision = resolve_precision(config.deepspeed.precision, dist.device)
        if dist.device.type == "cpu" and self.precision == "bf16" and config.deepspeed.zero_stage == 0:
            log.warning("bf16 weights at ZeRO 0 wrap an unfused optimizer and train slightly differently from "
                        "ZeRO 1-3; bf16_autocast keeps fp32 weights")
        self.ds_config = deepspeed_config(config, dist.world_size, dist.device)
        schedule = WarmupCosine(config.schedule.total_steps, config.schedule.warmup_steps,
                                config.schedule.min_lr_ratio)
        if config.deepspeed.compile == "layers":
            model.compile_layers()  # in place, before DeepSpeed wraps it: names and hooks stay as they were
        groups = parameter_groups(model, config.optimizer.weight_decay)
        optimizer = None
        if config.optimizer.impl == "torch":
            fused = config.optimizer.fused if config.optimizer.fused is not None else dist.device.type != "cpu"
            optimizer = torch.optim.AdamW(groups, lr=config.optimizer.lr, betas=tuple(config.optimizer.betas),
                                          eps=config.optimizer.eps, fused=fused, foreach=None if fused else True)
        # A plain function, not the WarmupCosine object: LambdaLR checkpoints the attributes of
        # callable objects, and a resumed run should follow the schedule of its current config
        # (e.g. a longer schedule.total_steps); the step count itself is restored.
        self.module_engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step)),
            dist_init_required=False)
        self.zero_stage = config.deepspeed.zero_stage

    # ---- what the loop uses ----
    @property
    def module(self) -> nn.Module:
        """The wrapped model (under ZeRO-3 its parameters are partitioned: gather before reading)."""
        return self.module_engine.module

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (DeepSpeed's counter, restored from checkpoints)."""
        return int(self.module_engine.global_steps)

    @property
    def lr(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def at_step_start(self) -> bool:
        """True before the first micro-batch of an optimizer step."""
        engine = self.module_engine
        return engine.micro_steps % engine.gradient_accumulation_steps() == 0

    def is_accumulation_boundary(self) -> bool:
        """True when the next `step()` call applies the optimizer."""
        return bool(self.module_engine.is_gradient_accumulation_boundary())

    def forward(self, *args, **kwargs):
        context = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16_autocast"
                   else contextlib.nullcontext())
        with context:
            return self.module_engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.module_engine.backward(loss)

    def step(self) -> None:
        """Call after every backward; DeepSpeed steps the optimizer and schedule at accumulation boundaries."""
        self.module_engine.step()

    def grad_norm(self) -> float | None:
        norm = self.module_engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def train(self, mode: bool = True) -> None:
        self.module_engine.train(mode)

    # ---- collectives ----
    def all_reduce(self, values: list[float], op: str = "max") -> list[float]:
        """Reduce a few floats over ranks ("max" or "sum"); a no-op for one process."""
        if self.dist.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        reduce_op = {"max": torch.distributed.ReduceOp.MAX, "sum": torch.distributed.ReduceOp.SUM}[op]
        torch.distributed.all_reduce(tensor, op=reduce_op)
        return tensor.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's (small, picklable) `obj`, in rank order, on every rank."""
        if self.dist.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    # ---- whole weights (ZeRO-3 aware) ----
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    @contextlib.contextmanager
    def gathered(self, writable: bool = False) -> Iterator[None]:
        """Full parameters readable (and, with `writable`, assignable: rank 0's values are kept) inside
        the block. Under ZeRO 0-2 parameters are always whole, so this does nothing. Every rank must
        enter it (it is a collective under ZeRO-3)."""
        if self.zero_stage != 3:
            yield
            return
        params = [p for _, p in self.named_parameters()]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if writable else None):
            yield

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's whole state dict (fp32, CPU) on rank 0, None elsewhere. Every rank must call
        (a collective under ZeRO-3)."""
        with self.gathered():
            if not self.dist.is_main:
                return None
            return {name: value.detach().float().cpu().clone() for name, value in self.module.state_dict().items()}

    # ---- checkpoint files ----
    def save_checkpoint(self, save_dir: str | Path, tag: str) -> None:
        """DeepSpeed's part of a checkpoint (module, optimizer, scheduler) into save_dir/tag.
        `latest` is ours to write (atomically), so DeepSpeed's own is disabled."""
        self.module_engine.save_checkpoint(str(save_dir), tag=tag, save_latest=False)

    def load_checkpoint(self, save_dir: str | Path, tag: str) -> None:
        path, _ = self.module_engine.load_checkpoint(str(save_dir), tag=tag, load_optimizer_states=True,
                                                     load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag!r} in {save_dir}")


def consolidated_checkpoint_weights(save_dir: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """The training (non-EMA) weights of one checkpoint as a single fp32 state dict, any ZeRO stage.

    Stage 0 keeps them under ["module"] of mp_rank_00_model_states.pt (our own file: loaded with
    weights_only=True); stages 1-3 go through DeepSpeed's zero_to_fp32 helpers.
    """
    folder = Path(save_dir) / tag
    plain = folder / "mp_rank_00_model_states.pt"
    if plain.is_file() and not list(folder.glob("*optim_states.pt")):
        state = torch.load(plain, map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in state["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(save_dir), tag=tag)
