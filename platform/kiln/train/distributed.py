"""The trainer under torch.distributed: which rank this process is, and the few collectives
the loop needs.

A launcher (`kiln train --nproc`, `torchrun`, a Kubernetes Job or Slurm script running
torchrun) sets the standard environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT. `World.from_environment()` reads it; without WORLD_SIZE (or with 1)
the trainer is the single process it always was and none of this runs.

What the loop does with a world of N (`kiln.train.trainer`):

- every rank draws the same global permutation from the seed and takes its stride
  (`shard`) of every global batch, so `--batch-size` and the learning-rate schedule mean what
  they mean in one process;
- the local loss is weighted by `loss_weight` before DDP averages gradients, so the averaged
  gradient is the global batch's mean gradient even when the ranks' shares differ by a row;
- sums (loss, metric, rows seen) are all-reduced; validation and test rows are split in
  contiguous shards, predicted, and gathered (`gather_rows`), so every rank evaluates the
  same full outputs and rank 0 decides early stopping for all (`agree`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from kiln.errors import FailedPrecondition, InvalidArgument

COLLECTIVE_TIMEOUT = timedelta(minutes=5)
"""How long a collective waits for a rank that is alive but silent before failing the run.
A rank that dies is noticed sooner: the launcher's agent stops the others."""
FAULT_HOOK = "_KILN_TRAIN_TEST_KILL"
"""Tests only (tests/integration/test_train_distributed.py): "RANK:EPOCH" makes that rank
kill itself with SIGKILL as that epoch starts, to show a dead rank fails the run. Not an option
of any command on purpose."""


@dataclass(frozen=True)
class World:
    """This process's place in the training job; the default is one process, no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> World:
        """The world the launcher's environment describes (one process without WORLD_SIZE).

        Raises InvalidArgument when the variables are partial or not numbers.
        """
        env = os.environ if env is None else env
        if int(env.get("WORLD_SIZE", "1") or "1") <= 1:
            return cls()
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise InvalidArgument(
                f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                "distributed training with `kiln train --nproc N` or `torchrun -m kiln.train`"
            )
        try:
            rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", "0"))
            local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
        except ValueError as exc:
            raise InvalidArgument(f"a torch.distributed variable is not a number: {exc}") from exc
        # The trainer trains on the CPU, where gloo is the backend; NCCL needs the model and
        # batches on CUDA devices, which the trainer does not place them on.
        return cls(rank, size, local_rank, local_size, "gloo")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self) -> None:
        """Initialise the default process group from the environment (once)."""
        if self.active and not dist.is_initialized():
            assert self.backend is not None
            dist.init_process_group(self.backend, timeout=COLLECTIVE_TIMEOUT)

    def leave(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def threads(self, total: int) -> int:
        """Each rank's share of `total` CPU threads, so N processes do not oversubscribe."""
        return max(1, total // self.local_world_size)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's stride of a global batch's row indices."""
        return idx[self.rank :: self.world_size]

    def loss_weight(self, local: int, total: int) -> float:
        """The factor on a rank's mean loss that makes DDP's average of gradients the mean
        gradient over the whole batch: local rows x ranks / global rows."""
        return local * self.world_size / total

    def sum(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each value summed over all ranks (float64 on the wire, cast back)."""
        if not self.active:
            return values
        packed = torch.stack([v.detach().to(torch.float64).reshape(()) for v in values])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return [packed[i].to(v.dtype) for i, v in enumerate(values)]

    def rows(self, n: int) -> np.ndarray:
        """This rank's contiguous share of `n` evaluation rows (np.array_split's)."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]

    def gather_rows(self, n: int, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`predict(rows)` over every rank's `rows(n)`, gathered into all `n` rows in order."""
        if not self.active:
            return predict(np.arange(n))
        local = torch.from_numpy(np.ascontiguousarray(predict(self.rows(n))))
        sizes = [len(part) for part in np.array_split(np.arange(n), self.world_size)]
        # all_gather needs equal shapes: pad every share to the largest, then cut.
        padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).numpy()

    def agree(self, decision: bool) -> bool:
        """Rank 0's `decision`, on every rank (early stopping is decided once for all)."""
        if not self.active:
            return decision
        flag = torch.tensor([int(decision)])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def check_fits(self, batch_size: int, val_rows: int, test_rows: int) -> None:
        """Every rank needs a row of every batch and of each evaluation split.

        Raises InvalidArgument naming the limit that the world size exceeds.
        """
        if not self.active:
            return
        limits = {"--batch-size": batch_size, "validation rows": val_rows, "test rows": test_rows}
        for what, rows in limits.items():
            if rows < self.world_size:
                raise InvalidArgument(
                    f"{self.world_size} processes but only {rows} {what}: every process needs "
                    f"at least one row; use at most {rows} processes or a larger "
                    f"{'batch' if what.startswith('--') else 'data set'}"
                )

    def check_same_data(self, fingerprint: str) -> None:
        """Every rank must train on the same rows (a retraining's ranks each read the traffic
        window): DDP would silently average the gradients of different data sets, or hang when
        their batch counts differ.

        Raises FailedPrecondition when a rank's data set fingerprint differs from rank 0's.
        """
        if not self.active:
            return
        digest = hashlib.sha256(fingerprint.encode()).digest()
        mine = torch.tensor(list(digest), dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine)
        differ = [r for r, part in enumerate(parts) if not torch.equal(part, parts[0])]
        if differ:
            raise FailedPrecondition(
                f"the ranks loaded different data sets (ranks {differ} differ from rank 0): "
                "every node needs the same data set files, and a retraining's traffic window "
                "must end at the same time on every node (the same --since ISO time, and "
                "traffic no longer arriving for that window)"
            )

    def fault(self, epoch: int) -> None:
        """The tests' dead-rank hook (FAULT_HOOK)."""
        wanted = os.environ.get(FAULT_HOOK, "")
        if self.active and wanted == f"{self.rank}:{epoch}":
            os.kill(os.getpid(), 9)
