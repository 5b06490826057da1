"""Data-parallel training with ``torch.distributed`` (launched with ``torchrun``).

``torchrun --nproc-per-node N [--nnodes M ...] -m mtlkit.cli train CONFIG --out RUN_DIR`` (or
``torchrun ... $(which mtlkit) train ...``) trains data-parallel with no change to the config
(``train.batch_size`` stays the global batch of an in-memory table). The design, step by step:

- **Process group.** :func:`setup` initialises it from torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``): NCCL with one GPU per process
  (``cuda:LOCAL_RANK``) when CUDA is available, else gloo. Without ``WORLD_SIZE > 1`` nothing
  happens and training is the single-process loop. The :class:`~mtlkit.train.trainer.Trainer`
  only asks :func:`context` whether a group is initialised, so it also works in processes
  started some other way (the tests use ``torch.multiprocessing`` with gloo).
- **Identical weights.** The trainer broadcasts the model's and the balancer's parameters and
  buffers from rank 0 once, when it is built (every rank also uses the config's seed).
- **Data.** The batch order of an in-memory table is a function of ``(seed, epoch)`` only, so
  every rank draws the same *global* batch of ``train.batch_size`` rows and keeps the rows
  ``rank::world`` of it (:class:`ShardedBatches`). The number of steps per epoch, the learning-rate
  schedule and the position (epoch, step in global steps) are those of the single-process run,
  which is why a checkpoint resumes with any number of ranks. A source that shards by rank
  itself (:class:`~mtlkit.data.streaming.ParquetBatches`, row groups ``rank::world``, with
  ``batch_size`` rows per rank) is used as it is.
- **Gradients.** After ``balancer.backward`` (and the regularisation penalty), the gradients of
  every optimised parameter are averaged over ranks with a few flattened ``all_reduce`` calls
  (buckets of at most :data:`BUCKET_ELEMENTS` values per dtype, not one call per parameter),
  before clipping, the gradient scaler and the optimiser step; a parameter without a gradient on
  every rank keeps ``grad = None`` (AdamW then skips it as the single-process run does).
  Before the backward, rank ``r``'s mean loss of task ``k`` is multiplied by ``W·n_k,r/N_k``
  (its share of the task's labelled rows in the global batch: :func:`global_mean_losses`, one
  all-reduce of ``T`` counts), so the average of the per-rank gradients is the gradient of the
  global batch's mean loss even when ranks hold different numbers of labelled rows (an uneven
  last batch, sparse task masks). Exact for unweighted losses; with sample or negative weights
  the loss is a weighted mean and the row count only approximates its denominator. The balancer
  sees these re-weighted losses; the logged and epoch losses are the plain ones.
- **Gradient methods** (PCGrad, MGDA, …: :class:`~mtlkit.balancing.gradient.GradientBalancer`)
  aggregate the task Jacobian ``J``; the Gramian of a per-rank ``J`` is not that of the averaged
  one (``mean_r(J_r) mean_r(J_r)ᵀ ≠ mean_r(J_r J_rᵀ)``), so :func:`reduce_gradient_balancer`
  wraps the balancer's ``aggregate`` so that it first averages ``J`` (and the step's task
  objectives, which MGDA's ``loss`` normalisation reads) over ranks, in one ``all_reduce``; every
  rank then computes the same update ``d`` from the global ``J`` and the same random draws (the
  RNG states are equal), and the shared parameters are left out of the gradient all-reduce (their
  gradients are already equal). GradNorm and MGDA-UB differentiate something else than ``J``
  (a layer's weights, the per-rank shared representation) and are rejected with a ConfigError.
- **Loss weighting.** Learned weights (uncertainty log-variances, …) are optimiser parameters:
  their gradients are averaged like the model's. The epoch mean losses that DWA and the
  scheduled weights read at ``epoch_end`` are sums all-reduced over ranks, so every rank sees the
  global means. Methods whose weights depend on the step's loss values (GLS, FAMO) get the
  global batch's mean loss as every task loss's *value* (with the rank's re-weighted gradient):
  their weights and state are the same on every rank and equal to the 1-process run's.
- **Evaluation.** Every rank evaluates the *whole* validation (and test) split, which is in
  memory: AUC, GAUC and logloss are those of the whole split (not averages of per-rank values),
  and no gather is needed. Rank 0's results are broadcast (one small pickled object per epoch),
  so the selection, early-stopping decision and ``best_state`` are the same on every rank even
  if a non-deterministic kernel made the ranks' evaluations differ in the last bits.
  The cost is ``world``-fold redundant evaluation; sharded evaluation with an ``all_gather`` of
  the logits is the next step when validation becomes expensive.
- **Files.** Only rank 0 writes checkpoints (``last.pt``, ``best.pt``), ``metrics.*``, TensorBoard,
  ``config.yaml``, ``schema.json``, ``summary.json`` and shows the progress bar (its running loss
  is rank 0's shard; the epoch means are global). On resume every rank reads rank 0's
  ``last.pt``, so several machines need a shared run directory. The mid-epoch loss sums in a
  checkpoint are the all-reduced ones (on Ctrl-C, rank 0's own, as no collective is safe then).

**Sparse embedding tables** (weights with COO gradients, :mod:`mtlkit.nn.embedding_tables`) are
never densified: :func:`all_gather_sparse_grads` gathers every rank's touched row ids and their
gradient rows (one ``all_gather`` of the counts, one of the ids, one of the rows, padded to the
largest count) and coalesces them locally (duplicate ids summed, divided by the world size), so
the exchange costs ``world × rows touched per rank``, not the table. Every rank coalesces the same
concatenation in the same rank order, so the averaged gradient is identical on all ranks. A
gradient method with the tables in its Jacobian (``sparse_tables: jacobian``) needs the same
columns on every rank before ``J`` is averaged: :func:`reduce_gradient_balancer` installs
:func:`align_jacobian_columns`, which widens each table block to the union of the ranks' touched
rows (an ``all_gather`` of the ids); the update over that union is then the same on every rank and
the tables, like the other shared parameters, need no further exchange. With
``sparse_tables: outside`` (or a loss-weighting balancer) the tables' gradients go through
:func:`all_gather_sparse_grads`. :func:`sparse_exchange_parameters` says which is which.

Model-parallel embeddings (not implemented): the data-parallel design replicates every
parameter, so an embedding table must fit one device. Larger tables plug in as a backend of
:data:`mtlkit.nn.embedding_tables.EMBEDDING_TABLES` (``model.embedding_table``), the interface
:class:`~mtlkit.nn.embedding.TabularEncoder` reads categorical fields through; that module's
docstring sketches the TorchRec backend (``EmbeddingBagCollection`` sharded by
``DistributedModelParallel``) and what changes here with it: the tables' parameters leave
:func:`all_reduce_grads`, checkpoints become sharded, and gradient methods keep the tables out of
``shared_parameters()``.

Example:
    >>> context()  # no process group in a plain process
    DistContext(rank=0, world=1)
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlkit.balancing.gradient import GradientBalancer
from mtlkit.balancing.touched_rows import Columns
from mtlkit.data.batch import Batch, BatchSource
from mtlkit.errors import ConfigError
from mtlkit.optim.base import coalesce, touched_rows

#: The most values one ``all_reduce`` of the gradient averaging carries.
BUCKET_ELEMENTS = 25_000_000


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """This process's rank and the world size (``0, 1`` without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def setup() -> DistContext:
    """Initialise the process group from torchrun's environment if it asks for several processes."""
    if not (dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1) or dist.is_initialized():
        return context()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    # A process group left to the interpreter's shutdown can abort the process ("terminate called
    # without an active exception": gloo's threads destroyed while joinable), so the group we
    # opened is closed before exit, after a run or an exception alike.
    atexit.register(teardown)
    return context()


