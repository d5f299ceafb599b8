"""``metacli ls`` and ``metacli cp``: every shipped config listed and copyable, from the package's files."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
import yaml
from typer.testing import CliRunner

from metacli.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SHIPPED = sorted(
    p.relative_to(CONFIGS).with_suffix("").as_posix()
    for p in CONFIGS.rglob("*.yaml")
    if p.name != "presets.yaml"
)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def listed(out: str) -> dict[str, list[str]]:
    """``ls`` rows by config name (the preset mark dropped): the remaining columns split on runs of spaces."""
    rows = {}
    for line in out.splitlines()[1:-1]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[0].removesuffix(" *")] = cells[1:]
    return rows


def test_ls_lists_every_shipped_config_with_its_algorithm_dataset_and_published_number() -> None:
    """Catches a config left out of the list, or a row naming another file's algorithm or dataset."""
    code, out = invoke("ls")
    assert code == 0, out
    rows = listed(out)
    assert sorted(rows) == SHIPPED
    for name in SHIPPED:
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        if "grid" not in raw:
            assert rows[name][:2] == [raw["algorithm"]["name"], raw["data"]["name"]], name
    assert rows["omniglot/5way_1shot_maml"][2:] == [
        "5-way 1-shot",
        "conv4 filters=64",
        "query_acc@3 98.70 ± 0.40 (Finn et al. 2017, Table 1)",
    ]
    assert rows["smnist/moml_grid"][0] == "moml (grid of 24)"
    assert "smnist/moml *" in out and "smnist/moml_grid *" not in out  # the file --algo/--dataset runs


def test_ls_filters_by_algorithm_and_dataset() -> None:
    assert sorted(listed(invoke("ls", "--algo", "moml")[1])) == ["smnist/moml", "smnist/moml_grid"]
    assert sorted(listed(invoke("ls", "--dataset", "fc100")[1])) == [
        "fc100/5way_5shot_itd_bio",
        "fc100/5way_5shot_memory_reduced",
    ]
    both = listed(invoke("ls", "--algo", "reptile", "--dataset", "omniglot")[1])
    assert sorted(both) == [n for n in SHIPPED if n.startswith("omniglot/") and n.endswith("_reptile")]


def test_ls_of_an_unknown_name_suggests_the_closest() -> None:
    code, out = invoke("ls", "--algo", "mamll")
    said = " ".join(out.split())
    assert code == 2 and "Did you mean maml?" in said and "Traceback" not in said


def test_every_config_is_package_data() -> None:
    """Catches a config that a wheel would leave out (ls and cp read the installed package's files)."""
    table = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    shipped = re.findall(r'"(presets/[^"]+)"', table)  # tomllib is not in Python 3.10's library
    for name in [*SHIPPED, "presets"]:
        assert any(PurePosixPath(f"presets/{name}.yaml").match(p) for p in shipped), name


def test_cp_copies_a_config_that_trains_and_names_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = invoke("cp", "omniglot/5way_1shot_maml")
    assert code == 0, out
    copy = tmp_path / "omniglot_5way_1shot_maml.yaml"
    source = (CONFIGS / "omniglot/5way_1shot_maml.yaml").read_text()
    assert copy.read_text() == source.replace(
        "metacli train configs/omniglot/5way_1shot_maml.yaml", "metacli train omniglot_5way_1shot_maml.yaml"
    )
    assert f"metacli train {copy.name}" in out
    code, out = invoke("train", str(copy), "--fields")
    assert code == 0 and "omniglot" in out


def test_cp_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    dest = tmp_path / "mine.yaml"
    dest.write_text("my edits\n")
    code, out = invoke("cp", "sinusoid/maml", str(dest))
    assert code == 2 and "--force" in out and dest.read_text() == "my edits\n"
    code, out = invoke("cp", "sinusoid/maml.yaml", str(dest), "--force")
    assert code == 0 and dest.read_text().startswith("# metacli train " + str(dest))
    code, out = invoke("cp", "configs/smnist/moml.yaml", str(tmp_path))  # a folder: the file goes in it
    assert code == 0 and (tmp_path / "smnist_moml.yaml").is_file()


def test_cp_of_an_unknown_name_lists_near_matches_and_writes_nothing(tmp_path: Path) -> None:
    code, out = invoke("cp", "5way_1shot_mamll", str(tmp_path / "x.yaml"))
    said = " ".join(out.split())
    assert code == 2 and "Near matches: miniimagenet/5way_1shot_maml, omniglot/5way_1shot_maml," in said
    code, out = invoke("cp", "smnist/moml", str(tmp_path / "missing" / "x.yaml"))
    assert code == 2 and "does not exist" in out
    assert list(tmp_path.iterdir()) == []
