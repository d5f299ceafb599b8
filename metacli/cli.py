"""The ``metacli`` command line: a thin Typer shell over the engine.

Each command parses its options, loads the spec, calls one function and prints a short summary.
torch, the engine and matplotlib are imported inside the command bodies so ``metacli --help``,
``hedge`` and ``plot`` start fast. Errors a user can cause (:class:`MetacliError`) are printed as
one paragraph and exit with code 2, without a traceback.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.markup import escape

from metacli import __version__
from metacli.errors import (
    OUT_OF_MEMORY,
    Interrupted,
    MetacliError,
    clause,
    is_out_of_memory,
    os_problem,
    symlink_loop,
)
from metacli.progress import make_console

app = typer.Typer(
    name="metacli",
    help="A command-line laboratory for meta-learning research.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # click's plain help: option names are never cut and no type markers (<bool>) at any width
    rich_markup_mode=None,
)
err_console = make_console(stderr=True)  # soft-wrapped: a path in a message stays whole, to copy
console = make_console()

P = ParamSpec("P")
R = TypeVar("R")

SpecArg = Annotated[
    Path | None,
    typer.Argument(metavar="SPEC", help="A YAML run spec (see configs/). Omit for a preset or the default."),
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="FIELD=VALUE",
        help="Override a spec field before validation: --set algorithm.alpha=0.4",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(metavar="DEVICE", help="auto | cpu | cuda | cuda:N (default: the spec's, auto).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Log lines instead of a progress bar.")]


def debug_enabled() -> bool:
    """``metacli --debug ...`` or ``METACLI_DEBUG=1``: errors show their Python traceback."""
    return os.environ.get("METACLI_DEBUG", "") not in ("", "0")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn errors into one clear paragraph and an exit code, without a traceback unless ``--debug``.

    :class:`MetacliError`: its message and its exit code (2 usage, 1 run failure, 130 interrupted).
    Any other exception is a bug: its type and message, how to see the traceback, exit code 1. Messages are
    printed as text: they carry paths and torch's own words, whose ``[brackets]`` rich would read as markup.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except MetacliError as e:
            if debug_enabled():
                raise
            # a stop asked by Ctrl-C or a signal is no error: the run is kept and resumable (exit 130)
            label = "[yellow]interrupted:[/]" if isinstance(e, Interrupted) else "[bold red]error:[/]"
            err_console.print(f"{label} {escape(str(e))}", highlight=False)  # [..] in a message is text
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            err_console.print(
                "[yellow]interrupted[/]: a run that had written a checkpoint is kept and continues with "
                "'metacli train --resume RUN'; one that had not was removed: run the same command again.",
                highlight=False,
            )
            raise typer.Exit(130) from None
        except OSError as e:  # the machine's state (disk, permissions, limits), not a bug
            if debug_enabled():
                raise
            err_console.print(f"[bold red]error:[/] {escape(os_problem(e))}", highlight=False)
            raise typer.Exit(1) from None
        except Exception as e:
            if debug_enabled():
                raise
            if is_out_of_memory(e):  # the machine's size, not a bug
                err_console.print(f"[bold red]error:[/] {OUT_OF_MEMORY}.", highlight=False)
                raise typer.Exit(1) from None
            loop = symlink_loop(e)
            if loop is not None:  # a path the user named, not a bug
                err_console.print(f"[bold red]error:[/] {escape(loop)}", highlight=False)
                raise typer.Exit(2) from None
            err_console.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {escape(clause(e))}. This is a bug in "
                "metacli, not in your input: run the same command as 'metacli --debug ...' to see the "
                "traceback, and report it.",
                highlight=False,
            )
            raise typer.Exit(1) from None

    return wrapper


def version_callback(value: bool) -> None:
    if value:
        console.print(f"metacli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks of errors (also METACLI_DEBUG=1).")
    ] = False,
) -> None:
    """A command-line laboratory for meta-learning research: MAML family and online meta-learning."""
    import warnings

    if debug:
        os.environ["METACLI_DEBUG"] = "1"
    # A warning is one line for the user, not Python's "file:line: UserWarning:" with a source excerpt.
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


@app.command()
@handle_errors
def train(
    spec_file: SpecArg = None,
    algo: Annotated[
        str | None, typer.Option(metavar="NAME", help="Algorithm of a preset, e.g. maml, moml.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(metavar="NAME", help="Dataset of a preset, e.g. sinusoid, smnist.")
    ] = None,
    overrides: OverrideOpt = None,
    out: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Run directory (grid: folder of runs).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(metavar="RUN", help="Continue this run from its last checkpoint.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing run directory (restored if the new run fails early)."
        ),
    ] = False,
    data_root: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Dataset folder (else $METACLI_DATA, a cache).")
    ] = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    fields: Annotated[
        bool, typer.Option("--fields", help="List every spec field with its docs and exit.")
    ] = False,
) -> None:
    """Train a run spec, a preset (--algo/--dataset), or the default (MAML on sinusoid).

    A spec with a `grid:` section runs every point into runs/<spec name>/<point>/.
    """
    from metacli.commands import describe_fields, resume_command, train_command

    if fields:
        console.print(
            describe_fields(spec_file, algo, dataset, list(overrides or []), console.has_width),
            markup=False,
            highlight=False,
        )
        return

    def announce(line: str) -> None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    overrides = list(overrides or [])
    data_root = data_root.resolve() if data_root is not None else None
    if resume is not None:
        if spec_file or algo or dataset or out or overwrite:
            raise MetacliError(
                f"--resume {resume} continues that run with its own spec.yaml: drop the spec file, --algo, "
                "--dataset, --out and --overwrite (change fields with --set, e.g. --set train.meta_iters=N)."
            )
        from metacli.runlayer.distributed import place

        if not place().writer:  # the other ranks of a data-parallel run print nothing but errors
            resume_command(resume, device, quiet, overrides=overrides, data_root=data_root)
            return
        announce(f"resuming {resume}")
        summary = resume_command(
            resume, device, quiet, overrides=overrides, announce=announce, data_root=data_root
        )
        console.print(f"resumed {resume}: {format_summary(summary)}")
        console.print(next_commands([(resume, summary)]), markup=False, highlight=False, soft_wrap=True)
        return
    finished = []
    for run_dir, summary in train_command(
        spec_file, algo, dataset, overrides, out, device, quiet, overwrite, announce, data_root
    ):
        if not summary.get("skipped"):
            console.print(f"[green]done[/] {run_dir}: {format_summary(summary)}")
        finished.append((run_dir, summary))
    skipped = sum(1 for _, summary in finished if summary.get("skipped"))
    if len(finished) > 1:  # a grid: what this command did, point by point having been announced
        console.print(
            f"grid of {len(finished)} points: {len(finished) - skipped} trained, {skipped} skipped (already "
            "complete)",
            highlight=False,
        )
    if finished:
        console.print(next_commands(finished), markup=False, highlight=False, soft_wrap=True)


def next_commands(finished: list[tuple[Path, dict[str, Any]]]) -> str:
    """The last line of ``train``: what to run next on what it wrote (one run, or a grid's folder)."""
    folder = finished[0][0] if len(finished) == 1 else finished[0][0].parent
    online = any("rounds" in summary for _, summary in finished)
    if online:
        steps = [f"metacli plot {folder}"] + ([f"metacli hedge {folder}"] if len(finished) > 1 else [])
    else:
        steps = [f"metacli evaluate {folder}", f"metacli plot {folder}"]
    return "next: " + "; ".join(steps)


@app.command()
@handle_errors
def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN",
            help="A run directory written by 'metacli train', or a folder of runs: one comparison table.",
        ),
    ],
    tasks: Annotated[
        int | None, typer.Option(metavar="N", help="Number of test tasks (default: the spec's).")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            metavar="best|last", help="best (best validation step; the default when the run has one) or last."
        ),
    ] = None,
    steps: Annotated[
        list[int] | None,
        typer.Option(
            metavar="N",
            help="Adaptation step counts, repeatable: --steps 1 --steps 10 (default: the spec's).",
        ),
    ] = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Meta-test a run's checkpoint on fixed held-out tasks; writes eval.json (mean, 95% CI, n).

    On a folder of runs: evaluates each on the same fixed test tasks (reusing an eval.json written for
    the same settings) and prints and writes one table, comparison.md and comparison.csv.
    """
    from metacli.compare import is_run_dir
    from metacli.runlayer import evaluate_run

    if checkpoint not in (None, "best", "last"):
        raise MetacliError(f"--checkpoint {checkpoint}: choose best or last.")
    if run_dir.is_dir() and not is_run_dir(run_dir):
        compare_folder(run_dir, tasks, checkpoint, device, quiet, steps or None)
        return
    out = evaluate_run(
        run_dir, device=device, tasks=tasks, quiet=quiet, which=checkpoint, steps=steps or None
    )
    console.print(
        f"meta-test of {run_dir}: {out['tasks']} fixed tasks (eval.seed {out['seed']}), "
        f"{out['checkpoint']} checkpoint (step {out['checkpoint_step']})"
    )
    console.print(eval_table(out))
    console.print(f"wrote {run_dir / 'eval.json'}")


def compare_folder(
    folder: Path,
    tasks: int | None,
    checkpoint: str | None,
    device: str | None,
    quiet: bool,
    steps: list[int] | None = None,
) -> None:
    """``metacli evaluate FOLDER``: the comparison table of every few-shot run in it."""
    from metacli.compare import compare, write_tables
    from metacli.runlayer import evaluate_run

    def one(run_dir: Path) -> dict[str, Any]:
        if not quiet:
            console.print(f"meta-test of {run_dir}")
        return evaluate_run(
            run_dir, device=device, tasks=tasks, quiet=quiet, which=checkpoint, reuse=True, steps=steps
        )

    rows = compare(folder, one)
    markdown, paths = write_tables(folder, rows)
    console.print(markdown, markup=False, highlight=False)
    for path in paths:
        console.print(f"wrote {path}")


def eval_table(out: dict[str, Any]) -> Any:
    """A rich table of eval.json: one row per metric and adaptation-step count, in the units of the folder
    table (accuracy in %; eval.json keeps fractions)."""
    from rich.table import Table

    from metacli.compare import display_scale

    table = Table()
    for col in ("metric", "mean", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in out["metrics"].items():
        scale, digits = display_scale(name)
        unit = " (%)" if scale == 100.0 else ""
        mean, ci = m["mean"] * scale, m["ci95"] * scale
        table.add_row(name + unit, f"{mean:.{digits}f}", f"± {ci:.{digits}f}", str(m["n"]))
    return table


@app.command()
@handle_errors
def hedge(
    folder: Annotated[
        Path,
        typer.Argument(metavar="FOLDER", help="Folder of online runs (the experts), e.g. runs/moml_grid."),
    ] = Path("runs"),
    eta: Annotated[
        float,
        typer.Option(
            metavar="ETA",
            help="Hedge learning rate; ln 10 is the official script's beta = 10.",
            show_default="ln 10",
        ),
    ] = (math.log(10)),
    metric: Annotated[
        list[str] | None, typer.Option(metavar="ctm|ltm", help="ctm and/or ltm (repeatable; default both).")
    ] = None,
    reference_quirks: Annotated[
        bool,
        typer.Option(
            "--reference-quirks",
            help=(
                "Reproduce the official hedge.py's look-ahead weights (a known fault). Only that: every "
                "expert found is still used, not the script's first 12 of 24."
            ),
        ),
    ] = False,
) -> None:
    """Hedge (exponential weights) over the runs in FOLDER, per metric, without look-ahead.

    Writes FOLDER/hedge.json and FOLDER/hedge/ (per-round hedged values that 'metacli plot' reads).
    """
    from metacli.hedge import render_table, run_hedge

    metrics = tuple(metric) if metric else ("ctm", "ltm")
    report = run_hedge(folder, eta=eta, metrics=metrics, reference_quirks=reference_quirks)
    render_table(report, console)  # ends with the paths it wrote


@app.command()
@handle_errors
def plot(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER", help="Folder of runs (online, few-shot, hedge/); train writes to runs/."
        ),
    ] = Path("runs"),
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Where figures (PNG, SVG) and TensorBoard files go (default: FOLDER/figures)."
        ),
    ] = None,
) -> None:
    """Figures of every run in FOLDER, PNG and SVG, into FOLDER/figures/ unless --out says otherwise.

    Online runs: CTM and LTM running averages and held memory against the round. Few-shot runs:
    meta-training and validation curves against the step, and Sparse-MAML's per-layer sparsity.
    """
    from metacli.plot import FIGURES_DIR, plot_runs
    from metacli.plot_fewshot import plot_episodic
    from metacli.runs import check_folder_path

    if out is None:
        out = folder / FIGURES_DIR  # beside the runs it shows, so plotting another folder replaces nothing
    else:
        check_folder_path(out, "plot --out")
    written = plot_episodic(folder, out) if folder.is_dir() else []
    try:
        written += plot_runs(folder, out)
    except MetacliError:
        if not written:
            raise
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"next: open the figures in {out}/, or 'tensorboard --logdir {folder}'", highlight=False)


@app.command("ls")
@handle_errors
def list_configs(
    algo: Annotated[str | None, typer.Option(metavar="NAME", help="Only configs of this algorithm.")] = None,
    dataset: Annotated[str | None, typer.Option(metavar="NAME", help="Only configs of this dataset.")] = None,
) -> None:
    """List the shipped configs: algorithm, dataset, ways and shots, model, published numbers.

    A * marks the file 'metacli train --algo A --dataset D' runs. Copy one out with 'metacli cp NAME'.
    """
    from metacli.recipes import recipes, table

    console.print(table(recipes(algo, dataset)), markup=False, highlight=False, soft_wrap=True)
    console.print(
        "* = the preset of 'metacli train --algo A --dataset D'. next: metacli cp NAME [DEST], then edit and "
        "'metacli train DEST'",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("cp")
@handle_errors
def copy_config(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A config as 'metacli ls' names it.")],
    dest: Annotated[
        Path | None,
        typer.Argument(metavar="[DEST]", help="File or existing folder (default: the current folder)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
) -> None:
    """Copy a shipped config out for editing, then train the copy.

    For example: metacli cp omniglot/5way_1shot_maml my.yaml; metacli train my.yaml
    """
    from metacli.recipes import copy_recipe

    target = copy_recipe(name, dest, force)
    console.print(f"wrote {target}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"next: edit it, then 'metacli train {target}'", markup=False, highlight=False, soft_wrap=True
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A one-line summary of a finished run."""
    keys = [k for k in ("ctm_acc_avg", "ltm_acc_avg", "steps", "rounds") if k in summary]
    parts = [f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys]
    seconds = summary.get("train_seconds")
    if isinstance(seconds, float) and math.isfinite(seconds):
        parts.append(f"time={time.strftime('%H:%M:%S', time.gmtime(seconds))}")
    return " ".join(parts)


def main() -> None:
    """Console-script entry point."""
    app()