def teardown() -> None:
    """Close the process group :func:`setup` opened (idempotent; registered to run at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_state(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank (once, at start-up)."""
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _buckets(tensors: Sequence[Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype) into buckets of at most BUCKET_ELEMENTS."""
    groups: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for indices in groups.values():
        bucket: list[int] = []
        size = 0
        for i in indices:
            if bucket and size + tensors[i].numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(i)
            size += tensors[i].numel()
        if bucket:
            yield bucket


def all_reduce_grads(params: Sequence[Tensor], world: int) -> None:
    """Average ``p.grad`` over ranks, a flattened ``all_reduce`` per bucket.

    Each bucket carries one extra value per parameter, 1 where the rank has a gradient: a
    parameter that has one on no rank keeps ``grad = None``; one missing on some ranks counts as
    zero there.
    """
    params = list(params)
    for bucket in _buckets(params):
        ps = [params[i] for i in bucket]
        flat = torch.cat([
            *[(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps],
            torch.tensor([float(p.grad is not None) for p in ps], dtype=ps[0].dtype, device=ps[0].device),
        ])
        dist.all_reduce(flat)
        flat.div_(world)
        values, present = flat[:-len(ps)], flat[-len(ps):]
        has = (present > 0).tolist()  # host flags: one sync per bucket (the step syncs in all_reduce anyway)
        for p, g, keep in zip(ps, torch.split(values, [p.numel() for p in ps]), has):
            if not keep:
                p.grad = None
            elif p.grad is None:
                p.grad = g.view_as(p).clone()
            else:
                p.grad.copy_(g.view_as(p))


def all_reduce_sum_(*tensors: Tensor) -> None:
    """Sum small same-dtype tensors over ranks in place (one call)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for t, v in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
        t.copy_(v.view_as(t))


def global_mean_losses(losses: dict[str, Tensor], rows: dict[str, Tensor], world: int) -> dict[str, Tensor]:
    """Rank ``r``'s loss of task ``k`` with the gradient of ``L_k,r · W · n_k,r / N_k`` and the
    *value* of the global batch's mean loss ``Σ_r n_k,r L_k,r / N_k`` (one all-reduce of 2T numbers).

    The gradient: rank ``r``'s mean loss re-weighted by its share of the task's labelled rows
    (``N_k = Σ_r n_k,r``), so the average over ranks of the gradients is the gradient of the
    global batch's mean — exact for unweighted masked means when ranks or task masks hold
    different row counts (an uneven last batch, sparse tasks). The value: every rank sees the
    global mean (``s − s.detach() + v``), so a balancer whose weights depend on the loss values
    (GLS, FAMO, uncertainty's weight gradient) computes the same weights and state on every rank
    as the 1-process run does, and the averaged gradient ``Σ_k w_k(v) ∇L_k`` is the exact one."""
    names = list(losses)
    if not names:
        return losses
    counts = torch.stack([rows[n].to(losses[n].device, torch.float32).reshape(()) for n in names])
    values = torch.stack([losses[n].detach().float().reshape(()) for n in names])
    sums = torch.cat([counts, counts * values])
    dist.all_reduce(sums)
    total, weighted = sums[: len(names)], sums[len(names):]
    factor = counts * world / total.clamp_min(1)
    mean = weighted / total.clamp_min(1)
    out = {}
    for i, n in enumerate(names):
        scaled = losses[n] * factor[i].to(losses[n].dtype)
        out[n] = scaled - scaled.detach() + mean[i].to(scaled.dtype)
    return out


_UNSUPPORTED = {
    "GradNorm": "it differentiates a layer's weights w.r.t. per-rank losses, not the task Jacobian",
    "MGDAUB": "its Jacobian is w.r.t. each rank's own shared representation, which cannot be averaged",
}


class RankAveragedJacobian:
    """A :class:`~mtlkit.balancing.gradient.JacobianReducer`: ``J`` and the objectives averaged over ranks
    in one all-reduce, after the touched rows of sparse tables are made one union for all ranks."""

    def __init__(self, world: int) -> None:
        self.world = world

    def align_columns(self, jacobian: Tensor, columns: Any) -> tuple[Tensor, Any]:
        return align_jacobian_columns(jacobian, columns)

    def reduce(self, jacobian: Tensor, objectives: Tensor) -> tuple[Tensor, Tensor]:
        packed = torch.cat([jacobian, objectives.to(jacobian).reshape(-1, 1)], dim=1)
        dist.all_reduce(packed)
        packed.div_(self.world)
        return packed[:, :-1], packed[:, -1]


def reduce_gradient_balancer(balancer: GradientBalancer, world: int) -> None:
    """Make a gradient balancer aggregate the rank-averaged Jacobian (see the module docstring)."""
    name = type(balancer).__name__
    if name in _UNSUPPORTED or balancer.needs_shared_features:
        why = _UNSUPPORTED.get(name, "it differentiates each rank's own shared representation")
        raise ConfigError(f"balancer {name!r} is not supported in distributed training: {why}")
    balancer.jacobian_reducer = RankAveragedJacobian(world)


def _all_gather_rows(ids: Tensor, rows: Tensor, present: bool) -> tuple[list[Tensor], list[Tensor], bool]:
    """Every rank's ``(ids, rows)`` (padded to the largest count for the collective), and whether
    any rank had them (``present``)."""
    count = torch.tensor([ids.numel() if present else -1], dtype=torch.long, device=ids.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()  # one host sync; the gathers below need the padded length
    longest = max(max(sizes), 0)
    if longest == 0:
        return [], [], max(sizes) >= 0
    padded_ids = ids.new_zeros(longest)
    padded_ids[: ids.numel()] = ids
    padded_rows = rows.new_zeros(longest, *rows.shape[1:])
    padded_rows[: rows.shape[0]] = rows
    all_ids = [torch.empty_like(padded_ids) for _ in sizes]
    all_rows = [torch.empty_like(padded_rows) for _ in sizes]
    dist.all_gather(all_ids, padded_ids)
    dist.all_gather(all_rows, padded_rows)
    kept = [(i[:n], r[:n]) for i, r, n in zip(all_ids, all_rows, sizes) if n > 0]
    return [i for i, _ in kept], [r for _, r in kept], True


def all_gather_sparse_grads(params: Sequence[Tensor], world: int) -> None:
    """Average the COO gradients of embedding-table weights over ranks without densifying them.

    Each rank's gradient is coalesced, the ranks' (ids, rows) are all-gathered and coalesced
    again (duplicates summed), then divided by ``world``. A weight without a gradient on every
    rank keeps ``grad = None``; one missing on some ranks counts as zero there.
    """
    for p in params:
        present = p.grad is not None
        if p.grad is not None:  # present
            if not p.grad.is_sparse:
                raise ValueError("all_gather_sparse_grads: a table weight has a dense gradient; its table is not in sparse-gradient mode")
            ids, rows = touched_rows(p)  # coalesced once, in place
        else:
            ids, rows = torch.zeros(0, dtype=torch.long, device=p.device), p.new_zeros(0, *p.shape[1:])
        all_ids, all_rows, anywhere = _all_gather_rows(ids, rows, present)
        if not anywhere:
            p.grad = None
            continue
        if not all_ids:
            all_ids, all_rows = [ids], [rows]
        summed = coalesce(torch.sparse_coo_tensor(torch.cat(all_ids).unsqueeze(0), torch.cat(all_rows), p.shape,
                                                  check_invariants=False))
        summed._values().div_(world)
        p.grad = summed


def align_jacobian_columns(jacobian: Tensor, columns: Columns) -> tuple[Tensor, Columns]:
    """Widen every sparse-table block of ``jacobian`` to the union of the touched rows of all ranks
    (zeros where this rank did not touch a row), so that ``J`` can be averaged over ranks."""
    blocks, sizes = [], []
    rows: list[Tensor | None] = []
    for block, ids, param in zip(torch.split(jacobian, columns.sizes, dim=1), columns.rows, columns.params):
        if ids is None:
            blocks.append(block)
            sizes.append(block.shape[1])
            rows.append(None)
            continue
        gathered, _, _ = _all_gather_rows(ids, ids.new_zeros(ids.numel(), 0), True)
        union = torch.unique(torch.cat(gathered)) if gathered else ids
        width = param[0].numel()
        wide = block.new_zeros(block.shape[0], union.numel(), width)
        wide[:, torch.searchsorted(union, ids)] = block.reshape(block.shape[0], ids.numel(), width)
        blocks.append(wide.reshape(block.shape[0], -1))
        sizes.append(union.numel() * width)
        rows.append(union)
    return torch.cat(blocks, dim=1), Columns(list(columns.params), sizes, rows)


def sparse_exchange_parameters(table_params: Sequence[nn.Parameter], balancer: nn.Module) -> list[nn.Parameter]:
    """The table weights whose gradients :func:`all_gather_sparse_grads` must exchange: all of them,
    except under a gradient method that keeps them in its Jacobian (their gradient is then the
    same on every rank already, as for the other shared parameters)."""
    in_jacobian = isinstance(balancer, GradientBalancer) and balancer.options.sparse_tables == "jacobian"
    return [] if in_jacobian else list(table_params)


def _shard(batch: Batch, rank: int, world: int) -> Batch:
    def cut(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v[rank::world] for k, v in d.items()}

    return Batch(cut(batch.inputs), cut(batch.targets), cut(batch.masks), cut(batch.weights), cut(batch.groups))


class ShardedBatches(BatchSource):
    """Rank ``rank``'s rows ``rank::world`` of every batch of a source that yields global batches.

    Same ``len()`` and the same ``epoch(epoch, start_step)`` positions as the source, so a
    checkpoint's position means the same thing for any number of ranks.
    """

    def __init__(self, source: Any, rank: int, world: int) -> None:
        self.source, self.rank, self.world = source, rank, world

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[list[Batch]]:
        for batches in self.source.epoch(epoch, start_step):
            yield [_shard(b, self.rank, self.world) for b in batches]


def shard_source(source: BatchSource, ctx: DistContext) -> BatchSource:
    """The rank's view of a training source: itself if it already shards by rank, else ShardedBatches."""
    if not ctx.enabled or source.world_size == ctx.world or isinstance(source, ShardedBatches):
        return source
    return ShardedBatches(source, ctx.rank, ctx.world)


__all__ = [
    "BUCKET_ELEMENTS", "DistContext", "global_mean_losses", "ShardedBatches", "align_jacobian_columns",
    "all_gather_sparse_grads", "all_reduce_grads", "all_reduce_sum_", "broadcast_object", "broadcast_state", "context",
    "reduce_gradient_balancer", "setup", "shard_source", "sparse_exchange_parameters",
]
