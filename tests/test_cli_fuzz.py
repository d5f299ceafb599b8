"""A fuzz harness for the whole CLI: random invocations of all four subcommands, and random signals.

Every invocation draws a subcommand and options with random and extreme values: spec files of every kind
(random bytes, truncated YAML, valid specs with extreme numbers, alias bombs, duplicate keys), paths of
every file type (missing, a folder, a file, a FIFO, a device, a folder inside a file, a name too long,
a finished run, a damaged run, a folder of online runs), ``--set`` overrides of known fields with values
of every type, and environment variables the CLI reads. For each it asserts: the exit code is 0, 1, 2 or
130; the output has no "internal error" and no traceback; it returns within a minute; and the finished
run it may touch is never lost or half-written (every file still there and readable, no temporary file,
no lock left behind).

Training invocations are shortened (at most 3 meta-steps, no validation) so that a valid spec costs a
fraction of a second; no real data is reachable ($METACLI_DATA points at an empty folder, downloads are
off), so data-backed specs end in their data errors.

Profiles: ``METACLI_FUZZ_EXAMPLES`` (default 250, under a minute here) sets the invocations; the
README's development section gives the long profile's command and result. ``METACLI_FUZZ_SURVEY=1``
records unclean exits and goes on (the test still fails at the end if there was one), and
``METACLI_FUZZ_REPORT=FILE`` writes the distinct exit paths and the unclean exits seen as JSON. The
bounded profile draws the same invocations every time (derandomised); the survey draws new ones each run.
``--overwrite`` of the finished run may replace its files (that is what it asks for); it must leave a
whole run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from metacli.cli import app
from metacli.runlayer import core
from metacli.spec import RunSpec

runner = CliRunner()
ASSETS = Path(__file__).parent / "assets" / "online_runs"
EXAMPLES = int(os.environ.get("METACLI_FUZZ_EXAMPLES", "250"))
SECONDS = 60
EXIT_CODES = {0, 1, 2, 130}
SURVEY = os.environ.get("METACLI_FUZZ_SURVEY", "") not in ("", "0")
"""Survey mode (the long profile): record unclean exits and go on, instead of stopping at the first."""
FAILURES: list[str] = []
PATHS: Counter[str] = Counter()
"""Distinct exit paths: ``command exit-code message-shape`` -> count (reported by the long profile)."""


class Hung(BaseException):
    """An invocation ran past :data:`SECONDS` (a BaseException, so the CLI's handlers cannot catch it)."""


def spec_fields() -> list[str]:
    """Every dotted field of the spec schema, through each algorithm, model and dataset config."""
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            members = _models(info.annotation)
            if not members:
                out.append(prefix + name)
            for member in members:
                walk(member, f"{prefix}{name}.")

    walk(RunSpec, "")
    return sorted(set(out))


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in getattr(annotation, "__args__", ()) for m in _models(a)]


FIELDS = spec_fields()
NAMES = [
    "maml",
    "fomaml",
    "reptile",
    "anil",
    "moml",
    "ftml",
    "sinusoid",
    "omniglot",
    "smnist",
    "mlp",
    "conv4",
]
WORDS = ["auto", "loop", "vmap", "cpu", "cuda", "cuda:-1", "float64", "scalar", "lslr", "", "..", "/"]

scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-3, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-320, 1e308, float("nan"), float("inf")]),
    st.booleans(),
    st.none(),
    st.sampled_from(NAMES + WORDS),
    st.text(max_size=12),
)
values = st.one_of(
    scalars,
    st.lists(st.integers(-2, 10**6), max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    """``--set`` pairs: known fields (or near misses) with values of any type, as YAML or raw text."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.one_of(st.sampled_from(FIELDS), st.text(max_size=15)))
        value = draw(values)
        as_yaml = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
        text = draw(st.one_of(st.just(as_yaml), st.text(max_size=10)))
        out += ["--set", f"{field}={text}"]
    return out


VALID = (
    "algorithm: {name: maml}\nmodel: {name: mlp, hidden: [8]}\ndata: {name: sinusoid}\nthreads: 1\n"
    "train: {meta_iters: 2, meta_batch: 2, log_every: 1}\neval: {tasks: 4}\n"
)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@st.composite
def spec_texts(draw: st.DrawFn) -> bytes:
    """Spec file contents from random bytes through truncated YAML to valid specs with extreme numbers."""
    kind = draw(st.sampled_from(["bytes", "truncated", "extreme", "grid", "bomb", "duplicate", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return VALID.encode()[: draw(st.integers(0, len(VALID)))]
    if kind == "bomb":
        return BOMB.encode()
    if kind == "duplicate":
        twice = draw(st.sampled_from(["threads: 2\n", "algorithm: {name: maml, alpha: 1, alpha: 2}\n"]))
        return (VALID + twice).encode()
    data = yaml.safe_load(VALID)
    if kind in ("extreme", "grid"):
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(FIELDS)).split(".")
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            node[path[-1]] = draw(values)
    if kind == "grid":
        key = draw(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)))
        data["grid"] = {key: draw(st.lists(values, max_size=3))}
    return yaml.safe_dump(data, allow_unicode=True).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of every kind, a finished run (the one whose files are checked after every invocation), a
    damaged run, and a folder of online runs."""
    w = tmp_path_factory.mktemp("fuzz")
    (w / "data").mkdir()
    run = w / "runs" / "finished"
    args = ["train", "--algo", "maml", "--dataset", "sinusoid", "--set", "train.meta_iters=3", "--set",
            "eval.tasks=4", "--set", "train.checkpoint_every=1", "--set", "threads=1",
            "--out", str(run), "--quiet"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    shutil.copytree(run, w / "damaged")
    (w / "damaged" / "checkpoints" / "last.pt").write_bytes(b"\x80\x02garbage")
    (w / "damaged" / "metrics.jsonl").write_text('{"step": 1, "meta_loss": null}\n{"step": "x"}\nnot json\n')
    shutil.copytree(ASSETS, w / "online")
    (w / "file").write_text("x")
    (w / "empty").mkdir()
    (w / "spec.yaml").write_text(VALID)
    os.mkfifo(w / "fifo")
    (w / "loop").symlink_to(w / "loop")
    return {
        "run": run,
        "runs": run.parent,
        "damaged": w / "damaged",
        "online": w / "online",
        "missing": w / "missing" / "x",
        "file": w / "file",
        "in_file": w / "file" / "sub",
        "empty": w / "empty",
        "fifo": w / "fifo",
        "device": Path("/dev/null"),
        "loop": w / "loop",
        "long": w / ("n" * 300),
        "spec": w / "spec.yaml",
        "unicode": w / "ü nícode folder",
        "root": w,
    }


def path_of(world: dict[str, Path]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(k for k in world if k != "root")).map(lambda k: str(world[k]))


def invocation(world: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    """One command line: a subcommand and options, each maybe absent, with random values."""
    path = path_of(world)
    opt = lambda name, s: st.one_of(st.just([]), s.map(lambda v: [name, str(v)]))  # noqa: E731
    number = st.one_of(st.integers(-3, 40), st.sampled_from(["nan", "1e400", "abc", "", "2" * 30]))
    flag = lambda name: st.sampled_from([[], [name]])  # noqa: E731
    device = st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "tpu", "", "cpu:0"])
    train_source = st.one_of(
        st.just([]),
        path.map(lambda p: [p]),
        st.tuples(st.sampled_from(NAMES + ["x"]), st.sampled_from(NAMES + ["x"])).map(
            lambda ad: ["--algo", ad[0], "--dataset", ad[1]]
        ),
        st.tuples(st.sampled_from(NAMES), st.just(None)).map(lambda ad: ["--algo", ad[0]]),
    )
    eta = st.one_of(st.floats(allow_nan=True), st.sampled_from(["1e6", "1e300", "0", "-1", "x"]))
    parts = {
        "train": [train_source, overrides(), opt("--out", path), opt("--resume", path), flag("--overwrite"),
                  opt("--device", device), opt("--data-root", path), flag("--fields")],
        "evaluate": [path.map(lambda p: [p]), opt("--tasks", number),
                     opt("--checkpoint", st.sampled_from(["best", "last", "x"])), opt("--steps", number),
                     opt("--device", device)],
        "hedge": [path.map(lambda p: [p]), opt("--eta", eta),
                  opt("--metric", st.sampled_from(["ctm", "ltm", "x"])), flag("--reference-quirks")],
        "plot": [path.map(lambda p: [p]), opt("--out", path)],
    }  # fmt: skip
    quiet = {"train": ["--quiet"], "evaluate": ["--quiet"], "hedge": [], "plot": []}
    return st.sampled_from(sorted(parts)).flatmap(
        lambda cmd: st.tuples(*parts[cmd]).map(
            lambda pieces: [cmd, *[x for p in pieces for x in p], *quiet[cmd]]
        )
    )


def files_of(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def assert_intact(run: Path, before: dict[str, bytes]) -> None:
    """Every file of the finished run is still there and whole: readable JSON, YAML and checkpoints."""
    now = files_of(run)
    assert set(before) <= set(now), f"lost: {sorted(set(before) - set(now))}"
    assert not [k for k in now if k.endswith(".tmp") or k.endswith(".lock")], sorted(now)
    yaml.safe_load(now["spec.yaml"])
    json.loads(now["summary.json"])
    for line in now["metrics.jsonl"].decode().splitlines():
        json.loads(line)
    for name in ("checkpoints/last.pt",):
        torch.load(run / name, weights_only=False)  # whole (a torn file would not unpickle)


def exit_path(args: list[str], code: int, text: str) -> str:
    """A run's exit path: command, exit code and the shape of its message (paths and numbers removed)."""
    message = text.split("error:", 1)[1] if "error:" in text else ""
    shape = re.sub(r"(/\S*|\d[\d.e+-]*)", "#", message)[:70]
    return f"{args[0]} {code} {' '.join(shape.split())}"


@pytest.fixture
def shortened(monkeypatch: pytest.MonkeyPatch, world: dict[str, Path]) -> None:
    """Training runs cut to at most 3 meta-steps without validation; no real data; the world as cwd."""
    make_job = core.make_job

    def capped(spec: Any, parts: Any, state: Any) -> Any:
        if not spec.is_online:
            cut = {"meta_iters": min(spec.train.meta_iters, 3), "val_every": 0}
            short = spec.train.model_copy(update=cut)
            spec = spec.model_copy(update={"train": short})
        return make_job(spec, parts, state)

    monkeypatch.setattr(core, "make_job", capped)
    monkeypatch.setenv("METACLI_DATA", str(world["root"] / "data"))
    monkeypatch.setenv("METACLI_OFFLINE", "1")
    monkeypatch.chdir(world["root"])


def test_no_invocation_reaches_an_internal_error(world: dict[str, Path], shortened: None) -> None:
    """Catches any input that ends in "internal error", a traceback, an unexpected exit code, a hang, or
    a finished run damaged by another command."""

    def on_alarm(signum: int, frame: object) -> None:
        raise Hung

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not SURVEY,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(args=invocation(world), spec=spec_texts(), env=st.sampled_from(["", "abc", "-1", "0.5", "nan"]))
    def one(args: list[str], spec: bytes, env: str) -> None:
        before = files_of(world["run"])
        world["spec"].write_bytes(spec)
        os.environ["METACLI_PROGRESS_EVERY"] = env or "10"
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(SECONDS)
        try:
            result = runner.invoke(app, args)
        except Hung:
            raise AssertionError(f"hung for {SECONDS} s: metacli {' '.join(args)}") from None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        text = " ".join(result.output.split())
        PATHS[exit_path(args, result.exit_code, text)] += 1
        where = f"metacli {' '.join(args)} -> {result.exit_code}: {text[-600:]}"
        clean = (
            result.exit_code in EXIT_CODES
            and "internal error" not in text
            and "Traceback" not in text
            and (not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit))
        )
        if SURVEY and not clean:
            FAILURES.append(where)  # the survey goes on, to count every kind of failure in one run
        else:
            assert clean, where
        replaced = "--overwrite" in args and result.exit_code == 0  # asked for: a new run, whole
        assert_intact(world["run"], {} if replaced else before)

    try:
        one()
    finally:
        os.environ.pop("METACLI_PROGRESS_EVERY", None)
        report = os.environ.get("METACLI_FUZZ_REPORT")
        if report:
            seen = {"invocations": sum(PATHS.values()), "paths": PATHS, "internal_errors": FAILURES}
            Path(report).write_text(json.dumps(seen, indent=1))
    assert not FAILURES, "\n".join(FAILURES[:20])
    assert len({p.split()[0] for p in PATHS}) == 4  # every subcommand was reached


@pytest.fixture
def short_run(tmp_path: Path) -> Iterator[list[str]]:
    yield ["--algo", "maml", "--dataset", "sinusoid", "--set", "train.meta_iters=60",
           "--set", "train.log_every=1", "--set", "train.checkpoint_every=7", "--set", "eval.tasks=4",
           "--set", "threads=1", "--set", "model.hidden=[64, 64]", "--out", str(tmp_path / "run"),
           "--quiet"]  # fmt: skip


@settings(max_examples=int(os.environ.get("METACLI_FUZZ_SIGNALS", "4")), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(
    signum=st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL]),
    delay=st.floats(0.0, 2.5),
    again=st.sampled_from(["same command", "--resume"]),
)
@pytest.mark.slow
def test_a_signal_at_any_moment_leaves_a_run_that_finishes(
    short_run: list[str], signum: int, delay: float, again: str
) -> None:
    """Catches a signal during start-up, data preparation or training that leaves a traceback, a dead
    end, or a folder the next command cannot finish with each step logged once."""
    run = Path(short_run[short_run.index("--out") + 1])
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "metacli", "train", *short_run]
    proc = subprocess.Popen(  # SIGHUP as from a terminal, even when the suite runs under nohup
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130, -signal.SIGKILL, -signum), output
    assert "Traceback" not in output and "internal error" not in output, output
    if again == "--resume" and (run / "spec.yaml").is_file():
        cmd = [sys.executable, "-m", "metacli", "train", "--resume", str(run), "--quiet"]
    finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 61))
