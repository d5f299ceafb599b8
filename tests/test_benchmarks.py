"""Smoke test of ``benchmarks.suite``: its ``--quick`` mode on one tiny case, peers included.

The suite itself (``python -m benchmarks.suite``) is a benchmark, not a test; this only catches a broken
peer adapter or a broken suite: every contender's meta-gradient must agree with metacli's loop executor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("higher", reason="benchmark peer 'higher' not installed (pip install -e .[bench])")
pytest.importorskip("torchopt", reason="benchmark peer 'torchopt' not installed (pip install -e .[bench])")

from benchmarks import suite  # noqa: E402  (after the skips: it needs neither, but the test needs both)


def test_quick_suite_contenders_agree(tmp_path: Path) -> None:
    out_path = tmp_path / "suite.json"
    out = suite.main(["--quick", "--cases", "omniglot", "--repeats", "1", "--output", str(out_path)])
    (case,) = out["cases"]
    rows = {r["contender"]: r for r in case["rows"]}
    assert set(rows) == {*suite.METACLI, *suite.PEERS}
    for name, row in rows.items():
        assert row["check"]["ok"], f"{name}: {row['check_text']}"
        assert row["check"]["float32"] <= suite.GRAD_RTOL
        assert row["tasks_per_s"] > 0 and row["peak_bytes"] > 0
    assert json.loads(out_path.read_text())["cases"][0]["case"] == "omniglot"
