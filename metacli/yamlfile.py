"""Reading YAML files a user names: one strict loader for spec files, ``--set`` values and run folders.

A spec is small, plain text and means exactly what it says: this module refuses, naming the file, the
line and the fix, what YAML or the file system would otherwise accept silently or slowly (a key given
twice, an alias bomb, a tag that builds objects, a binary or huge file, a FIFO that never ends).
It imports neither torch nor pydantic: ``hedge`` and ``plot`` read run folders through it and start fast.
"""

from __future__ import annotations

import codecs
import os
import re
import reprlib
import stat
import typing
from pathlib import Path
from typing import Any

import yaml

from metacli.errors import SpecError

MAX_SPEC_BYTES = 1 << 20
"""Largest spec file read (1 MiB): real specs are a few kilobytes."""
MAX_ALIASES = 64
"""Most YAML aliases (``*name``) in one document: enough to share sections, too few for an alias bomb."""
MAX_VALUES = 100_000
"""Most values (scalars, lists, mappings) a document may hold once its aliases are expanded."""
MAX_DEPTH = 32
"""Deepest nesting of a document's values, and most parts of a dotted key."""

_TAG = "tag:yaml.org,2002:"
_REFUSED_TAGS = {f"{_TAG}{name}" for name in ("timestamp", "binary", "set", "omap", "pairs")}
"""Types a spec never holds: a date, bytes, a set (unordered), ordered pairs; refused as unknown tags."""
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
"""``1e-3``, ``2.5E4``: numbers in YAML 1.2 and JSON, text to YAML 1.1 (PyYAML) without this resolver."""


