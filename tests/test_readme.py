"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_api_example() -> None:
    assert any("meta_step" in b and "adapt" in b for b in python_blocks())


@pytest.mark.parametrize("block", python_blocks())
def test_python_block_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, str(README), "exec"), {})  # noqa: S102 - our own documentation
    assert capsys.readouterr().out.strip()
