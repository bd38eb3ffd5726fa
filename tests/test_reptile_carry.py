"""Reptile's inner Adam with its state carried across tasks and iterations
(``algorithm.carry_inner_state``, supervised-reptile's semantics; algorithms/reptile.py).

The references are torch.optim.Adam on an nn.Module whose state simply runs on, as
TensorFlow's Adam slots do in supervised-reptile, and the fresh-state rule."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import tiny_config
from metaorch.algorithms import Adam, FunctionalModel, Reptile, mlp
from metaorch.orchestrator.trainer import train
from test_algorithms import F64, make_batch, named_views

LR, STEPS = 0.01, 3


def reptile(carry: bool, vectorize: str = "loop") -> tuple[Reptile, torch.Tensor]:
    model = FunctionalModel(mlp(1, [8], 1))
    model.module.to(F64)
    learner = Reptile(model, F.mse_loss, Adam(LR, carry=carry), STEPS, vectorize)
    return learner, learner.init_meta_params(0).to(F64)


def test_the_carried_state_runs_on_as_one_adam_does_and_changes_the_next_task():
    """Task A from a zero state, then task B from the state A ended in (what the driver sends
    when A was the meta-batch): B's steps are those of one torch Adam that ran A, had its
    weights put back to theta (supervised-reptile's import_variables) and ran B. From a fresh
    state, B's first step is already different."""
    learner, meta = reptile(carry=True)
    n = learner.model.num_params
    assert learner.carried_size == n + 1 and meta.shape == (n + n + 1,) and not meta[n:].any()
    batch = make_batch(tasks=2, shots=5, queries=5)
    task = lambda i: {k: v[i : i + 1] for k, v in batch.items()}  # noqa: E731

    after_a = learner.outer_update(meta, task(0)).direction
    assert after_a[-1] == STEPS and after_a[n:-1].max() > 0  # A's steps counted, a second moment kept
    carried = torch.cat([meta[:n], after_a[n:]])  # theta unchanged, the state A left
    sx, sy = batch["support_x"][1], batch["support_y"][1]

    net = mlp(1, [8], 1).to(F64)
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(0.0, 0.999), eps=1e-8)
    for i in (0, 1):
        with torch.no_grad():
            for p, v in zip(net.parameters(), named_views(net, meta[:n]).values()):
                p.copy_(v)
        for _ in range(STEPS):
            opt.zero_grad()
            F.mse_loss(net(batch["support_x"][i]), batch["support_y"][i]).backward()
            opt.step()
    expected = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(learner.adapt(carried, sx, sy, STEPS), expected, rtol=1e-9, atol=1e-12)

    fresh, _ = reptile(carry=False)
    one_carried, one_fresh = learner.adapt(carried, sx, sy, 1), fresh.adapt(meta[:n], sx, sy, 1)
    assert (one_carried - one_fresh).abs().max() > 1e-4  # a warm second moment: not the fresh sign-like step
    torch.testing.assert_close(learner.adapt(meta, sx, sy, STEPS), fresh.adapt(meta[:n], sx, sy, STEPS), rtol=0, atol=0)

    # The exported model adapts from the same carried state.
    qx = batch["query_x"][1]
    torch.testing.assert_close(learner.export(carried).adapt(sx, sy)(qx), learner.query_logits(carried, sx, sy, qx), rtol=1e-6, atol=1e-8)


def test_a_chunk_sums_its_tasks_end_states_alike_in_vmap_and_loop():
    """Every task of a chunk starts from the one carried state; the direction's tail is the sum of
    their end states (the driver divides by the meta-batch: their mean)."""
    batch = make_batch(tasks=3, shots=4, queries=4, dtype=torch.float32)
    (via_loop, meta), (via_vmap, _) = reptile(True, "loop"), reptile(True, "vmap")
    meta = meta.float()
    n = via_loop.model.num_params
    meta[n:-1], meta[-1] = 1e-3, 7.0  # a warm state
    loop, vmapped = via_loop.outer_update(meta, batch), via_vmap.outer_update(meta, batch)
    torch.testing.assert_close(loop.direction, vmapped.direction, rtol=1e-5, atol=1e-7)
    singles = [via_loop.outer_update(meta, {k: v[i : i + 1] for k, v in batch.items()}).direction for i in range(3)]
    torch.testing.assert_close(loop.direction, sum(singles), rtol=1e-6, atol=1e-8)
    assert loop.direction[-1] == 3 * (7 + STEPS)


def test_carried_state_is_independent_of_the_worker_count_and_resumes_bitwise(ray_session, workdir):
    """One in-process worker for 4 iterations equals two workers for 2 iterations resumed to 4 in
    process: the state travels with theta and is reduced in task order, and the checkpoint keeps it."""
    one_worker = {"num_workers": 1, "transport": "inprocess", "chunk_size": 2}

    def run(iterations: int, workers: dict, resume: str | None = None):
        config = tiny_config(
            algorithm={"name": "reptile", "inner_optimizer": "adam", "inner_lr": 0.01, "inner_steps": 2, "carry_inner_state": True},
            outer={"optimizer": "sgd", "lr": 0.5, "iterations": iterations, "meta_batch": 6},
            workers=workers,
            eval={"at_end": False, "plot_tasks": 0},
        )
        return train(config, resume=resume, progress=False)

    one = run(4, one_worker)
    first = run(2, {"num_workers": 2, "num_cpus": 0.5, "chunk_size": 2})
    resumed = run(4, one_worker, resume=first.run_id)
    assert torch.equal(one.meta_params, resumed.meta_params)
    n = (one.meta_params.shape[0] - 1) // 2
    assert one.meta_params[-1] == 4 * 2 and one.meta_params[n:-1].max() > 0  # the state was carried 4 iterations
    assert first.meta_params[-1] == 2 * 2