class YAMLRefusal(yaml.MarkedYAMLError):
    """A document that parses as YAML but is not a spec: the problem, where, and the fix."""

    def __init__(self, problem: str, fix: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


def _too_deep(mark: yaml.Mark | None) -> YAMLRefusal:
    """The refusal of values nested beyond MAX_DEPTH."""
    return YAMLRefusal(f"values are nested more than {MAX_DEPTH} levels deep", "flatten them", mark)


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, made strict for specs: cheap to refuse, nothing kept silently.

    Refused, with the line: a key given twice in one mapping (YAML keeps the last), a key that is not
    text (``1:``, ``on:``), more than MAX_ALIASES aliases or a document that would expand beyond MAX_VALUES
    values (an alias bomb, counted on the node graph without expanding it), nesting beyond MAX_DEPTH,
    integers too long for Python, and any tag but the plain types (``!!python/object``, ``!!set``...).
    ``2024-01-01`` stays text (no dates) and ``1e-3`` is a number, as in YAML 1.2.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != f"{_TAG}timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors = {
        tag: constructor
        for tag, constructor in yaml.SafeLoader.yaml_constructors.items()
        if tag not in _REFUSED_TAGS
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Count aliases and depth while composing (before any value is built)."""
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # (untyped in types-PyYAML)
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise YAMLRefusal(f"more than {MAX_ALIASES} aliases (*name)", "write the values out", mark)
        if self.depth >= MAX_DEPTH:
            raise _too_deep(mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        """The document's node graph, refused when its aliases would expand it beyond MAX_VALUES."""
        node = super().get_single_node()
        if node is not None:
            expanded_size(node, {}, set(), 1)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are text, each once (merge keys ``<<`` may still be overridden)."""
        check_keys(self, node)
        return super().construct_mapping(node, deep)

    def construct_spec_int(self, node: yaml.ScalarNode) -> int:
        """An integer, refused with its line when it is too long for Python to read."""
        try:
            return self.construct_yaml_int(node)
        except ValueError:
            too_long = f"the number {node.value[:20]}... has too many digits"
            raise YAMLRefusal(too_long, "write a smaller number", node.start_mark) from None

    def construct_undefined(self, node: yaml.Node) -> typing.NoReturn:
        """Any tag but the plain types: refused, naming it."""
        tag = str(node.tag).replace(_TAG, "!!")
        raise YAMLRefusal(
            f"the tag {tag} is not allowed in a spec",
            "remove it: a spec holds plain numbers, text, true/false, null, lists and mappings",
            node.start_mark,
        )


SpecLoader.add_constructor(f"{_TAG}int", SpecLoader.construct_spec_int)
SpecLoader.add_constructor(None, SpecLoader.construct_undefined)
SpecLoader.add_implicit_resolver(f"{_TAG}float", _EXPONENT_FLOAT, list("-+0123456789"))


def expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], depth: int) -> int:
    """Values in ``node`` once every alias is expanded, counted once per node of the graph (memoised).

    Raises YAMLRefusal beyond MAX_VALUES values or MAX_DEPTH levels, or for an alias inside its own anchor.
    """
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise YAMLRefusal("an alias refers to the anchor it is in", "remove that alias", node.start_mark)
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    size = 1 + sum(expanded_size(child, sizes, open_nodes, depth + 1) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_VALUES:
        raise YAMLRefusal(
            f"this value expands to more than {MAX_VALUES:,} values (through its aliases)",
            "write a smaller spec, with fewer aliases (*name)",
            node.start_mark,
        )
    sizes[id(node)] = size
    return size


def check_keys(loader: SpecLoader, node: yaml.MappingNode) -> None:
    """Refuse a key that is not text, or that the mapping ``node`` gives twice (naming both lines)."""
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == f"{_TAG}merge":
            continue
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            what = f"the key {reprlib.repr(key_node.value)} is read as {type(key).__name__}"
            if not isinstance(key_node, yaml.ScalarNode):
                what = "the key there is a list or mapping"
            raise YAMLRefusal(
                f"{what}, not as a field name",
                "field names are words (alpha:); quote a key meant as text, e.g. '1': or 'on':",
                key_node.start_mark,
            )
        if key in seen:
            raise YAMLRefusal(
                f"the key '{key}' is given twice in one mapping (lines {seen[key]} and {line}); YAML would "
                "silently keep the last",
                "remove one of them",
                key_node.start_mark,
            )
        seen[key] = line


def yaml_message(error: yaml.YAMLError, text: str, source: str) -> str:
    """A YAML error as one sentence: the source, the line and column, the problem and the fix."""
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)  # int for text
        return (
            f"{source} is not valid YAML at line {line}: it holds the control character U+{code:04X}. "
            "Remove it: a spec is plain text (is this a binary file?)."
        )
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(error, YAMLRefusal):
        return f"{source} is not a valid spec{where}: {error.problem}. {error.fix[0].upper()}{error.fix[1:]}."
    problem = getattr(error, "problem", None) or str(error)
    fix = "Indent with spaces, not tabs" if "'\\t'" in problem else "Fix the syntax there"
    return f"{source} is not valid YAML{where}: {problem}. {fix}."


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed by :class:`SpecLoader`; any YAML problem is a SpecError naming ``source``."""
    try:
        return yaml.load(text, Loader=SpecLoader)
    except yaml.YAMLError as e:
        raise SpecError(yaml_message(e, text, source)) from None


def read_spec_text(path: Path) -> str:
    """The text of a spec file: a regular file of at most MAX_SPEC_BYTES, in UTF-8.

    The file's type is checked before it is opened (a FIFO would block, /dev/zero never ends), and again
    on the open file, which is opened without blocking.
    """
    try:
        check_file(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            check_file(path, os.fstat(f.fileno()))
            raw = f.read(MAX_SPEC_BYTES + 1)
    except (OSError, ValueError) as e:
        raise SpecError(unreadable(path, e)) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(too_large(path, len(raw)))
    return decode_spec(path, raw)


def check_file(path: Path, info: os.stat_result) -> None:
    """Refuse a folder, a FIFO, a device or a socket, and a file above MAX_SPEC_BYTES, before reading."""
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISCHR: "a device",
        stat.S_ISBLK: "a device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(info.st_mode)), None)
    if kind is None and not stat.S_ISREG(info.st_mode):
        kind = "not a regular file"
    if kind is not None:
        run = " (to continue a run, pass it to --resume)" if (path / "spec.yaml").is_file() else ""
        raise SpecError(
            f"{path} is {kind}, not a spec file{run}. Name a YAML spec file, e.g. configs/sinusoid/maml.yaml."
        )
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(too_large(path, info.st_size))


def too_large(path: Path, size: int) -> str:
    """The refusal of a file above MAX_SPEC_BYTES."""
    return (
        f"{path} is {size:,} bytes or more; a spec file may hold at most {MAX_SPEC_BYTES:,} bytes (1 MiB). "
        "Name the spec file itself (a few kilobytes), not a data or checkpoint file."
    )


def unreadable(path: Path, error: OSError | ValueError) -> str:
    """Why a spec file cannot be opened (missing, no permission, a bad path...), and the fix."""
    if isinstance(error, FileNotFoundError | NotADirectoryError):
        return f"Spec file {path} does not exist. Check the path, or see configs/ for examples."
    if isinstance(error, PermissionError):
        return (
            f"Spec file {path} cannot be read: permission denied. Make it readable (chmod u+r {path}) or "
            "copy it somewhere you can read."
        )
    cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"Spec file {path} cannot be read: {cause}. Check the path, then run it again."


def decode_spec(path: Path, raw: bytes) -> str:
    """``raw`` as UTF-8 text; UTF-16, binary data and other encodings are refused with the line."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _not_text(path, "is UTF-16 (or UTF-32) text, not UTF-8")
    nul = raw.find(b"\0")
    if nul >= 0:
        return _not_text(path, f"holds a NUL byte at line {line_of(raw, nul)}: it is binary data")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"byte 0x{raw[e.start]:02x} at line {line_of(raw, e.start)}"
        return _not_text(path, f"is not UTF-8 text: {where} is not valid UTF-8")


def line_of(raw: bytes, offset: int) -> int:
    """The line (from 1) of byte ``offset`` of ``raw``."""
    return raw.count(b"\n", 0, offset) + 1


def _not_text(path: Path, why: str) -> typing.NoReturn:
    """Refuse a spec file that is not UTF-8 text."""
    raise SpecError(f"{path} {why}. Save the spec as UTF-8 text (it may be binary, or in another encoding).")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a spec file as a dict; anything else is a SpecError naming the file, the line and the fix."""
    data = load_yaml(read_spec_text(path), str(path))
    if data is None:
        raise SpecError(
            f"{path} holds no fields (it is empty, or only comments). Write the spec's sections in it "
            "(algorithm:, model:, data:, ...), e.g. as in configs/sinusoid/maml.yaml."
        )
    if not isinstance(data, dict):
        raise SpecError(
            f"{path} must hold a mapping of fields (algorithm:, data:, ...), not a {type(data).__name__}."
        )
    return data
