"""Validation during meta-training, the best checkpoint, and batched meta-testing on fixed task sets;
and validation of the spec itself: every field's real range (at the end of the file).

Runs are MAML on sinusoid through the real CLI (seconds); the sinusoid's "val" and "test" splits draw
from the same task family, so the selection metric is the validation MSE (lower is better).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from metacli.cli import app
from metacli.engine import episodic
from metacli.runlayer.checkpoint import load
from metacli.runlayer.parts import build_episodic_run
from metacli.spec import load_spec

runner = CliRunner()
VAL = [
    "--set",
    "train.meta_iters=40",
    "--set",
    "train.meta_batch=2",
    "--set",
    "train.log_every=10",
    "--set",
    "train.checkpoint_every=20",
    "--set",
    "train.val_every=4",
    "--set",
    "train.val_tasks=8",
    "--set",
    "algorithm.outer_lr=0.01",
    "--set",
    "eval.tasks=10",
    "--quiet",
]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    out = result.output + (result.stderr if result.stderr_bytes else "")
    return result.exit_code, " ".join(out.split())  # the console wraps long messages


def rows(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_best_checkpoint_is_the_best_validation_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, out = invoke("train", "--out", str(run), *VAL)
    assert code == 0, out
    val = [(int(r["step"]), r["val_loss@10"]) for r in rows(run) if "val_loss@10" in r]
    assert [s for s, _ in val] == list(range(4, 41, 4))  # every val_every steps, the last included
    best_step = min(val, key=lambda sv: sv[1])[0]  # ties: the first, as the loop keeps the first
    best = load(run / "checkpoints" / "best.pt", torch.device("cpu"))
    last = load(run / "checkpoints" / "last.pt", torch.device("cpu"))
    assert best["done"] == best_step and last["done"] == 40
    assert json.loads((run / "summary.json").read_text())["best_step"] == best_step
    # The best checkpoint holds the parameters of that step: re-validating them gives the logged value.
    spec, _ = load_spec(run / "spec.yaml")
    parts = build_episodic_run(spec, device="cpu")
    v = episodic.validate(
        parts, best["state"]["meta"], episodic.Validation(4, 8, spec.train.val_seed, 10, 25)
    )
    assert math.isclose(v["val_loss@10"], dict(val)[best_step], rel_tol=1e-5)

    code, out = invoke("evaluate", str(run), "--quiet")
    assert code == 0, out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["checkpoint"] == "best" and ev["checkpoint_step"] == best_step
    code, out = invoke("evaluate", str(run), "--checkpoint", "last", "--quiet")
    assert code == 0, out
    ev_last = json.loads((run / "eval.json").read_text())
    assert ev_last["checkpoint_step"] == 40
    assert ev_last["metrics"]["query_loss@10"]["mean"] != ev["metrics"]["query_loss@10"]["mean"]
    assert "query_loss@10" in out and "±" in out  # the rich table


def test_without_validation_evaluate_uses_last_and_best_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--out", str(run), *VAL, "--set", "train.val_every=0")[0] == 0
    assert not (run / "checkpoints" / "best.pt").exists()
    assert all("val_loss@10" not in r for r in rows(run))
    code, out = invoke("evaluate", str(run), "--checkpoint", "best", "--quiet")
    assert code == 2 and "no best checkpoint" in out and "--checkpoint last" in out
    code, out = invoke("evaluate", str(run), "--quiet")
    assert code == 0 and json.loads((run / "eval.json").read_text())["checkpoint"] == "last"
    code, out = invoke("evaluate", str(run), "--checkpoint", "middle", "--quiet")
    assert code == 2 and "best or last" in out


def test_resumed_run_keeps_its_best_so_far(tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", "--out", str(straight), *VAL)[0] == 0
    assert invoke("train", "--out", str(split), *VAL, "--set", "train.meta_iters=20")[0] == 0
    spec_path = split / "spec.yaml"
    spec_path.write_text(spec_path.read_text().replace("meta_iters: 20", "meta_iters: 40"))
    assert invoke("train", "--resume", str(split), "--quiet")[0] == 0
    a = load(straight / "checkpoints" / "best.pt", torch.device("cpu"))
    b = load(split / "checkpoints" / "best.pt", torch.device("cpu"))
    assert a["done"] == b["done"] and a["state"]["best"] == b["state"]["best"]
    assert all(torch.equal(a["state"]["meta"][k], b["state"]["meta"][k]) for k in a["state"]["meta"])


def fixed_eval(seed: int, batch: int) -> dict[str, dict[str, float]]:
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["dtype=float64"])
    parts = build_episodic_run(spec, device="cpu")
    meta = parts.learner.init_params()
    return episodic.evaluate(parts, meta, "test", 12, seed, [1, 3], batch)


def test_fixed_test_tasks_do_not_depend_on_the_batching() -> None:
    """One seed, one task set: chunks of 5 (5, 5, 2) and one chunk of 12 give the same per-task values."""
    a, b = fixed_eval(1234, 5), fixed_eval(1234, 12)
    for name in a:
        assert a[name]["n"] == 12
        assert math.isclose(a[name]["mean"], b[name]["mean"], rel_tol=1e-12)
        assert math.isclose(a[name]["ci95"], b[name]["ci95"], rel_tol=1e-9)
    assert fixed_eval(1235, 12)["query_loss@1"]["mean"] != a["query_loss@1"]["mean"]


def test_batched_evaluation_equals_a_per_task_loop() -> None:
    """The vmap over tasks computes exactly what adapting each task on its own would."""
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["dtype=float64"])
    parts = build_episodic_run(spec, device="cpu")
    meta = parts.learner.init_params()
    tasks = parts.dataset.sample(
        "test", 4, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float64
    )
    batched = episodic.batch_metrics(parts, meta, tasks, [2], torch.Generator())["query_loss@2"]
    for i in range(4):
        phi = parts.algorithm.adapt(
            meta, type(tasks.support)(tasks.support.x[i], tasks.support.y[i]), steps=2
        )
        loss = parts.learner.loss(phi, type(tasks.query)(tasks.query.x[i], tasks.query.y[i]))
        assert math.isclose(float(batched[i]), float(loss), rel_tol=1e-10)


def test_summary_confidence_interval_is_1_96_sigma_over_sqrt_n() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    mean = 3.5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)  # sample standard deviation
    out = episodic.summarize(values)
    assert out["mean"] == mean and out["n"] == 4
    assert math.isclose(out["ci95"], 1.96 * std / 2.0, rel_tol=1e-12)


def test_evaluate_ci95_is_1_96_sample_std_over_sqrt_n_of_the_per_task_values() -> None:
    """Catches a 95% interval computed with another factor than 1.96 (e.g. 1.0) or with the population
    std: the per-task query losses are recomputed here one task at a time and summarised independently."""
    spec, _ = load_spec(algo="maml", dataset="sinusoid", overrides=["dtype=float64"])
    parts = build_episodic_run(spec, device="cpu")
    meta = parts.learner.init_params()
    n, seed = 6, 77
    out = episodic.evaluate(parts, meta, "test", n, seed, [1], 4)["query_loss@1"]
    losses = []
    for i in range(n):
        task = parts.dataset.sample("test", 1, episodic.task_generator(seed, i), parts.device, parts.dtype)
        support, query = (type(b)(b.x[0], b.y[0]) for b in (task.support, task.query))
        phi = parts.algorithm.adapt(meta, support, steps=1)
        losses.append(float(parts.learner.loss(phi, query)))
    assert out["n"] == n and math.isclose(out["mean"], statistics.fmean(losses), rel_tol=1e-10)
    sample_ci = 1.96 * statistics.stdev(losses) / math.sqrt(n)  # the documented definition
    assert math.isclose(out["ci95"], sample_ci, rel_tol=1e-9)
    assert not math.isclose(out["ci95"], 1.96 * statistics.pstdev(losses) / math.sqrt(n), rel_tol=1e-3)
    assert not math.isclose(out["ci95"], statistics.stdev(losses) / math.sqrt(n), rel_tol=1e-3)


def test_evaluate_follows_eval_seed(tmp_path: Path) -> None:
    """Catches ``metacli evaluate`` ignoring ``eval.seed``: one seed gives identical results on every call,
    another seed other test tasks, and each eval.json equals the engine's evaluation on its own seed."""
    run = tmp_path / "run"
    code, out = invoke(
        "train", "--out", str(run), *VAL, "--set", "train.meta_iters=4", "--set", "train.val_every=0"
    )
    assert code == 0, out

    def evaluate_with_seed(seed: int) -> dict[str, Any]:
        raw = yaml.safe_load((run / "spec.yaml").read_text())
        raw["eval"]["seed"] = seed
        (run / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        code, out = invoke("evaluate", str(run), "--quiet")
        assert code == 0, out
        result: dict[str, Any] = json.loads((run / "eval.json").read_text())
        return result

    a, b, again = evaluate_with_seed(1234), evaluate_with_seed(99), evaluate_with_seed(1234)
    assert (a["seed"], b["seed"], again["seed"]) == (1234, 99, 1234)
    assert again["metrics"] == a["metrics"]  # same seed: the same tasks, the same numbers
    assert b["metrics"]["query_loss@10"]["mean"] != a["metrics"]["query_loss@10"]["mean"]
    spec, _ = load_spec(run / "spec.yaml")
    parts = build_episodic_run(spec, device="cpu")
    meta = load(run / "checkpoints" / "last.pt", torch.device("cpu"))["state"]["meta"]
    for seed, result in ((1234, a), (99, b)):
        direct = episodic.evaluate(parts, meta, "test", 10, seed, [10], spec.eval.batch)["query_loss@10"]
        assert math.isclose(result["metrics"]["query_loss@10"]["mean"], direct["mean"], rel_tol=1e-6)


def test_two_methods_are_meta_tested_on_identical_tasks() -> None:
    """MAML and Reptile runs (other models and seeds), built separately, draw the same test tasks."""
    drawn = []
    same_data = ["data.shots=5", "data.queries=5", f"data.phase=[0.0, {math.pi}]"]
    for algo, seed in (("maml", 0), ("reptile", 7)):
        spec, _ = load_spec(algo=algo, dataset="sinusoid", overrides=[*same_data, f"seed={seed}"])
        parts = build_episodic_run(spec, device="cpu")
        ids = range(7)
        drawn.append(
            episodic.stack_tasks(
                [parts.dataset.sample("test", 1, episodic.task_generator(1234, i)) for i in ids]
            )
        )
    a, b = drawn
    assert torch.equal(a.support.x, b.support.x) and torch.equal(a.query.y, b.query.y)


# Every field's real range: one rule per kind of value (metacli.engine.config.fields), refused at validation


BAD_VALUES = [
    ("seed=-1", "seed:"),  # numpy refuses negative seeds
    (f"seed={2**70}", "seed:"),  # torch overflows above 2**64, numpy above 2**32 - 1
    (f"seed={2**32}", "seed:"),
    ("train.val_seed=-1", "train.val_seed:"),
    (f"eval.seed={2**32}", "eval.seed:"),
    ("model.hidden=[-3]", "model.hidden.0:"),
    (f"model.hidden=[{10**9}]", "model.hidden"),  # 3e9 parameters: refused by size, naming the field
    ("model.hidden=[true]", "model.hidden.0:"),
    ("algorithm.alpha=.nan", "algorithm.alpha:"),
    ("algorithm.alpha=.inf", "algorithm.alpha:"),
    ("algorithm.outer_lr=-1", "algorithm.outer_lr:"),
    ("algorithm.outer_lr=0", "algorithm.outer_lr:"),
    ("algorithm.alpha=true", "algorithm.alpha:"),  # a boolean is not a rate
    ("algorithm.grad_clip=-.inf", "algorithm.grad_clip:"),
    ("algorithm.mask_init_shift=.nan", "algorithm.mask_init_shift:"),
    ("train.meta_batch=true", "train.meta_batch:"),  # lax pydantic would read 1
    ("algorithm.inner_steps=true", "algorithm.inner_steps:"),
    ("data.shots=2.5", "data.shots:"),
    (f"train.meta_iters={2**40}", "train.meta_iters:"),
    (f"train.meta_batch={10**8}", "eval.batch"),  # vmapped: 4e10 activation values, the fix names the fields
    ("eval.inner_steps=[]", "eval.inner_steps:"),
    ("data.amplitude=[0.1, 1e300]", "data.amplitude.1:"),
    ("threads=1000000000", "threads:"),  # torch.set_num_threads fails
    ("threads=true", "threads:"),
    ("device=cuda:-1", "device:"),
    ("device=cuda:128", "device:"),  # torch keeps device numbers in 8 bits: cuda:128 is cuda:-128
    ("device=tpu", "device:"),
    ('data_root=""', "data_root:"),  # "" would silently mean the default folder
]


@pytest.mark.parametrize(("override", "path"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_value_outside_its_real_range_is_a_clear_error(override: str, path: str, tmp_path: Path) -> None:
    """Each of these was accepted and ended as an internal error, a silent degenerate run or a misleading
    "diverged" message; now validation names the field (its dotted path) and nothing is created."""
    run = tmp_path / "run"
    code, out = invoke("train", "--set", override, "--out", str(run), "--quiet")
    assert code == 2 and path in out, out
    assert "internal error" not in out and "Traceback" not in out and "Value error" not in out
    assert not run.exists()


ONLINE_BAD = [
    ("data.tasks=true", "data.tasks:"),  # lax pydantic would read 1, a divisor of 10000
    ("data.seed=-1", "data.seed:"),
    ("algorithm.K=0", "algorithm.K:"),
    ("algorithm.weight_decay=-.inf", "algorithm.weight_decay:"),
    ("online.rounds=false", "online.rounds:"),
]


@pytest.mark.parametrize(("override", "path"), ONLINE_BAD, ids=[o for o, _ in ONLINE_BAD])
def test_online_fields_have_their_ranges_too(override: str, path: str) -> None:
    code, out = invoke("train", "--algo", "moml", "--dataset", "smnist", "--set", override, "--quiet")
    assert code == 2 and path in out and "internal error" not in out, out


def test_the_bounds_themselves_are_accepted_and_usable_by_every_consumer() -> None:
    """The largest seed is taken by torch, numpy and the fixed-task seeding; the limits are not too tight."""
    import numpy as np

    from metacli.engine.config.fields import MAX_SEED

    spec, _ = load_spec(overrides=[f"seed={MAX_SEED}", f"eval.seed={MAX_SEED}", "seed=0", "threads=1024"])
    assert spec.eval.seed == MAX_SEED and spec.threads == 1024
    torch.Generator().manual_seed(MAX_SEED)
    episodic.task_generator(MAX_SEED, 10**6)  # seed * 1_000_003 + index stays below 2**64
    np.random.RandomState(MAX_SEED)
    load_spec(
        overrides=["device=cuda:127", "algorithm.alpha=1", "model.hidden=[]", "data.amplitude=[-1e6, 1e6]"]
    )


@pytest.mark.parametrize(
    ("algo", "dataset", "model"),
    [
        ("maml", "sinusoid", "{name: mlp, hidden: [7, 3]}"),
        ("maml", "omniglot", "{name: conv4, filters: 5, pool: stride}"),
        ("maml", "miniimagenet", "{name: conv4, filters: 3, pool: max}"),
        ("maml", "cifar_fs", "{name: resnet12, widths: [2, 3, 4, 5], pooling: first_three}"),
        ("moml", "smnist", "{name: mlp, hidden: [11]}"),
    ],
)
def test_the_parameter_count_checked_at_validation_is_the_built_networks(
    algo: str, dataset: str, model: str
) -> None:
    """The size bound counts what the engine builds (a wrong formula would refuse or pass the wrong nets)."""
    from metacli.engine.models import MODELS

    spec, _ = load_spec(algo=algo, dataset=dataset, overrides=[f"model={model}"])
    shape, outputs = spec.data.input_shape(), spec.data.outputs()
    network = MODELS[spec.model.name](spec.model, shape, outputs)
    assert spec.model.parameter_count(shape, outputs) == sum(p.numel() for p in network.parameters())


def test_a_network_the_data_cannot_feed_is_refused_at_validation() -> None:
    code, out = invoke("train", "--set", "model={name: conv4}", "--quiet")  # images only; sinusoid is 1-D
    assert code == 2 and "conv4 needs image inputs" in out and "model: {name: mlp}" in out, out
    code, out = invoke(
        "train", "--algo", "maml", "--dataset", "omniglot", "--set", "model.pool=max", "--set",
        "data.image_size=12", "--quiet",
    )  # fmt: skip
    assert code == 2 and "leaves no pixel of 12x12 images" in out, out
