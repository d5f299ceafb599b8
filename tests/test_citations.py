"""Every project file the source and the documentation cite exists in the repository.

Scanned: every ``.py`` under ``metacli/``, ``benchmarks/`` and ``tests/``; ``README.md``,
``CHANGELOG.md`` and every ``.md`` under ``docs/``; every ``.yaml`` under ``configs/``. Cited:

- a path from the repository root to a source, config or note, such as ``docs/maml_family.md``,
  ``configs/sinusoid/maml.yaml`` or ``metacli/engine/inner.py`` (prefixes :data:`ROOTS`, extensions
  :data:`EXTENSIONS`). A path written as a pattern (``configs/omniglot/<N>way_<K>shot_<algo>.yaml``,
  ``configs/{omniglot,miniimagenet}/...``, ``configs/smnist/$m.yaml``, ``docs/...md``) must match at least
  one file;
- a top-level note by its bare name (``README.md``, ``CHANGELOG.md``);
- in markdown, a relative link or image ``[text](target)``, resolved from the folder of the file holding it.

A citation that names no file of the repository fails the test with ``file:line: citation``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROOTS = ("docs", "configs", "benchmarks", "metacli", "tests", ".ci")
"""Folders whose files are cited by their path from the repository root."""
EXTENSIONS = ("md", "yaml", "yml", "py")
"""File types a citation may name (outputs such as ``benchmarks/results/*.json`` are not project files)."""

_PATH = re.compile(
    r"(?<![\w./~-])"  # not the tail of a longer path, a URL or a home folder
    rf"((?:{'|'.join(re.escape(r) for r in ROOTS)})/[\w./<>{{}},$*-]*?\.(?:{'|'.join(EXTENSIONS)}))"
    r"(?![\w/-])"
)
_TOP_NOTE = re.compile(r"(?<![\w./~-])([A-Z][A-Z0-9_]*\.md)\b")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)
_SKIP_DIRS = {".git", ".venv", "__pycache__", "presets", "node_modules", ".mypy_cache", ".ruff_cache"}
"""Never scanned: tooling, and ``metacli/presets``, a link to ``configs/`` (scanned as itself)."""


def scanned_files(repo: Path = REPO) -> list[Path]:
    """The files whose citations are checked."""
    files = [repo / "README.md", repo / "CHANGELOG.md"]
    for folder, suffixes in (
        ("metacli", (".py",)),
        ("benchmarks", (".py",)),
        ("tests", (".py",)),
        ("docs", (".md",)),
        ("configs", (".yaml", ".yml")),
    ):
        for root, dirs, names in os.walk(repo / folder):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            files += [Path(root) / n for n in sorted(names) if n.endswith(suffixes)]
    return [f for f in files if f.is_file()]


def _expand_braces(path: str) -> list[str]:
    """``a/{b,c}/d`` -> ``a/b/d``, ``a/c/d`` (nested and repeated braces too)."""
    found = re.search(r"\{([^{}]*)\}", path)
    if found is None:
        return [path]
    head, tail = path[: found.start()], path[found.end() :]
    return [x for alt in found.group(1).split(",") for x in _expand_braces(head + alt + tail)]


def _as_glob(path: str) -> str:
    """A placeholder (``<name>``, ``$var``, ``*``, an ellipsis) becomes a wildcard; a plain path stays."""
    return re.sub(r"<[^<>/]*>|\$\w+|\*+|\.\.\.", "*", path)


def _exists(path: str, base: Path, repo: Path) -> bool:
    """Whether ``path`` (from ``base``) names a file or folder of the repository (a pattern: matches one)."""
    repo = repo.resolve()
    for one in _expand_braces(path):
        pattern = _as_glob(one)
        if "*" not in pattern:
            target = (base / pattern).resolve()
            if not (target.is_relative_to(repo) and target.exists()):
                return False
            continue
        folder = (base / pattern).parent
        if "*" in str(folder.relative_to(base)):
            matches = list(base.glob(pattern))
        else:
            matches = [p for p in folder.glob("*") if fnmatch.fnmatch(p.name, Path(pattern).name)]
        if not matches:
            return False
    return True


def citations(file: Path, repo: Path = REPO) -> Iterator[tuple[int, str, Path]]:
    """``(line, citation, folder it is relative to)`` for every citation in ``file``."""
    markdown = file.suffix == ".md"
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        for found in _PATH.finditer(line):
            yield number, found.group(1), repo
        for found in _TOP_NOTE.finditer(line):
            yield number, found.group(1), repo
        if markdown:
            for found in _LINK.finditer(line):
                target = found.group(1).split("#", 1)[0]
                if target and not _EXTERNAL.match(found.group(1)):
                    yield number, target, file.parent


def missing_citations(repo: Path = REPO) -> list[str]:
    """``file:line: citation`` for every citation that names no file of the repository."""
    found = (
        f"{file.relative_to(repo)}:{number}: {cited}"
        for file in scanned_files(repo)
        for number, cited, base in citations(file, repo)
        if not _exists(cited, base, repo)
    )
    return list(dict.fromkeys(found))  # a link's target is also a path: reported once


def test_every_cited_project_file_exists() -> None:
    missing = missing_citations()
    assert not missing, "citations of files that do not exist:\n" + "\n".join(missing)


def test_the_scan_sees_the_notes_and_their_citations() -> None:
    """The scan is not vacuous: the notes are scanned and cited, and a planted bad citation is caught."""
    scanned = {f.relative_to(REPO).as_posix() for f in scanned_files()}
    assert {"README.md", "CHANGELOG.md", "docs/maml_family.md", "configs/sinusoid/maml.yaml"} <= scanned
    assert "metacli/engine/inner.py" in scanned and "tests/test_citations.py" in scanned
    readme = {cited for _, cited, _ in citations(REPO / "README.md")}
    assert {"docs/maml_family.md", "docs/bilevel.md", "docs/online.md", "docs/datasets.md"} <= readme


UNSHIPPED = "DESIGN" + ".md"
"""A top-level note that the repository does not hold (spelt so that this file does not cite it)."""


def _write(root: Path, name: str, text: str) -> None:
    """Writes ``root/name`` with ``@`` for ``/`` in both: the planted citations are not this file's own."""
    path = root / name.replace("@", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("@", "/"))


def test_a_citation_of_a_missing_file_is_reported_with_its_line(tmp_path: Path) -> None:
    _write(tmp_path, "configs@sinusoid@maml.yaml", "# see docs@notes.md\n")
    _write(tmp_path, "configs@omniglot@5way.yaml", "# [not a link in yaml](docs@nowhere.md)\n")
    _write(tmp_path, "docs@notes.md", "[up](..@README.md), [self](notes.md#top), [web](https:@@x.org@a.md)\n")
    _write(tmp_path, "CHANGELOG.md", "see https:@@example.org@docs@x.md and ~@docs@y.md\n")
    _write(
        tmp_path,
        "README.md",
        "See configs@sinusoid@maml.yaml, configs@{sinusoid,omniglot}@<name>.yaml, [n](docs@notes.md).\n"
        f"Gone: docs@missing.md, [link](docs@gone.md), configs@fc100@<name>.yaml, {UNSHIPPED}.\n",
    )
    _write(tmp_path, "metacli@mod.py", '"""Rule: docs@notes.md; code: metacli@mod.py, metacli@other.py."""\n')
    assert sorted(missing_citations(tmp_path)) == sorted(
        x.replace("@", "/")
        for x in [
            "README.md:2: docs@missing.md",
            "README.md:2: docs@gone.md",
            "README.md:2: configs@fc100@<name>.yaml",
            f"README.md:2: {UNSHIPPED}",
            "metacli@mod.py:1: metacli@other.py",
            "configs@omniglot@5way.yaml:1: docs@nowhere.md",
        ]
    )
