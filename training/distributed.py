"""Data-parallel training inside torchrun's processes: ranks, the process group, the wrapped model.

torchrun (`python -m torch.distributed.run`, started by training/launch.py) runs one process per
device and tells each its place through RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE.
`init_process_group` joins them with torch's own backends, gloo on the CPU and NCCL on CUDA.

Every process loads the same examples and plans the same steps; each step's rows are dealt out
round robin (`rank_micro_batches`), and every process runs the same number of micro-batches, an
empty one where it has no rows left, because DDP and FSDP both need every process in each
collective. The loss of each process is divided by the whole step's target tokens and the
gradients are summed across processes, so a step on N devices makes the same update as the same
rows on one device.

    ddp   every process holds the whole model; gradients are all-reduced (DistributedDataParallel)
    fsdp  parameters, gradients and AdamW's state are sharded across processes, each decoder
          layer gathered only while it runs (FSDP2's fully_shard): for models that do not fit
          one device
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.data import IGNORE_INDEX
from training.errors import TrainingError
from training.loss import loss_sum
from training.packing import Batch, Row, micro_batches


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among torchrun's processes (all 0/1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone emits events and writes checkpoints and the final model."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """The ranks torchrun put in the environment; a plain process is rank 0 of 1."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Ranks(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def init_process_group(device_type: str, *, host: bool | None = None) -> Ranks:
    """Join torchrun's processes (gloo on the CPU, NCCL on CUDA); a no-op when run alone.

    `host` (a job on several machines): whether this process runs on the node that hosts the
    rendezvous; the ranks are first renumbered so that node's processes come first
    (`host_first`)."""
    ranks = ranks_from_env()
    if ranks.parallel and not dist.is_initialized():
        if host is not None:
            ranks = host_first(ranks, host=host)
        if device_type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
    return ranks


HOST_KEY = "selfinstruct/host-node"  # in torchrun's store: the host node's GROUP_RANK


def host_first(ranks: Ranks, *, host: bool) -> Ranks:
    """The ranks with the rendezvous host's node numbered 0 (its node and node 0 trade places).

    torchrun's c10d rendezvous numbers nodes in the order of their addresses and process ids,
    so any node may come first; but rank 0 reports events and writes checkpoints and the model
    into its own node's run folder, which only the host's caller reads. The host's first
    process tells the others its node number through torchrun's store; RANK and GROUP_RANK in
    the environment are updated to match."""
    from datetime import timedelta

    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise TrainingError(
            "a job on several nodes runs under torchrun's c10d rendezvous, which shares its "
            "store with the processes (TORCHELASTIC_USE_AGENT_STORE); this torchrun did not"
        )
    store = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=5)
    )
    key = f"{HOST_KEY}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    group = int(env["GROUP_RANK"])
    if host and ranks.local_rank == 0:
        store.set(key, str(group))
    host_group = int(store.get(key))
    node = 0 if group == host_group else host_group if group == 0 else group
    rank = node * ranks.local_world_size + ranks.local_rank
    env["RANK"], env["GROUP_RANK"] = str(rank), str(node)
    return Ranks(
        rank=rank,
        world_size=ranks.world_size,
        local_rank=ranks.local_rank,
        local_world_size=ranks.local_world_size,
    )


