"""Runtime plumbing shared by train, generate and bench: device, precision, DDP, environment."""

from __future__ import annotations

import contextlib
import os
import platform
import sys

import torch

# precision name -> autocast dtype (None: no autocast)
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], not {name!r}")
    return torch.device(name)


def autocast_context(device_type: str, precision: str):
    """One autocast context for every script (nanoGPT style); fp32 is a no-op context.

    fp16 on CPU is not supported by PyTorch autocast, so it raises a clear error.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {tuple(DTYPES)}, not {precision!r}")
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device_type == "cpu" and dtype is torch.float16:
        raise ValueError("precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
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


def is_main_process() -> bool:
    return ddp_env()[0] == 0


def print_env() -> None:
    """Print versions and the compute device (used at the top of every notebook)."""
    import hagan

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"hagan-kit {hagan.__version__} | python {sys.version.split()[0]} | torch "
          f"{torch.__version__} | {platform.machine()} | CPU threads {torch.get_num_threads()} "
          f"| GPU {gpu}")
