"""torch.distributed plumbing: one code path for a single process and for torchrun (DDP).

Launched by torchrun, the environment carries RANK / WORLD_SIZE / LOCAL_RANK; otherwise the
helpers below describe a world of one and every collective is a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from s4al.config import DEVICE_PATTERN
from s4al.errors import S4alError

# How long a rank waits in a collective: the others wait there while rank 0 alone builds the ledger
# of a large dataset or writes a cycle's answers, which can outlast NCCL's default of 10 minutes.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent ends


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), before it joins the process group."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """How many processes torchrun started in all (1 without torchrun), before they join the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def restarted() -> bool:
    """Whether torchrun started this process again after its job failed (torchrun --max-restarts):
    the same command line then goes on with what the failed attempt began."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def check_device_name(device: str) -> None:
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise S4alError(f"device '{device}': not one of auto, cpu, cuda, cuda:N")


def setup_device(device: str = "auto") -> torch.device:
    """Joins the process group when launched by torchrun (nccl on GPUs, gloo on CPU) and returns
    this rank's device: under torchrun its local rank's GPU; without torchrun, `device` resolved,
    with the GPU it names (cuda:N) or the first."""
    check_device_name(device)
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if "LOCAL_RANK" in os.environ:
        _end_with_launcher()
    if use_cuda:
        named = torch.device("cuda" if device == "auto" else device).index
        index = named if ranks == 1 and named is not None else int(os.environ.get("LOCAL_RANK", "0"))
        _check_gpu(device, index)
    if ranks > 1 and not is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if use_cuda:
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu" if device == "auto" else device)


def _end_with_launcher() -> None:
    """A rank ends when the torchrun that started it is killed (SIGKILL gives it no time to stop its
    ranks): left running, they would hold the run folder and the GPUs that a resume needs. Linux
    only (prctl); elsewhere a rank outlives a killed launcher."""
    launcher = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # killed before the request took hold
        os.kill(os.getpid(), signal.SIGTERM)


def _check_gpu(device: str, index: int) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise S4alError(f"device '{device}': this machine has no CUDA GPU that torch can use; use cpu or auto")
    if index >= count:
        raise S4alError(f"device '{device}': GPU {index} asked for, this machine has {count} (cuda:0 to cuda:{count - 1})")


def leave() -> None:
    """Leaves torchrun's process group at a command's end, once no collective is left: a rank that
    exits without it may leave a peer's last collective unfinished (NCCL warns of it)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over the ranks, as a new tensor on `values`' device (`values` is kept)."""
    values = values.clone()
    if is_initialized():
        dist.all_reduce(values)
    return values


def all_mean(values: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        values = all_sum(values)
        values /= world_size()
    return values


def all_min(value: int, device: torch.device) -> int:
    """The least of the ranks' `value`s (a tensor on `device` carries it: NCCL sends only GPU tensors)."""
    if not is_initialized():
        return value
    least = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(least, op=dist.ReduceOp.MIN)
    return int(least.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Makes rank 0's buffers (BatchNorm statistics) everyone's, in one broadcast per dtype (one a
    buffer would be hundreds of small transfers every step)."""
    if not is_initialized():
        return
    buffers = list(module.buffers())
    for dtype in dict.fromkeys(b.dtype for b in buffers):  # first-seen order: the same on every rank
        group = [b for b in buffers if b.dtype == dtype]
        flat = torch.cat([b.reshape(-1) for b in group])
        dist.broadcast(flat, 0)
        for buffer, received in zip(group, flat.split([b.numel() for b in group])):
            buffer.copy_(received.view_as(buffer))


def from_main(obj):
    """Rank 0's `obj` (picklable), on every rank; the others' `obj` is not used."""
    if not is_initialized():
        return obj
    out = [obj]
    dist.broadcast_object_list(out, src=0)
    return out[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block (e.g. creates files) before the other ranks enter it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