def current_ranks() -> Ranks:
    """This process's ranks once the process group is up; rank 0 of 1 otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    env = ranks_from_env()
    return Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=env.local_rank,
        local_world_size=env.local_world_size,
    )


def rank_micro_batches(rows: Sequence[Row], ranks: Ranks, batch_size: int) -> list[list[Row]]:
    """This process's micro-batches of a step: rows dealt round robin, cut into batch_size,
    padded with empty micro-batches to the count of the busiest process (rank 0)."""
    mine = micro_batches(list(rows[ranks.rank :: ranks.world_size]), batch_size)
    busiest = len(micro_batches(list(rows[0 :: ranks.world_size]), batch_size))
    return mine + [[] for _ in range(busiest - len(mine))]


def empty_batch(pad_id: int, *, length: int = 1, n_rows: int = 1) -> Batch:
    """A micro-batch with no target: it runs the collectives and adds zero to every gradient."""
    return Batch(
        input_ids=torch.full((n_rows, length), pad_id, dtype=torch.long),
        targets=torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long),
        position_ids=torch.arange(length, dtype=torch.long).repeat(n_rows, 1),
        n_tokens=0,
        n_targets=0,
    )


class BatchLoss(torch.nn.Module):
    """The summed loss of a micro-batch as a module's forward, so DDP and FSDP can wrap it: the
    chunked loss calls the decoder and the head itself, and both must run inside the wrapper's
    forward for its hooks (gradient sync, parameter gathering) to see them."""

    def __init__(self, model: torch.nn.Module, loss_chunk_tokens: int, loss_kernel: str) -> None:
        super().__init__()
        self.model = model
        self.loss_chunk_tokens = loss_chunk_tokens
        self.loss_kernel = loss_kernel

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        batch = Batch(input_ids, targets, position_ids, n_tokens=0, n_targets=0)
        return loss_sum(
            self.model,
            batch,
            loss_chunk_tokens=self.loss_chunk_tokens,
            loss_kernel=self.loss_kernel,
        )


@dataclass
class Parallel:
    """The wrapped loss module of a job on several processes, and how it was wrapped."""

    module: Any  # DistributedDataParallel or an FSDP-sharded BatchLoss
    strategy: str
    ranks: Ranks

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.module(batch.input_ids, batch.targets, batch.position_ids)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Gradients stay local on every micro-batch of a step but the last (one sync a step)."""
        if last:
            yield
        elif self.strategy == "ddp":
            with self.module.no_sync():
                yield
        else:
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)


def sharded(parallel: Parallel | None) -> bool:
    """Whether parameters live in FSDP shards (checkpoints then gather them first)."""
    return parallel is not None and parallel.strategy == "fsdp"


def wrap(
    model: torch.nn.Module,
    *,
    strategy: str,
    ranks: Ranks,
    device: torch.device,
    loss_chunk_tokens: int,
    loss_kernel: str = "chunked",
) -> Parallel:
    """DDP or FSDP around the model's loss; see the module doc."""
    loss_module = BatchLoss(model, loss_chunk_tokens, loss_kernel)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped: Any = DistributedDataParallel(
            loss_module,
            device_ids=[ranks.local_rank] if device.type == "cuda" else None,
            broadcast_buffers=False,  # rotary tables: identical everywhere, never trained
        )
    else:
        from torch.distributed.fsdp import fully_shard

        get_base = getattr(model, "get_base_model", None)
        base: Any = get_base() if callable(get_base) else model
        for layer in base.get_decoder().layers:
            fully_shard(layer)
        wrapped = fully_shard(loss_module)  # the rest: embeddings, final norm, LM head
    return Parallel(module=wrapped, strategy=strategy, ranks=ranks)


def sum_across(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of a tensor over every process (itself when run alone)."""
    if ranks.parallel:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def agree(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every process when any process says yes, so all of them stop at the same step
    (a stop may come from another node's worker)."""
    if not ranks.parallel:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def full_state_dicts(
    parallel: Parallel, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """FSDP: the whole model's (and optimizer's) state gathered on rank 0, on the CPU (empty on
    the other ranks). Every process must call it: it is a collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(parallel.module, options=options)
    optim_state = None
    if optimizer is not None:
        optim_state = get_optimizer_state_dict(parallel.module, optimizer, options=options)
    model = parallel.module.model
    # a tied weight (the LM head that is the embedding) is saved once, as save_pretrained does
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = every - {name for name, _ in model.named_parameters()}
    prefix = "model."  # BatchLoss's attribute
    names = ((key.removeprefix(prefix), value) for key, value in model_state.items())
    return {name: value for name, value in names if name not in tied}, optim_state


def load_full_optimizer_state(
    parallel: Parallel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """FSDP: shard an optimizer state saved whole (by full_state_dicts) back onto the processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        parallel.module,
        optimizer,
        optim_state_dict=state,
        options=StateDictOptions(full_state_dict=True),
    )
