"""Runtime plumbing shared by train, generate and bench: device, precision, DDP, environment."""

from __future__ import annotations

import contextlib
import os
import platform
import sys

import torch

from .config import PRECISIONS, check_device, check_precision
from .errors import ConfigError, explain

# precision name (config.PRECISIONS) -> autocast dtype (None: no autocast)
DTYPES: dict[str, torch.dtype | None] = dict(
    zip(PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as named.

    Raises:
        ConfigError: an unknown name, or a GPU asked for that is not visible.
    """
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(explain("device", f"a visible CUDA GPU for {name!r}",
                                      f"{count} GPU(s)", "Use device=auto or device=cpu."))
    return device


def autocast_context(device_type: str, precision: str):
    """One autocast context for every script (nanoGPT style); fp32 is a no-op context.

    fp16 on CPU is not supported by PyTorch autocast, so it raises a clear error.
    """
    dtype = DTYPES[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    if device_type == "cpu" and dtype is torch.float16:
        raise ConfigError(explain("precision=fp16", "a CUDA GPU", "the CPU",
                                  "On the CPU use bf16 or fp32."))
    return torch.autocast(device_type=device_type, dtype=dtype)


# --- distributed (torchrun) -------------------------------------------------------------------
def ddp_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) otherwise."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(
        os.environ["WORLD_SIZE"])


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Start the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    rank, local_rank, world = ddp_env()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return rank, world


def shutdown_distributed() -> None:
    """Wait for every rank, then close the process group (torchrun runs only).

    Without this, a gloo rank can abort at interpreter exit ("terminate called without an
    active exception", SIGABRT) after training finished, and torchrun reports a failure.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def print_env() -> None:
    """Print versions and the compute device (used at the top of every notebook)."""
    import hagan

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"hagan-kit {hagan.__version__} | python {sys.version.split()[0]} | torch "
          f"{torch.__version__} | {platform.machine()} | CPU threads {torch.get_num_threads()} "
          f"| GPU {gpu}")
