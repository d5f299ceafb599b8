"""The first logged losses of three tiny runs, pinned: a refactor that keeps every oracle green but changes
a default, an initialisation, a draw order or a data path changes these numbers (torchtune's loss tests).

Each run goes through the real CLI in float64, one thread. When a change is *meant* to change a run, say
so in the CHANGELOG and regenerate the values with ``python -m tests.test_pinned_losses``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app
from tests.engine.test_omniglot import write_tiny_archives

COMMON = ["--set", "dtype=float64", "--set", "threads=1", "--quiet"]


def sets(*fields: str) -> list[str]:
    return [x for f in fields for x in ("--set", f)]


FEW_SHOT = sets("train.log_every=1", "eval.tasks=2")
OMNIGLOT_FIXTURE = [
    *sets("train.meta_iters=3", "train.meta_batch=2", "train.val_every=0", "model.filters=8"),
    *sets("data.split=lake", "data.lake_val_characters=2", "data.image_size=28", "data.ways=3"),
    *sets("data.queries=2", "model.init=torch"),  # the init these values were pinned with
]
RUNS: dict[str, list[str]] = {
    "sinusoid maml": [
        "--algo", "maml", "--dataset", "sinusoid", *FEW_SHOT, *sets("model.init=torch"),
        *sets("train.meta_iters=4", "train.meta_batch=3"),
    ],
    "omniglot-fixture lslr": [  # batch norm adapted, as every variant did when these values were pinned
        "--algo", "lslr", "--dataset", "omniglot", *FEW_SHOT, *OMNIGLOT_FIXTURE,
        *sets("algorithm.adapt_norm=true"),
    ],
    "omniglot-fixture lslr, preset norm": [
        "--algo", "lslr", "--dataset", "omniglot", *FEW_SHOT, *OMNIGLOT_FIXTURE,
    ],
    "smnist moml": ["--algo", "moml", "--dataset", "smnist", *sets("online.rounds=3", "model.hidden=[20]")],
}  # fmt: skip
KEYS = {name: "ctm_loss" if name.startswith("smnist") else "query_loss" for name in RUNS}
PINNED: dict[str, list[float]] = {  # main 91580fc, before the engine's seams were moved (issue 22)
    "sinusoid maml": [6.08546034693487, 2.961819714743053, 3.2976234013667867, 3.536531838751293],
    "omniglot-fixture lslr": [1.086914931532668, 1.4095947681189234, 1.5054290330851297],
    # issue 23: the preset keeps batch norm out of LSLR's inner loop (MAML++'s code); only that differs above
    "omniglot-fixture lslr, preset norm": [1.1047558025386142, 1.37770162858033, 1.4721819479862965],
    "smnist moml": [2.3099237885671577, 2.6483659828079658, 2.7466259116710714],
}


def first_losses(name: str, tmp: Path, data: Path | None) -> list[float]:
    """The run's logged ``KEYS[name]`` values, in order."""
    args = ["train", *RUNS[name], *COMMON, "--out", str(tmp / "run")]
    if name.startswith("omniglot"):
        write_tiny_archives(tmp / "data" / "omniglot")
        args += ["--data-root", str(tmp / "data")]
    elif data is not None:
        args += ["--data-root", str(data)]
    result = CliRunner().invoke(app, args, env={"METACLI_TRUST_DATA": "1", "XDG_CACHE_HOME": str(tmp / "c")})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return [float(r[KEYS[name]]) for r in rows]


def mnist_root() -> Path | None:
    root = Path(os.environ.get("METACLI_DATA", Path(__file__).parents[2] / "shared" / "data"))
    return root if (root / "mnist").is_dir() else None


@pytest.mark.parametrize("name", list(RUNS))
def test_the_first_losses_are_unchanged(name: str, tmp_path: Path) -> None:
    """Catches any change of what a tiny run computes (to 1e-6 relative, float64)."""
    data = mnist_root()
    if name.startswith("smnist") and data is None:
        pytest.skip("needs MNIST under ../shared/data or $METACLI_DATA")
    got = first_losses(name, tmp_path, data)
    assert got == pytest.approx(PINNED[name], rel=1e-6, abs=1e-9), got


if __name__ == "__main__":  # print the values to pin
    import tempfile

    for run in RUNS:
        with tempfile.TemporaryDirectory() as folder:
            print(f"{run!r}: {first_losses(run, Path(folder), mnist_root())},", file=sys.stdout)
