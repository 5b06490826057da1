"""Sparse embedding-table gradients in data-parallel training: 2 gloo processes against 1.

Workers are started as torchrun starts them (see tests/test_distributed.py). A global batch of 32
rows is split ``rank::2``; each rank's table gradient is a COO tensor over the rows it touched
(some rows touched by both ranks, some by one). The exchange must give every rank the gradient
of the 1-process run on the whole batch, without a dense tensor of the table's size, for
equal weighting (all_gather_sparse_grads) and for MGDA with the table in its Jacobian (the
touched-row columns aligned over ranks before J is averaged); 3 training steps with row-wise
AdaGrad must end with the 1-process weights, equal on both ranks (a bf16 table within a bf16
rounding, its ranks bit-equal); and so must 2 epochs of the trainer itself (``model.embedding_optimizer``'s tables, fixed weighting and MGDA).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ATOL = 1e-6

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_sparse_tables import TASKS, _batch, _losses, _model, _schema
    from mtlkit.models import ModelSpec, build_model
    from mtlkit.balancing import BalancerSpec, GradientBalancer, build_balancer
    from mtlkit.optim import EmbeddingOptimizerSpec, build_optimizers
    from mtlkit.data.batch import EncodedTable
    from mtlkit.train import Trainer, TrainSpec, distributed

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    ctx = distributed.setup()
    full_inputs, full_targets = _batch(rows=61, buckets=500, seed=5)  # the trainer's data: it shards batches itself
    inputs, targets = _batch(rows=32, buckets=500, seed=4)
    if ctx.enabled:  # rank r's rows of the global batch, as ShardedBatches cuts them
        inputs = {k: v[ctx.rank::ctx.world] for k, v in inputs.items()}
        targets = {k: v[ctx.rank::ctx.world] for k, v in targets.items()}

    def step(model, balancer, opt=None):
        losses = _losses(model, inputs, targets)
        if ctx.enabled:
            rows = {k: torch.tensor(float(len(v))) for k, v in targets.items()}
            losses = distributed.global_mean_losses(losses, rows, ctx.world)
            if isinstance(balancer, GradientBalancer):  # as the trainer does: J averaged over ranks
                distributed.reduce_gradient_balancer(balancer, ctx.world)
        if opt is not None:
            opt.zero_grad()
        balancer.backward(losses, model)
        table = model.encoder.embedding.table.weight
        if ctx.enabled:
            tables = distributed.sparse_exchange_parameters([table], balancer)
            shared = {id(p) for p in model.shared_parameters()} if not tables else set()
            distributed.all_reduce_grads([p for p in model.parameters() if p is not table and id(p) not in shared], ctx.world)
            distributed.all_gather_sparse_grads(tables, ctx.world)
        assert table.grad.is_sparse
        grads = {n: p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad.clone() for n, p in model.named_parameters()}
        if opt is not None:
            opt.step()
        return grads

    result = {}
    for name in ("fixed", "mgda"):
        result[name] = step(_model(buckets=500), build_balancer(BalancerSpec(name=name), TASKS))
    model = _model(buckets=500)
    opt = build_optimizers(model, EmbeddingOptimizerSpec(name="rowwise_adagrad", lr=0.1), lr=1e-2)
    balancer = build_balancer(BalancerSpec(name="pcgrad"), TASKS)
    for _ in range(3):
        step(model, balancer, opt)
    result["trained"] = {k: v.clone() for k, v in model.state_dict().items()}
    # A bf16 table (model.embedding_storage): bf16 gradient rows gathered and summed in fp32.
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="mmoe", options={"experts": 2, "expert_hidden": [8]}, embedding_dim=4, tower=[4],
                                  embedding_storage="bfloat16", embedding_optimizer={"name": "rowwise_adagrad"}), _schema(500), TASKS)
    model.encoder.embedding.set_sparse_gradients(True)
    opt = build_optimizers(model, EmbeddingOptimizerSpec(name="rowwise_adagrad", lr=0.1), lr=1e-2)
    for _ in range(3):
        step(model, build_balancer(BalancerSpec(name="fixed"), TASKS), opt)
    result["trained-bf16"] = {k: v.clone() for k, v in model.state_dict().items()}
    # Through the trainer: row-wise AdaGrad tables, loss weighting (tables exchanged as rows) and
    # MGDA (tables in the rank-averaged Jacobian); 61 rows: a last global batch of 13 (7 + 6 rows).
    data = EncodedTable(full_inputs, full_targets, {k: torch.ones(61, dtype=torch.bool) for k in full_targets})
    for name in ("fixed", "mgda"):
        model = _model(buckets=500, sparse=False, seed=ctx.rank)  # the trainer broadcasts rank 0's weights
        torch.manual_seed(7)
        spec = TrainSpec(epochs=2, batch_size=16, lr=0.02, progress=False, patience=None, threads=1, precision="fp32")
        trainer = Trainer(model, TASKS, build_balancer(BalancerSpec(name=name), TASKS), spec,
                          embedding_optimizer=EmbeddingOptimizerSpec(lr=0.1), table_fields=["user", "item", "device"])
        trainer.fit(data.batches(16, shuffle=True, seed=3), data)
        result[f"trainer-{name}"] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(result, out / f"w{ctx.world}-r{ctx.rank}.pt")
    distributed.teardown()  # the group closed before exit, as torchrun scripts should (also registered at exit)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, world: int) -> None:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    tests = str(Path(__file__).parent)
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp), tests], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


def test_two_processes_exchange_sparse_table_gradients_like_one(tmp_path):
    _launch(tmp_path, 1)
    _launch(tmp_path, 2)
    single = torch.load(tmp_path / "w1-r0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"w2-r{r}.pt", weights_only=True) for r in range(2)]
    table = "encoder.embedding.table.weight"
    touched = single["fixed"][table].abs().sum(1) > 0
    assert 0 < int(touched.sum()) < 500  # the batch touched some rows, not the table
    for name in ("fixed", "mgda"):
        for key, want in single[name].items():
            for rank in ranks:
                torch.testing.assert_close(rank[name][key], want, rtol=0, atol=ATOL, msg=f"{name}: {key}")
        assert torch.equal(ranks[0][name][table], ranks[1][name][table])  # every rank steps with the same gradient
    for name in ("trainer-fixed", "trainer-mgda"):  # the whole trainer, 2 epochs
        for key, want in single[name].items():
            torch.testing.assert_close(ranks[0][name][key], want, rtol=0, atol=1e-5, msg=f"{name}: {key}")
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), f"{name}: {key}"
    for key, want in single["trained"].items():
        torch.testing.assert_close(ranks[0]["trained"][key], want, rtol=0, atol=1e-5, msg=key)
        assert torch.equal(ranks[0]["trained"][key], ranks[1]["trained"][key]), key
    bf16 = single["trained-bf16"]
    assert bf16[table].dtype == torch.bfloat16
    for key, want in bf16.items():
        got = ranks[0]["trained-bf16"][key]
        assert torch.equal(got, ranks[1]["trained-bf16"][key]), key  # the ranks stay in step
        # Per-rank partial sums round differently, and a stochastic rounding of a value that differs
        # in its last bits may go the other way: a few values end a few bf16 steps (2⁻⁷ relative) apart.
        if key == table:
            differ = got != want
            assert differ.float().mean() < 0.01, key
            torch.testing.assert_close(got.float()[differ], want.float()[differ], rtol=2**-4, atol=1e-4, msg=key)
        else:  # fp32 weights, fed by those embeddings: Adam (lr 0.01) amplifies their few-ulp difference
            torch.testing.assert_close(got, want, rtol=0, atol=2e-3, msg=key)  # where a gradient is near 0
