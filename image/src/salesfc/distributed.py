"""The distributed context of a training process: who am I, on which device, and how do we talk.

Under torchrun (locally, or in a TrainJob where the Kubeflow Trainer sets PET_* for torchrun) the usual RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set and a process group is made: NCCL when training on
GPUs, gloo on CPUs. Without them this is a world of one and every collective is a no-op.

Data moves between ranks as tensors only (JSON travels as bytes in a uint8 tensor): nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from salesfc import cpus

log = logging.getLogger(__name__)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- collectives (no-ops in a world of one) --------------------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_reduce_max(self, value: float) -> float:
        """The largest of the ranks' values (the slowest rank's time, say), on every rank."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def all_reduce_min(self, value: float) -> float:
        return -self.all_reduce_max(-value)

    def sum_array(self, values) -> "np.ndarray":
        """The element-wise sum over ranks of a float64 numpy array (counts stay exact up to 2**53)."""
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64)).to(self.device)
        return self.all_reduce_sum(tensor).cpu().numpy()

    def all_gather_json(self, value) -> list:
        """Every rank passes a JSON-able value; every rank returns all of them, in rank order."""
        if not self.distributed:
            return [value]
        payload = json.dumps(value).encode()
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(payload)], dtype=torch.int64, device=self.device))
        longest = max(int(size.item()) for size in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else mine[:0]
        gathered = [torch.empty(longest, dtype=torch.uint8, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine.to(self.device))
        return [json.loads(data[:int(size.item())].cpu().numpy().tobytes().decode())
                for data, size in zip(gathered, sizes)]

    def broadcast_tensor(self, tensor: torch.Tensor | None, shape=None, dtype=None) -> torch.Tensor:
        """Rank 0 passes the tensor; the others pass its shape and dtype and receive it."""
        if not self.distributed:
            return tensor.to(self.device)
        if self.is_main:
            tensor = tensor.to(self.device).contiguous()
        else:
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_json(self, value=None):
        """Rank 0 passes a JSON-able value; every rank returns it."""
        if not self.distributed:
            return value
        payload = json.dumps(value).encode() if self.is_main else b""
        size = self.broadcast_tensor(torch.tensor([len(payload)], dtype=torch.int64) if self.is_main else None,
                                     (1,), torch.int64)
        data = self.broadcast_tensor(torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                                     if self.is_main else None, (int(size.item()),), torch.uint8)
        return json.loads(bytes(data.cpu().tolist()).decode()) if not self.is_main else value

    def agree(self, flag: bool) -> bool:
        """True only if every rank says True: decisions that must not diverge (stop, resume)."""
        values = self.all_reduce_sum(torch.tensor([0.0 if flag else 1.0], device=self.device))
        return bool(values.item() == 0)


def alone(device: torch.device | None = None) -> Context:
    """A world of one, for code that reduces over ranks when it runs in a single process (every collective is a
    no-op)."""
    return Context(0, 1, 0, device or torch.device("cpu"))


def pick_device(setting: str, local_rank: int) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible to this process")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_setting: str) -> Context:
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_setting, local_rank)
    if device.type == "cpu":
        # The container's CPUs, not the host's, spread over this node's processes (salesfc.cpus).
        torch.set_num_threads(cpus.threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
        log.info("process group: %s, rank %d of %d on %s", backend, rank, world_size, device)
    return Context(rank, world_size, local_rank, device)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
