"""The same checks on every device: CPU here, CUDA where present (the ``gpu`` cases skip without one).

Each test runs a computation on ``device`` and compares it with the CPU, so a device-specific fault (a
tensor left on the wrong device, a checkpoint mapped where ``set_state`` refuses it) fails loudly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metacli.engine.algorithms.maml import MAML, MAMLConfig
from metacli.engine.online import finetune_and_test_many, finetune_and_test_vmap
from metacli.engine.types import Batch, OnlineStream, Task
from tests.engine.test_online import make_learner, make_stream
from tests.engine.test_oracles import conv_problem
from tests.test_cli import TINY, invoke

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _to(batch: Batch, device: str) -> Batch:
    return Batch(batch.x.to(device), batch.y.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_device_continues_to_the_same_result(device: str, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", "--out", str(straight), "--device", device, *TINY)[0] == 0
    args = ("--out", str(split), "--device", device, *TINY[:-1], "--set", "train.meta_iters=3", "--quiet")
    assert invoke("train", *args)[0] == 0
    (split / "spec.yaml").write_text(
        (split / "spec.yaml").read_text().replace("meta_iters: 3", "meta_iters: 6")
    )
    code, out = invoke("train", "--resume", str(split), "--device", device, "--quiet")
    assert code == 0, out
    a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert a[-1]["step"] == b[-1]["step"] == 6
    assert a[-1]["query_loss"] == pytest.approx(b[-1]["query_loss"], rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_conv_meta_gradient_on_device_matches_the_cpu(device: str) -> None:
    learner, tasks = conv_problem()
    algo = MAML(MAMLConfig(alpha=0.4, inner_steps=2), learner)
    meta = algo.init_meta(learner.init_params())
    reference = algo.meta_step(meta, tasks, "loop").grads
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
    learner.model.to(device)
    stream_d = OnlineStream(_to(stream.train, device), _to(stream.test, device), stream.n_classes)
    params_d = {k: v.to(device) for k, v in params.items()}
    for fast in (True, False):
        [(loss, acc)] = finetune_and_test_many(
            learner, params_d, stream_d, ids.to(device), [(0.5, 3)], 0.3, fast=fast
        )
        torch.testing.assert_close(loss.cpu(), want[0], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(acc.cpu(), want[1], rtol=0, atol=0)
