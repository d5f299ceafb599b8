"""The README runs as written: its Python API example (in float32 and float64), and every ``metacli``
command of its shell blocks parses and, for ``train``, names a spec, preset and overrides that validate."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def shell_commands() -> list[str]:
    """Every ``metacli`` command in the README's bash blocks (torchrun's ``-m metacli`` ones included),
    with comments, line continuations and shell loops taken off, one placeholder per run name."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            for part in re.split(r"&&|;|\bdo\b", line):
                found = re.search(r"(?:^|\s)(?:-m )?metacli (train|evaluate|hedge|plot|ls|cp)\b(.*)", part)
                if found:
                    commands.append(f"{found.group(1)}{found.group(2)}".strip())
    return commands


def test_readme_has_a_python_api_example() -> None:
    assert any("meta_step" in b and "adapt" in b for b in python_blocks())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block", python_blocks())
def test_python_block_runs(block: str, dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    if dtype == "float64":
        assert "overrides=[" in block, "the example should take overrides, so a dtype can be set"
        block = block.replace("overrides=[", 'overrides=["dtype=float64", ')
    exec(compile(block, str(README), "exec"), {})  # noqa: S102 - our own documentation
    assert capsys.readouterr().out.strip()


def test_the_readme_shows_every_command() -> None:
    assert {c.split()[0] for c in shell_commands()} == {"train", "evaluate", "hedge", "plot", "ls", "cp"}


def copies() -> dict[str, Path]:
    """The files the README's ``metacli cp NAME DEST`` commands write, as DEST -> the shipped config."""
    found = [shlex.split(c) for c in shell_commands() if c.startswith("cp ")]
    return {args[2]: REPO / "configs" / f"{args[1]}.yaml" for args in found if len(args) > 2}


@pytest.mark.parametrize("command", shell_commands())
def test_every_readme_command_parses_and_its_spec_validates(command: str) -> None:
    import typer.main

    from metacli.cli import app
    from metacli.spec import load_spec

    args = shlex.split(command.replace("$m", "moml").replace("<name>", "NAME").replace("<time>", "T"))
    click_app = typer.main.get_command(app)
    ctx = click_app.make_context("metacli", args, resilient_parsing=False)  # exits on an unknown option
    sub = click_app.get_command(ctx, args[0])  # type: ignore[attr-defined]
    params = sub.make_context(args[0], args[1:]).params
    if args[0] != "train" or params["resume"] is not None:
        return
    spec_file = params["spec_file"]
    if spec_file is not None and spec_file.name == "SPEC.yaml":
        return  # the placeholder of the multi-machine example
    spec_path = REPO / spec_file if spec_file is not None else None
    if spec_file is not None and str(spec_file) in copies():  # a copy the README made with metacli cp
        spec_path = copies()[str(spec_file)]
    load_spec(spec_path, list(params["overrides"] or []), algo=params["algo"], dataset=params["dataset"])


def test_the_readme_shows_what_metacli_ls_prints() -> None:
    """Catches a config added or changed (Meta-SGD's was missing) without the README's ``ls`` listing."""
    from typer.testing import CliRunner

    from metacli.cli import app

    shown = re.search(r"```text\n(name +algorithm .*?)```", README.read_text(), flags=re.S)
    assert shown is not None, "the README has no `metacli ls` listing"
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0, result.output

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    assert lines(shown.group(1)) == lines(result.output)
