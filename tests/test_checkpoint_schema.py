"""The one checkpoint layout: versioned, refused when it belongs to another run, written atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metacli.cli import app
from metacli.files import atomic_write
from metacli.runlayer import checkpoint as ckpt
from metacli.spec import load_spec

runner = CliRunner()
FEW_SHOT = ["--set", "train.meta_iters=2", "--set", "train.meta_batch=2", "--set", "eval.tasks=2"]
"""A two-step few-shot run (MAML on sinusoid, the default preset)."""
ONLINE = ["--algo", "moml", "--dataset", "smnist", *("--set", "online.rounds=2", "--set", "algorithm.K=1")]
ONLINE += ["--set", "model.hidden=[8]"]
"""A two-round online run: MOML on the real S-MNIST stream, one outer step per round, a tiny MLP."""


def trained(tmp_path: Path, name: str, *extra: str, sizes: list[str] = FEW_SHOT) -> Path:
    run = tmp_path / name
    result = runner.invoke(app, ["train", *sizes, *extra, "-q", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


def resume(run: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(("protocol", "unit"), [("episodic", "step"), ("online", "round")])
def test_layout_is_the_same_for_both_protocols_and_holds_every_rng_state(
    protocol: str, unit: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if protocol == "online":  # the real S-MNIST stream: skipped, with the reason, where the data is absent
        data_root = request.getfixturevalue("data_root")
        request.getfixturevalue("session_cache")
        run = trained(tmp_path, "run", "--data-root", str(data_root), sizes=ONLINE)
    else:
        run = trained(tmp_path, "run")
    # tensors and builtins only: it loads as weights only, with no allow-list (tests/test_untrusted_files.py)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / "last.pt") == []
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["schema_version"] == ckpt.CHECKPOINT_VERSION and saved["protocol"] == protocol
    assert (saved["unit"], saved["done"]) == (unit, 2) and saved["wall_time"] > 0
    assert (
        set(saved["rng"]) == {"torch", "cuda", "numpy", "generators"} and "run" in saved["rng"]["generators"]
    )
    name, keys, *_ = saved["rng"]["numpy"]
    assert name == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)
    spec, _ = load_spec(run / "spec.yaml")
    assert saved["spec"] == ckpt.spec_fields(spec)  # the spec it was written for, field by field


def test_a_checkpoint_of_another_run_is_refused_naming_the_fields(tmp_path: Path) -> None:
    run = trained(tmp_path, "run")
    other = trained(tmp_path, "other", "--set", "seed=7", "--set", "model.hidden=[8, 8]")
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = (run / "metrics.jsonl").read_text()
    code, out = resume(run)
    assert code == 2 and "belongs to another run" in out, out
    assert "seed: 7 in the checkpoint, 0 in spec.yaml" in out and "model.hidden" in out
    assert "Traceback" not in out and (run / "metrics.jsonl").read_text() == before  # nothing touched


def test_an_older_schema_is_refused_with_the_versions(tmp_path: Path) -> None:
    run = trained(tmp_path, "run")
    path = run / "checkpoints" / "last.pt"
    old = torch.load(path, weights_only=False)
    torch.save({"step": 2, "meta": old["state"]["meta"]}, path)  # the pre-version-2 episodic layout
    code, out = resume(run)
    assert code == 2 and f"schema version 1, but this metacli reads version {ckpt.CHECKPOINT_VERSION}" in out
    torch.save({**old, "schema_version": 99}, path)
    code, out = resume(run)
    assert code == 2 and "schema version 99" in out


def test_a_changed_hyperparameter_resumes_with_a_warning_naming_it(tmp_path: Path) -> None:
    run = trained(tmp_path, "run")
    spec = run / "spec.yaml"
    text = spec.read_text()
    assert "meta_iters: 2" in text and "outer_lr: 0.001" in text
    spec.write_text(
        text.replace("meta_iters: 2", "meta_iters: 3").replace("outer_lr: 0.001", "outer_lr: 0.0005")
    )
    with pytest.warns(UserWarning, match="changed settings") as seen:
        code, out = resume(run)
    assert code == 0, out
    said = str(seen[0].message)
    assert "algorithm.outer_lr: 0.001 -> 0.0005" in said and "train.meta_iters: 2 -> 3" in said


def test_a_changed_setting_that_reshapes_the_state_is_a_clear_error(tmp_path: Path) -> None:
    run = trained(tmp_path, "run", "--algo", "lslr", "--dataset", "sinusoid")
    spec = run / "spec.yaml"
    spec.write_text(
        spec.read_text().replace("\n  inner_steps: 5\n", "\n  inner_steps: 3\n")
    )  # fewer learned rates
    code, out = resume(run)
    assert code == 2 and "does not fit the settings" in out and "Traceback" not in out


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half_then_fail(f: object) -> None:
        f.write(b"new, half")  # type: ignore[attr-defined]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]  # no temporary file left
