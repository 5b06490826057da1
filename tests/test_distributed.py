"""Data-parallel training (mtlkit.train.distributed): 2 gloo processes on CPU against 1 process.

The workers are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
environment; ``distributed.setup()`` initialises the group from it), one thread each. Global
batches of 16 rows (the last one 13: 7 + 6 rows) over 2 ranks, task b labelled on ~60 % of the rows
(so the ranks hold different counts): with the row-share re-weighting of the losses the 2-process
run computes the gradients of the 1-process run up to float summation order, and the final
weights (3 epochs, Adam) agree to
``ATOL`` for equal weighting (fixed), two gradient methods (mgda, pcgrad: the Jacobian is
all-reduced before aggregation), two loss-level methods with state (uncertainty: learned
log-variances; dwa: epoch mean losses) and two whose weights depend on the step's loss values
(gls; famo, whose task logits are updated from them: every rank sees the global mean loss values).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtlkit.train import distributed

ATOL = 1e-5
BALANCERS = ("fixed", "mgda", "pcgrad", "uncertainty", "dwa", "gls", "famo")

WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    from torch import nn
    from mtlkit.balancing import BalancerSpec, build_balancer
    from mtlkit.data.batch import EncodedTable
    from mtlkit.tasks import Task
    from mtlkit.train import TrainSpec, Trainer, Callback, distributed
    from mtlkit.protocols import TrainableModel

    out, mode = Path(sys.argv[1]), sys.argv[2]
    RESUMED = ("mgda", "dwa")
    torch.set_num_threads(1)
    ctx = distributed.setup()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = {"a": (x[:, 0] + 0.3 * torch.randn(96, generator=g) > 0).float(),
         "b": (x[:, 1] - x[:, 2] + 0.3 * torch.randn(96, generator=g) > 0).float()}
    # task b is labelled on ~60 % of the rows (a sparse task: ranks hold different counts), and
    # 61 training rows leave a last batch of 13 rows (7 + 6 over 2 ranks)
    masks = {"a": torch.ones(96, dtype=torch.bool), "b": torch.rand(96, generator=g) < 0.6}
    train = EncodedTable({"numeric": x[:61]}, {k: v[:61] for k, v in y.items()}, {k: v[:61] for k, v in masks.items()})
    val = EncodedTable({"numeric": x[64:]}, {k: v[64:] for k, v in y.items()}, {k: v[64:] for k, v in masks.items()})
    tasks = [Task(name="a", kind="binary"), Task(name="b", kind="binary")]

    class Net(TrainableModel):
        def __init__(self):
            super().__init__(["a", "b"])
            self.bottom = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.towers = nn.ModuleDict({k: nn.Linear(8, 1) for k in ("a", "b")})
        def shared_parameters(self):
            return self.bottom.parameters()
        def forward(self, inputs):
            h = self.bottom(inputs["numeric"])
            return {k: t(h).squeeze(-1) for k, t in self.towers.items()}

    class Stop(Callback):  # an interruption after the 2nd epoch's last checkpoint
        def on_epoch_end(self, trainer, record, validation):
            if record["epoch"] == 2:
                raise KeyboardInterrupt

    def run(name, run_dir, epochs=3, callbacks=()):
        torch.manual_seed(1 + ctx.rank)  # different on each rank: the trainer broadcasts rank 0's weights
        model = Net()
        balancer = build_balancer(BalancerSpec(name=name), tasks)
        spec = TrainSpec(epochs=epochs, batch_size=16, lr=0.02, progress=False, patience=None, threads=1,
                         checkpoint_every=2, precision="fp32")  # an fp32 comparison, whatever "auto" picks here
        torch.manual_seed(7)  # the same RNG stream on every rank and in the 1-process run
        trainer = Trainer(model, tasks, balancer, spec, run_dir, callbacks)
        result = trainer.fit(train.batches(16, shuffle=True, seed=3), val)
        state = {**{"model." + k: v for k, v in model.state_dict().items()},
                 **{"balancer." + k: v for k, v in balancer.state_dict().items()}}
        return state, result

    names, modes = sys.argv[3].split(","), mode.split(",")
    if "train" in modes:
        for name in names:
            run_dir = out / f"{name}-w{ctx.world}-rank{ctx.rank}"  # rank 1's directory must stay empty
            state, result = run(name, run_dir)
            torch.save({"state": state, "val": result.best_results, "samples": result.train_samples},
                       out / f"{name}-w{ctx.world}-r{ctx.rank}.pt")
    if "interrupt" in modes:  # shared run directory, stopped during epoch 2
        for name in RESUMED:
            try:
                run(name, out / f"resume-{name}", callbacks=[Stop()])
            except KeyboardInterrupt:
                pass
    if "resume" in modes:
        for name in RESUMED:
            state, result = run(name, out / f"resume-{name}")
            torch.save({"state": state, "val": result.best_results}, out / f"resumed-{name}-w{ctx.world}-r{ctx.rank}.pt")
    distributed.teardown()  # the group closed before exit, as torchrun scripts should (also registered at exit)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, world: int, mode: str, names: tuple[str, ...]) -> None:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp), mode, ",".join(names)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


def _tensors(state, prefix: str = "") -> dict:
    """The tensors of a (nested) state dict by dotted key; other values by equality."""
    if isinstance(state, dict):
        return {k2: v2 for k, v in state.items() for k2, v2 in _tensors(v, f"{prefix}{k}.").items()}
    return {prefix: state if isinstance(state, torch.Tensor) else torch.tensor(state, dtype=torch.float64)}


def _close(a: dict, b: dict, atol: float = ATOL) -> float:
    a, b = _tensors(a), _tensors(b)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)
    assert worst <= atol, worst
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _launch(tmp, 2, "train,interrupt", BALANCERS)  # 2 ranks, then an interrupted run
    _launch(tmp, 1, "train,resume", BALANCERS)  # 1 rank: the reference, then the interrupted run resumed
    return tmp


@pytest.mark.parametrize("name", BALANCERS)
def test_two_processes_match_one(runs, name):
    one = torch.load(runs / f"{name}-w1-r0.pt", weights_only=True)
    r0 = torch.load(runs / f"{name}-w2-r0.pt", weights_only=True)
    r1 = torch.load(runs / f"{name}-w2-r1.pt", weights_only=True)
    _close(r0["state"], r1["state"], atol=0.0)  # the ranks hold identical weights
    print(name, "2 ranks vs 1, max |Δ| of the final weights:", _close(one["state"], r0["state"]))
    assert one["samples"] == r0["samples"] == 3 * 61  # rows of all ranks
    # validation metrics: every rank evaluates the whole split (AUC of all rows, not a per-rank mean)
    for task, metrics in one["val"].items():
        for metric, value in metrics.items():
            assert r0["val"][task][metric] == pytest.approx(value, abs=1e-4)


def test_only_rank0_writes(runs):
    rank0 = runs / "fixed-w2-rank0"
    assert {"last.pt", "best.pt", "metrics.jsonl", "metrics.csv"} <= {p.name for p in rank0.iterdir()}
    assert not (runs / "fixed-w2-rank1").exists()
    assert len((rank0 / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("name", ("mgda", "dwa"))
def test_resume_with_another_world_size(runs, name):
    """Interrupted under 2 processes (last.pt: a mid-epoch checkpoint of epoch 2), resumed with 1."""
    resumed = torch.load(runs / f"resumed-{name}-w1-r0.pt", weights_only=True)
    reference = torch.load(runs / f"{name}-w1-r0.pt", weights_only=True)
    print(name, "resumed vs uninterrupted, max |Δ|:", _close(reference["state"], resumed["state"]))


def test_single_process_is_untouched():
    ctx = distributed.context()
    assert (ctx.rank, ctx.world, ctx.enabled) == (0, 1, False)
    source = object()
    assert distributed.shard_source(source, ctx) is source


def test_sharded_batches_split_each_global_batch():
    from mtlkit.data.batch import EncodedTable

    table = EncodedTable({"numeric": torch.arange(10.0)[:, None]}, {"y": torch.arange(10.0)}, {"y": torch.ones(10, dtype=torch.bool)})
    source = table.batches(4, shuffle=True, seed=1)
    shards = [distributed.ShardedBatches(source, r, 2) for r in range(2)]
    assert len(shards[0]) == len(source) == 3
    for full, a, b in zip(source.epoch(1, 1), shards[0].epoch(1, 1), shards[1].epoch(1, 1)):
        rows = torch.cat([a[0].targets["y"], b[0].targets["y"]]).sort().values
        assert torch.equal(rows, full[0].targets["y"].sort().values)


@pytest.mark.parametrize("name", ("gradnorm", "mgda_ub"))
def test_unsupported_gradient_methods_are_rejected(name):
    from mtlkit.balancing import BalancerSpec, build_balancer
    from mtlkit.errors import ConfigError
    from mtlkit.tasks import Task

    tasks = [Task(name="a", kind="binary"), Task(name="b", kind="binary")]
    with pytest.raises(ConfigError, match="not supported in distributed training"):
        distributed.reduce_gradient_balancer(build_balancer(BalancerSpec(name=name), tasks), 2)
