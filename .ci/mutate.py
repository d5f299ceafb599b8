"""Mutation testing of one part of metacli with mutmut, in a copy of the repository.

Usage, from the repository root (mutmut must be installed; the ``dev`` extra does not bring it)::

    OMP_NUM_THREADS=1 nice -n 19 python .ci/mutate.py TARGET [--workdir DIR] [--max-children N]
        [--rev REV] [--json PATH] [--time-limit SECONDS] [--mutants GLOB ...] [--isolation fork|forkserver]

TARGET is one of ``hedge``, ``algorithms``, ``runlayer`` (see ``TARGETS``). The script

1. copies the repository's tracked files (``git ls-files``, as they are in the working tree, or as
   committed at ``--rev REV``) to a new temporary folder, or to ``--workdir`` (the copy is kept, so
   that ``mutmut results`` / ``mutmut show NAME`` can be run there; a second run in the same folder
   reuses the results of the first);
2. replaces that copy's ``[tool.mutmut]`` section with one for the target: the files to mutate, the
   fast tests that exercise them, and the pytest options;
3. runs ``mutmut run --max-children N`` there, with ``PYTHONPATH`` set to the copy's ``mutants/``
   folder so that test subprocesses import the mutated copy, never the editable install, and
   ``METACLI_DATA`` set to ``../shared/data`` beside the repository when that exists and the
   variable is unset (the copy has no ``shared/`` beside it);
4. reads the per-mutant results (``mutmut results --all true``), prints a table of the counts and the
   surviving mutants per file and function, and writes the same as JSON (``--json``).

``--time-limit`` interrupts mutmut after that many seconds (mutmut keeps every result it has; the rest
are counted as "not checked"); mutmut tries the mutants whose tests are fastest first, so a time-limited
run is a sample biased towards cheap functions. ``--mutants`` passes name patterns (fnmatch, e.g.
``'metacli.engine.algorithms.reptile.*'``) to ``mutmut run`` to check a documented subset.
Only the standard library is used; mutmut runs as a subprocess of the same Python.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: pytest options of every mutant run: no cache writes into the copy, stop at the first failure, and
#: leave out the tests marked ``slow``.
PYTEST_ARGS = ["-p", "no:cacheprovider", "-x", "-q", "-m", "not slow"]


@dataclass(frozen=True)
class Target:
    """What to mutate and which tests may kill the mutants."""

    only_mutate: list[str]
    do_not_mutate: list[str]
    tests: list[str]


TARGETS: dict[str, Target] = {
    "hedge": Target(
        only_mutate=["metacli/hedge.py"],
        do_not_mutate=["metacli/engine/*", "metacli/[!h]*.py"],
        tests=["tests/test_hedge.py"],
    ),
    "algorithms": Target(
        only_mutate=["metacli/engine/algorithms/*"],
        do_not_mutate=["metacli/engine/algorithms/__init__.py"],
        tests=[
            "tests/engine/test_variants.py",
            "tests/engine/test_implicit.py",
            "tests/engine/test_online.py",
            "tests/engine/test_moml_oracle.py",
            "tests/engine/test_oracles.py",
            "tests/engine/test_fused.py",
            "tests/engine/test_fewshot.py",
        ],
    ),
    "runlayer": Target(
        only_mutate=["metacli/runlayer/*"],
        do_not_mutate=["metacli/runlayer/__init__.py"],
        tests=[
            "tests/test_checkpoint_schema.py",
            "tests/test_cli.py",
            "tests/test_divergence.py",
            "tests/test_signals.py",
            "tests/test_validation.py",
            "tests/test_overwrite.py",
            "tests/test_online_cli.py",
            "tests/test_compare.py",
        ],
    ),
}

#: Order of the statuses in the table; any other status mutmut reports is added after these.
STATUSES = [
    "killed",
    "survived",
    "timeout",
    "suspicious",
    "skipped",
    "no tests",
    "caught by type check",
    "segfault",
    "check was interrupted by user",
    "not checked",
]

#: Top-level tracked folders and files that tests may read, copied into mutmut's ``mutants/`` folder.
ALSO_COPY = ["configs", "benchmarks", "README.md", "CHANGELOG.md"]


def copy_tracked_files(dest: Path, rev: str | None) -> None:
    """Copy the tracked files to ``dest``: as committed at ``rev``, or as they are in the working tree."""
    if rev is not None:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev], cwd=REPO, check=True, capture_output=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        target = dest / name
        if source.is_symlink():  # metacli/presets -> ../configs: the copy links to the copied configs/
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(os.readlink(source))
            continue
        if not source.is_file():  # deleted in the working tree, or a submodule
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def toml_value(value: object) -> str:
    """A TOML literal for a string, bool, number or list of those (JSON strings are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def mutmut_section(target: Target, isolation: str) -> str:
    """The ``[tool.mutmut]`` section for ``target``."""
    settings: dict[str, object] = {
        "source_paths": ["metacli"],
        "only_mutate": target.only_mutate,
        "do_not_mutate": target.do_not_mutate,
        "also_copy": ALSO_COPY,
        "pytest_add_cli_args_test_selection": target.tests,
        "pytest_add_cli_args": PYTEST_ARGS,
        "process_isolation": isolation,
        "use_git_change_detection": False,  # the copy is no git repository
    }
    lines = ["[tool.mutmut]"] + [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_mutmut_section(pyproject: Path, section: str) -> None:
    """Replace the ``[tool.mutmut]`` table of ``pyproject`` (if any) by ``section``, appended at the end."""
    kept: list[str] = []
    inside = False
    for line in pyproject.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped == "[tool.mutmut]"
        if not inside:
            kept.append(line)
    text = "\n".join(kept).rstrip("\n") + "\n\n" + section
    if sys.version_info >= (3, 11):  # check that the result still parses
        import tomllib

        assert tomllib.loads(text)["tool"]["mutmut"]["only_mutate"]
    pyproject.write_text(text, encoding="utf-8")


def mutmut_env(workdir: Path) -> dict[str, str]:
    """The environment of the mutmut run: the mutated copy first on the path, one thread, the data."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(workdir / "mutants")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    shared_data = REPO.parent / "shared" / "data"
    if "METACLI_DATA" not in env and shared_data.is_dir():
        env["METACLI_DATA"] = str(shared_data)
    return env


def run_mutmut(workdir: Path, args: list[str], env: dict[str, str], time_limit: float | None) -> int:
    """Run ``python -m mutmut ARGS`` in ``workdir``; interrupt it (SIGINT) after ``time_limit`` seconds."""
    command = [sys.executable, "-m", "mutmut", *args]
    print("$", " ".join(command), f"(in {workdir})", flush=True)
    process = subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True)
    try:
        return process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        print(f"\ntime limit of {time_limit:.0f} s reached: interrupting mutmut", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping mutmut", flush=True)
    for sig, grace in ((signal.SIGINT, 120.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def read_results(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Mutant name -> status, as ``mutmut results --all true`` prints them (``    NAME: STATUS``)."""
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().partition(": ")
        if sep and "__mutmut_" in name:
            results[name] = status
    return results


def file_and_function(mutant: str) -> tuple[str, str]:
    """File and function of a mutant: ``metacli.x.y.xǁCǁf__mutmut_3`` -> ``('metacli/x/y.py', 'C.f')``."""
    module, _, mangled = mutant.partition("__mutmut_")[0].rpartition(".")
    if mangled.startswith("xǁ"):
        _, class_name, function = mangled.split("ǁ", 2)
        function = f"{class_name}.{function}"
    else:
        function = mangled.removeprefix("x_")
    return module.replace(".", "/") + ".py", function


@dataclass
class Summary:
    """Counts per status and the surviving mutants by file and function."""

    target: str
    wall_s: float
    mutmut_exit_code: int
    counts: dict[str, int] = field(default_factory=dict)
    by_file: dict[str, dict[str, int]] = field(default_factory=dict)
    survivors: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: the mutants neither killed, survived nor left unchecked (no tests, timeout, suspicious, ...)
    others: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, target: str, wall_s: float, exit_code: int, results: dict[str, str]) -> Summary:
        counts = Counter(results.values())
        ordered = {status: counts.get(status, 0) for status in STATUSES}
        ordered.update({status: n for status, n in sorted(counts.items()) if status not in ordered})
        survivors: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        by_file: dict[str, Counter[str]] = defaultdict(Counter)
        others: dict[str, list[str]] = {}
        for name, status in sorted(results.items()):
            by_file[file_and_function(name)[0]].update(["mutants", status])
            if status not in ("killed", "survived", "not checked"):
                others.setdefault(status, []).append(name)
            if status == "survived":
                path, function = file_and_function(name)
                survivors[path][function].append(name)
        return cls(
            target=target,
            wall_s=round(wall_s, 1),
            mutmut_exit_code=exit_code,
            counts={"mutants": len(results), **ordered},
            by_file={path: dict(counter) for path, counter in sorted(by_file.items())},
            survivors={path: dict(functions) for path, functions in sorted(survivors.items())},
            others=dict(sorted(others.items())),
        )

    def table(self) -> str:
        head = f"Mutation testing of {self.target!r}: {self.wall_s:.0f} s"
        lines = [f"{head}, mutmut exit code {self.mutmut_exit_code}"]
        width = max(len(status) for status in self.counts)
        lines += [f"  {status:<{width}}  {n:>6}" for status, n in self.counts.items()]
        lines.append("By file (mutants, killed, survived, timeout, not checked):")
        for path, n in self.by_file.items():
            columns = [n.get(key, 0) for key in ("mutants", "killed", "survived", "timeout", "not checked")]
            lines.append(f"  {path:<44}" + "".join(f"{number:>7}" for number in columns))
        lines.append("Surviving mutants by file and function:")
        if not self.survivors:
            lines.append("  (none)")
        for path, functions in self.survivors.items():
            lines.append(f"  {path}  ({sum(len(names) for names in functions.values())})")
            for function, names in sorted(functions.items(), key=lambda item: (-len(item[1]), item[0])):
                numbers = ", ".join(name.rpartition("__mutmut_")[2] for name in names)
                lines.append(f"    {function:<40} {len(names):>4}   #{numbers}")
        for status, names in self.others.items():
            lines.append(f"{status.capitalize()} ({len(names)}):")
            lines += [f"  {name}" for name in names]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--workdir", type=Path, help="folder for the copy (default: a new temporary one)")
    parser.add_argument(
        "--rev", help="copy the files of this commit (default: the working tree's tracked files)"
    )
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    parser.add_argument("--time-limit", type=float, help="interrupt mutmut after this many seconds")
    parser.add_argument("--mutants", nargs="+", default=[], metavar="GLOB", help="only these mutant names")
    parser.add_argument(
        "--report-only", action="store_true", help="only report the results already in --workdir"
    )
    parser.add_argument(
        "--isolation",
        choices=["fork", "forkserver"],
        default="fork",
        help="mutmut's process_isolation (default fork)",
    )
    args = parser.parse_args(argv)
    target = TARGETS[args.target]

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix=f"mutate-{args.target}-"))).resolve()
    env = mutmut_env(workdir)
    if args.report_only:
        if not (workdir / "mutants").is_dir():
            parser.error(f"--report-only: no mutmut run in {workdir}")
        exit_code, wall_s = 0, 0.0
    else:
        if workdir.exists() and any(workdir.iterdir()) and not (workdir / "mutants").is_dir():
            parser.error(f"{workdir} is not empty and holds no earlier mutmut run")
        copy_tracked_files(workdir, args.rev)  # an earlier run's mutants/ stays: mutmut reuses its results
        write_mutmut_section(workdir / "pyproject.toml", mutmut_section(target, args.isolation))
        # mutants/ must exist before Python starts: a PYTHONPATH entry missing at start-up is cached as
        # "nothing to import here", and the tests would then import the editable install instead.
        (workdir / "mutants").mkdir(exist_ok=True)
        start = time.monotonic()
        mutmut_args = ["run", "--max-children", str(args.max_children), *args.mutants]
        exit_code = run_mutmut(workdir, mutmut_args, env, args.time_limit)
        wall_s = time.monotonic() - start

    summary = Summary.of(args.target, wall_s, exit_code, read_results(workdir, env))
    print()
    print(summary.table())
    print(f"\nworking copy: {workdir} (`mutmut results`, `mutmut show NAME` there)")
    if args.json:
        args.json.write_text(json.dumps(summary.__dict__, indent=2) + "\n", encoding="utf-8")
        print(f"JSON: {args.json}")
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
