"""Data parallelism on torch.distributed, in one place: which rank this process is, the process group,
the few collectives the trainer needs, and spawning ranks from inside a Hydra job (torchrun's ranks
agree on one run directory in compose.prepare_torchrun, before Hydra starts).

With one process every function here is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..signals import handling
from ..text import plural

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # ranks on this machine, which share its cores
    launched: bool = False  # started as a rank (torchrun, spawned, a submitit task), even as the only one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Data-parallel training in a process group: more than one rank, or a launcher's single rank
        (`torchrun --nproc_per_node=1` trains with DDP on NCCL as it would with more)."""
        return self.world_size > 1 or self.launched


def from_environment() -> Ranks:
    """This process's place, from the variables torchrun (or `spawn`) sets, or from a submitit job's
    tasks (SLURM `tasks_per_node`, or submitit_local), for which it sets those variables; one process
    without either."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        _adopt_submitit_tasks()
    if "RANK" not in os.environ:
        return Ranks()
    world_size = int(os.environ["WORLD_SIZE"])
    return Ranks(
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", 0)),
        world_size,
        int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
        launched=True,
    )


def _adopt_submitit_tasks() -> None:
    """The tasks of one submitit job become the ranks of one process group, rendezvousing on the job's
    first host at a port derived from the job id (the same in every task)."""
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        port = 20000 + int(hashlib.sha256(job.job_id.encode()).hexdigest(), 16) % 20000
        os.environ.update(
            RANK=str(job.global_rank),
            LOCAL_RANK=str(job.local_rank),
            WORLD_SIZE=str(job.num_tasks),
            LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes),
            MASTER_ADDR=job.hostnames[0],
            MASTER_PORT=str(port),
        )


def backend() -> str:
    """gloo for CPU tensors, and nccl for CUDA tensors where CUDA is present."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(ranks: Ranks) -> None:
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group(backend(), rank=ranks.rank, world_size=ranks.world_size)


def data_parallel(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> Optional[DistributedDataParallel]:
    """`model` wrapped in DistributedDataParallel when this process is a rank of a process group (its
    gradients averaged over the ranks over NCCL on CUDA, gloo on a CPU; rank 0 says which), else None."""
    if not ranks.distributed:
        return None
    if ranks.is_main:
        via = "nccl" if device.type == "cuda" else "gloo"
        log.info("Data-parallel: %s, gradients averaged over %s", plural(ranks.world_size, "rank"), via)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a one-item list with one process)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(nproc: int, target: Callable[..., None], *args: Any, forward: tuple[int, ...] = ()) -> None:
    """Run `target(*args)` in `nproc` new processes, ranks 0..nproc-1 of one process group on this
    machine. Raises if any of them fails. The signals in `forward` that reach this process are passed
    on to the ranks (a SIGTERM sent to the parent alone), which stop as a trained run does."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_spawned, args=(nproc, free_port(), target, args), nprocs=nproc, join=False)

    def pass_on(signum: int, frame) -> None:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    # When one rank ends (a stopped rank exits 128 + the signal), torch ends the others and says so: noise.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    with handling(pass_on, forward):
        while not context.join():
            pass


def _spawned(local_rank: int, nproc: int, port: int, target: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    target(*args)
