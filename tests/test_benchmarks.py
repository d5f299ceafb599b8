"""Smoke test of ``benchmarks.suite``: its ``--quick`` mode on every case at tiny sizes, peers included.

The suite itself (``python -m benchmarks.suite``) is a benchmark, not a test; this only catches a broken
peer adapter or a broken suite: every contender's meta-gradient must agree with metacli's loop executor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("higher", reason="benchmark peer 'higher' not installed (pip install -e .[bench])")
pytest.importorskip("torchopt", reason="benchmark peer 'torchopt' not installed (pip install -e .[bench])")

from benchmarks import peers, suite  # noqa: E402  (after the skips: it needs neither, but the test needs both)
from metacli.engine.models import build_model  # noqa: E402
from metacli.engine.models.conv4 import Conv4Config, ConvBlock  # noqa: E402
from metacli.engine.models.resnet12 import ResBlock, ResNet12Config  # noqa: E402


def test_quick_suite_runs_every_case_and_its_contenders_agree(tmp_path: Path) -> None:
    """Every case at ``--quick`` size (the ``ltm`` case once broke unseen when a signature changed), and in
    each MAML case every contender's meta-gradient agrees with metacli's loop executor."""
    out_path = tmp_path / "suite.json"
    out = suite.main(["--quick", "--repeats", "1", "--output", str(out_path)])
    assert [c["case"] for c in out["cases"]] == list(suite.CASES)
    for case in out["cases"]:
        rows = {r["contender"]: r for r in case["rows"]}
        assert rows, case["case"]
        if case["case"] in suite.ONLINE_CASES:
            continue
        assert set(rows) == {*suite.METACLI, *suite.PEERS}, case["case"]
        for name, row in rows.items():
            assert row["check"]["ok"], f"{case['case']}, {name}: {row['check_text']}"
            check = row["check"]  # float32 round-off beyond the tolerance is settled in float64
            assert check["float32"] <= suite.GRAD_RTOL or check["float64"] <= suite.GRAD_RTOL_F64
            assert row["tasks_per_s"] > 0 and row["peak_bytes"] > 0
    assert [c["case"] for c in json.loads(out_path.read_text())["cases"]] == list(suite.CASES)


@pytest.mark.parametrize(
    "cfg", [Conv4Config(filters=4, pool="max"), ResNet12Config(widths=(4, 6, 8, 10), pooling="first_three")]
)
def test_peers_get_the_textbook_blocks_with_the_same_function(cfg: Conv4Config | ResNet12Config) -> None:
    """The peers' copy runs activation -> max-pool (as their users write it) and computes the same logits."""
    torch.manual_seed(0)
    model = build_model(cfg, (3, 16, 16), 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    net = peers.torch_module(model, params)
    blocks = [m for m in net.modules() if isinstance(m, ConvBlock | ResBlock)]
    assert blocks and all(type(m) in peers.TEXTBOOK.values() for m in blocks)
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(net(x), model(x))
