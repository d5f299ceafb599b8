"""Computations on an accelerator against the same computations on the CPU (skipped without CUDA).

Each test computes a reference on the CPU, the same on ``device`` (never the CPU: comparing the CPU with
itself would prove nothing), and asserts that the two sides really ran on different devices before
comparing them, so a device-specific fault (a tensor left on the wrong device, a silent fallback to the
CPU) fails loudly. The CPU paths themselves (loop and vmap executors, the fast and the vmap fine-tuning)
are checked against each other and against oracles in ``tests/engine/``. Resume on each device is in
``tests/test_cli.py``.
"""

from __future__ import annotations

import pytest
import torch

from metacli.engine.algorithms.maml import MAML, MAMLConfig
from metacli.engine.online import finetune_and_test, finetune_and_test_vmap
from metacli.engine.types import Batch, OnlineStream, Task
from tests.engine.test_online import make_learner, make_stream
from tests.engine.test_oracles import conv_problem

DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)]
"""Accelerators only: the reference side of every comparison is the CPU."""


def _to(batch: Batch, device: str) -> Batch:
    return Batch(batch.x.to(device), batch.y.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_meta_gradient_on_device_matches_the_cpu(device: str) -> None:
    learner, tasks = conv_problem()
    algo = MAML(MAMLConfig(alpha=0.4, inner_steps=2), learner)
    meta = algo.init_meta(learner.init_params())
    reference = algo.meta_step(meta, tasks, "loop").grads
    assert device != "cpu" and all(g.device.type == "cpu" for g in reference.values())
    learner.model.to(device)
    on_device = Task(_to(tasks.support, device), _to(tasks.query, device))
    meta_d = algo.init_meta({k: v.detach().to(device) for k, v in meta.items()})
    for executor in ("loop", "vmap"):
        grads = algo.meta_step(meta_d, on_device, executor).grads
        for k, g in grads.items():
            assert g.device.type == device
            torch.testing.assert_close(g.cpu(), reference[k], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
def test_ltm_evaluation_on_device_matches_the_cpu(device: str) -> None:
    stream, learner = make_stream(), make_learner()
    params = learner.init_params()
    ids = torch.arange(stream.train.x.shape[0])
    want = finetune_and_test_vmap(learner, params, stream, ids, 0.5, 3, 0.3)
    assert device != "cpu" and want[0].device.type == want[1].device.type == "cpu"
    learner.model.to(device)
    stream_d = OnlineStream(_to(stream.train, device), _to(stream.test, device), stream.n_classes)
    params_d = {k: v.to(device) for k, v in params.items()}
    for fast in (True, False):
        [(loss, acc)] = finetune_and_test(
            learner, params_d, stream_d, ids.to(device), [(0.5, 3)], 0.3, fast=fast
        )
        assert loss.device.type == acc.device.type == device  # computed there, not on the CPU
        torch.testing.assert_close(loss.cpu(), want[0], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(acc.cpu(), want[1], rtol=0, atol=0)
