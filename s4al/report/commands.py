"""The `s4al report` and `s4al compare` commands (registered in s4al/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from s4al.errors import USER_ERRORS, user_errors_reported

console = Console(soft_wrap=True)  # long paths stay on one line


SupervisedOption = Annotated[Optional[str], typer.Option(
    metavar="MIOU|FILE", help="Fully supervised val mIoU (0..1), or the result.json of `s4al train`: the reference line.")]


def _supervised(value: str | None, run_dirs: list[Path]) -> float | None:
    """The option's value, a number or a file of `s4al train`, checked against each run's classes."""
    from s4al.report.figures import ledger_class_names, supervised_reference

    try:
        supervised = supervised_reference(value)  # its form first, before a run folder is read
    except USER_ERRORS as err:
        raise typer.BadParameter(str(err), param_hint="--supervised-miou") from None
    for run_dir in run_dirs if supervised is not None else ():
        with user_errors_reported():
            classes = ledger_class_names(run_dir)
        try:
            supervised_reference(value, classes)
        except USER_ERRORS as err:
            raise typer.BadParameter(f"{err} ({run_dir})", param_hint="--supervised-miou") from None
    return supervised


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `s4al run`.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (default: RUN_DIR/report).")] = None,
    supervised_miou: SupervisedOption = None,
) -> None:
    """An HTML report of a run (label efficiency, per-class IoU, bought classes, asked regions,
    predictions) and cycles.csv beside it: one row per cycle, labelled share against mIoU."""
    from s4al.active.opening import changed_config_note
    from s4al.report.html import write_report
    from s4al.run_folder import RunFolder

    supervised = _supervised(supervised_miou, [run_dir])
    with user_errors_reported():
        RunFolder.open(run_dir, lock=False)  # refuses a missing folder or one that is not a run's
        path = write_report(run_dir, out, supervised)
        edited = changed_config_note(RunFolder(run_dir))
    console.print(f"report written to {path}")
    if edited:
        console.print(f"note: {edited}")


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders written by `s4al run`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.png, compare.csv and settings.csv.")],
    supervised_miou: SupervisedOption = None,
) -> None:
    """Runs side by side: their mIoU against labelled pixels on one plot, their cycles in one CSV,
    a table of their last cycles, and every setting they were made with different values of."""
    from s4al.report.compare import CSV_FILE, PLOT_FILE, RUN_COLUMNS, SETTINGS_FILE, compare_runs

    supervised = _supervised(supervised_miou, run_dirs)
    with user_errors_reported():
        comparison = compare_runs(run_dirs, out, supervised)
    runs = Table()
    for column in ["#", *RUN_COLUMNS]:
        runs.add_column(column, justify="left" if column == "run" else "right")
    for number, row in enumerate(comparison.runs, start=1):
        runs.add_row(str(number), *row)
    console.print(runs)
    if comparison.settings:
        settings = Table(title="settings they differ in")
        for column in ["setting", *(f"#{n}" for n in range(1, len(comparison.runs) + 1))]:
            settings.add_column(column, overflow="fold")
        for key, values in comparison.settings.items():
            settings.add_row(key, *values)
        console.print(settings)
    for note in comparison.notes:
        console.print(f"note: {note}")
    console.print(f"{out / PLOT_FILE}, {out / CSV_FILE} and {out / SETTINGS_FILE} written")
