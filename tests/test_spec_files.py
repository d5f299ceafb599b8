"""Any spec file a user names is a valid spec or one clear error: exit 2, the file, its line, cause and fix.

Every kind of file ``metacli train SPEC`` may be given (a folder, a FIFO, a device, empty, binary, UTF-16,
huge, an alias bomb, duplicate keys, tags, tabs, no permission...) goes through the real CLI; none may
end as an "internal error", a traceback, a hang, or a run folder.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metacli.cli import app
from metacli.errors import SpecError
from metacli.spec import load_spec
from metacli.yamlfile import MAX_ALIASES, MAX_SPEC_BYTES, read_yaml

runner = CliRunner()
VALID = "algorithm: {name: maml}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"


def refused(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, source: str | None = None
) -> str:
    """Run ``metacli train SPEC --out <tmp>/out``: assert a clean exit 2 naming the file (or ``source``),
    without a traceback or a run folder; return the message on one line."""
    monkeypatch.chdir(tmp_path)  # a default --out (runs/...) would land here
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", str(spec), "--out", str(out), *args])
    raw = result.output + (result.stderr if result.stderr_bytes else "")
    said = [line for line in raw.splitlines() if not line.startswith("training ")]  # a run's first line
    text = " ".join(" ".join(said).split())  # the console wraps long messages
    assert result.exit_code == 2, text
    assert text.startswith("error:") and (source or spec.name) in text, text
    assert "internal error" not in text and "Traceback" not in raw, text
    assert isinstance(result.exception, SystemExit)
    assert not out.exists() and not (tmp_path / "runs").exists()  # no run folder, not even an empty one
    return text


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# Paths that are not regular files


def test_a_folder_is_refused_and_a_run_folder_points_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    assert "is a folder, not a spec file" in refused(folder, tmp_path, monkeypatch)
    (folder / "spec.yaml").write_text(VALID)  # a run directory: the user meant --resume
    assert "--resume" in refused(folder, tmp_path, monkeypatch)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the type must be checked first."""
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    texts: list[str] = []
    worker = threading.Thread(target=lambda: texts.append(refused(fifo, tmp_path, monkeypatch)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("metacli train blocked on a FIFO")
    assert texts and "named pipe (FIFO)" in texts[0]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_before_reading(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path(device).exists():
        pytest.skip(f"{device} does not exist here")
    assert "is a device, not a spec file" in refused(Path(device), tmp_path, monkeypatch)


def test_a_missing_file_and_a_path_through_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "does not exist" in refused(tmp_path / "nope.yaml", tmp_path, monkeypatch)
    through = write(tmp_path, "file", VALID) / "spec.yaml"  # ENOTDIR, not a traceback
    assert "does not exist" in refused(through, tmp_path, monkeypatch)


def test_an_unreadable_file_is_a_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 (as root, which reads anything, the open is made to fail as it would for a user)."""
    spec = write(tmp_path, "locked.yaml", VALID)
    spec.chmod(0)
    if os.geteuid() == 0:
        real_open = os.open

        def denied(path: object, *args: object, **kwargs: object) -> int:
            if str(path) == str(spec):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", denied)
    text = refused(spec, tmp_path, monkeypatch)
    assert "permission denied" in text and "chmod u+r" in text


# Files that are not a spec's text


@pytest.mark.parametrize("content", ["", "\n\n   \n", "# a comment only\n# and another\n"])
def test_an_empty_file_holds_no_fields(content: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = refused(write(tmp_path, "empty.yaml", content), tmp_path, monkeypatch)
    assert "holds no fields" in text and "algorithm:" in text


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (bytes(range(256)) * 4, "holds a NUL byte at line 1"),  # binary data
        (VALID.encode("utf-16"), "is UTF-16"),  # with its byte-order mark
        (VALID.encode("utf-16-le"), "holds a NUL byte at line 1"),  # without one
        (b"algorithm: {name: maml}\nmodel: {name: mlp}\nsource: caf\xe9\n", "byte 0xe9 at line 3"),  # Latin-1
        (
            VALID.encode() + b"seed: \x01\n",
            "line 4: it holds the control character U+0001",
        ),  # UTF-8, but a control character YAML refuses
    ],
    ids=["binary", "utf16-bom", "utf16-no-bom", "latin1", "control-char"],
)
def test_a_file_that_is_not_utf8_text_is_refused_with_the_line(
    content: bytes, cause: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = refused(write(tmp_path, "spec.yaml", content), tmp_path, monkeypatch)
    assert cause in text and ("UTF-8" in text or "control character" in text), text


def test_a_very_large_file_is_refused_naming_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = write(tmp_path, "big.yaml", VALID + "# " + "x" * MAX_SPEC_BYTES + "\n")
    text = refused(big, tmp_path, monkeypatch)
    assert f"{MAX_SPEC_BYTES:,} bytes (1 MiB)" in text
    write(tmp_path, "fits.yaml", VALID + "# " + "x" * (MAX_SPEC_BYTES - len(VALID) - 10) + "\n")
    assert load_spec(tmp_path / "fits.yaml")[0].algorithm.name == "maml"  # the limit itself is readable


# YAML that parses but that a spec must not be


def billion_laughs(levels: int, fan_out: int) -> str:
    """``levels`` anchors, each a list of ``fan_out`` aliases of the one before: fan_out**levels values."""
    lines = ['a0: &a0 ["lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan_out)}]" for i in range(1, levels + 1)]
    return VALID + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("levels", "fan_out", "cause"),
    [
        (9, 9, f"more than {MAX_ALIASES} aliases"),  # 81 aliases, 9**9 values
        (30, 2, "expands to more than 100,000 values"),  # 60 aliases only, but 2**30 values
    ],
    ids=["many-aliases", "few-aliases-deep"],
)
def test_an_alias_bomb_is_refused_in_under_a_second(
    levels: int, fan_out: int, cause: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both documents would take hours to expand (pydantic walks every alias); refused from the node graph."""
    bomb = write(tmp_path, "bomb.yaml", billion_laughs(levels, fan_out))
    start = time.perf_counter()
    text = refused(bomb, tmp_path, monkeypatch)
    assert time.perf_counter() - start < 1.0
    assert cause in text and "line" in text


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = refused(write(tmp_path, "loop.yaml", VALID + "grid: &g {seed: [*g]}\n"), tmp_path, monkeypatch)
    assert "refers to the anchor it is in" in text and "line 4" in text


def test_anchors_aliases_and_merge_keys_within_bounds_still_work(tmp_path: Path) -> None:
    """The limits are not zero: sharing a section and overriding a merged key stay valid."""
    spec = write(
        tmp_path,
        "anchors.yaml",
        "algorithm: &algo {name: maml, alpha: 0.1}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"
        + "grid:\n  algorithm:\n    - *algo\n    - {<<: *algo, alpha: 0.2}\n",
    )
    _, raw = load_spec(spec)
    assert raw["grid"]["algorithm"] == [{"name": "maml", "alpha": 0.1}, {"name": "maml", "alpha": 0.2}]


@pytest.mark.parametrize(
    ("content", "key", "lines"),
    [
        (VALID + "algorithm: {name: fomaml}\n", "algorithm", (1, 4)),  # top level
        ("algorithm:\n  name: maml\n  alpha: 0.1\n  alpha: 0.2\nmodel: {name: mlp}\ndata: {name: sinusoid}\n",
         "alpha", (3, 4)),  # inside a section
        (VALID + "grid:\n  algorithm:\n    - {name: maml, alpha: 0.1}\n    - name: anil\n      alpha: 0.1\n"
         "      alpha: 0.3\n", "alpha", (8, 9)),  # inside a grid list item
    ],
    ids=["top-level", "in-section", "in-grid-item"],
)  # fmt: skip
def test_a_key_given_twice_is_refused_naming_both_lines(
    content: str, key: str, lines: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = refused(write(tmp_path, "dup.yaml", content), tmp_path, monkeypatch)
    assert f"the key '{key}' is given twice" in text and f"(lines {lines[0]} and {lines[1]})" in text, text
    assert f"at line {lines[1]}," in text


@pytest.mark.parametrize(
    ("key", "kind"), [("1", "int"), ("on", "bool"), ("null", "NoneType"), ("[a, b]", "list")]
)
def test_a_key_that_is_not_text_is_refused(
    key: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = VALID + (f"? {key}\n: 1\n" if key.startswith("[") else f"{key}: 1\n")
    text = refused(write(tmp_path, "keys.yaml", content), tmp_path, monkeypatch)
    assert (f"is read as {kind}" if kind != "list" else "is a list or mapping") in text, text
    assert "line 4" in text and "quote" in text, text


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "!!python/object:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!!set {1, 2}", "!!set"),
        ("!!binary aGk=", "!!binary"),
        ("!custom 3", "!custom"),
    ],
)
def test_a_tag_is_refused_naming_it(
    value: str, tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = refused(write(tmp_path, "tag.yaml", VALID + f"seed: {value}\n"), tmp_path, monkeypatch)
    assert f"the tag {tag} is not allowed in a spec" in text and "line 4" in text, text


def test_tabs_name_the_line_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = refused(write(tmp_path, "tabs.yaml", VALID + "train:\n\tmeta_iters: 3\n"), tmp_path, monkeypatch)
    assert "line 5" in text and "Indent with spaces, not tabs" in text


def test_an_integer_too_long_for_python_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python refuses to read integers of more than 4300 digits (a ValueError, not a YAMLError)."""
    text = refused(write(tmp_path, "long.yaml", VALID + "seed: " + "9" * 5000 + "\n"), tmp_path, monkeypatch)
    assert "too many digits" in text and "line 4" in text


def test_deep_nesting_is_refused_not_a_recursion_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = write(tmp_path, "deep.yaml", VALID + "grid: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested more than" in refused(deep, tmp_path, monkeypatch)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("3\n", "int")])
def test_a_document_that_is_not_a_mapping(
    text: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert f"not a {kind}" in refused(write(tmp_path, "flat.yaml", text), tmp_path, monkeypatch)


def test_yaml_12_numbers_are_numbers_and_dates_stay_text(tmp_path: Path) -> None:
    """PyYAML reads 1e-3 as text and 2024-01-01 as a date; a spec reads a number and text."""
    spec = write(
        tmp_path,
        "floats.yaml",
        "algorithm: {name: maml, outer_lr: 1e-3, alpha: 2.5E-2}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n"
        "published: [{metric: query_loss@1, value: 1e0, source: 2024-01-01}]\n",
    )
    spec_, _ = load_spec(spec)
    assert spec_.algorithm.outer_lr == 1e-3 and math.isclose(spec_.algorithm.alpha, 0.025)
    assert spec_.published[0].source == "2024-01-01" and spec_.published[0].value == 1.0


def test_read_yaml_raises_only_spec_errors(tmp_path: Path) -> None:
    """The function itself (not only the CLI) turns every problem into a SpecError."""
    for name, content in (("a.yaml", b"\xff\xfe\x00"), ("b.yaml", b""), ("c.yaml", b"a: 1\na: 2\n")):
        with pytest.raises(SpecError, match=name):
            read_yaml(write(tmp_path, name, content))


# --set values go through the same loader


@pytest.mark.parametrize(
    ("override", "cause"),
    [
        ("algorithm={name: maml, name: fomaml}", "the key 'name' is given twice"),
        ("seed=!!python/object:os.system {}", "the tag !!python/object:os.system is not allowed"),
        (".a=1", "the key '.a' has an empty part"),
        ("a..b=1", "the key 'a..b' has an empty part"),
        ("algorithm.=1", "the key 'algorithm.' has an empty part"),
        ("grid={a..b: [1, 2]}", "the key 'a..b' has an empty part"),
        ("seed=" + "9" * 5000, "too many digits"),
    ],
)
def test_a_bad_override_is_one_clear_error(
    override: str, cause: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write(tmp_path, "spec.yaml", VALID)
    text = refused(spec, tmp_path, monkeypatch, "--set", override, source=override[:4])
    assert cause in text, text


def test_override_values_are_still_yaml_or_text() -> None:
    """The loader is shared but a value that is not YAML stays text, as before (and 1e-3 is a number)."""
    spec, _ = load_spec(overrides=["algorithm.outer_lr=1e-3", "data_root=a: b: c"])
    assert spec.algorithm.outer_lr == 1e-3 and spec.data_root == "a: b: c"


def test_cuda_asked_for_in_a_spec_on_a_machine_without_it_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``device: cuda`` is a valid spec (CUDA is a property of the machine, not of the spec); the run refuses
    it before creating anything (metacli.engine.device.resolve_device)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    spec = write(tmp_path, "gpu.yaml", VALID + "device: cuda\n")
    assert load_spec(spec)[0].device == "cuda"
    assert "CUDA is not available here" in refused(spec, tmp_path, monkeypatch, "--quiet", source="cuda")
