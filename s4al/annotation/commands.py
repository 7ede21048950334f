"""The `s4al query` and `s4al import` commands (registered in s4al/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from s4al.active.ledger import LedgerError
from s4al.annotation.masks import AnswerError
from s4al.data.base import DatasetError

SHOWN_IMAGES = 5  # images named in the summary of ignored pixels

RunDirArgument = Annotated[Path, typer.Argument(help="A run folder made by `s4al run`.")]
OutOption = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Package folder (default: RUN_DIR/queries/cycle_C).")
]
DeviceOption = Annotated[str, typer.Option(help="Device for scoring and pre-annotation: auto, cpu, cuda, cuda:1, ...")]
AnswersArgument = Annotated[Path, typer.Argument(help="A Label Studio JSON export, or a folder of IMAGE_ID.png masks.")]


def query(run_dir: RunDirArgument, out: OutOption = None, device: DeviceOption = "auto") -> None:
    """Write the asked regions for annotators: Label Studio tasks + config, overlays and a manifest.
    If the latest cycle has trained but not asked yet, score the pool and ask first."""
    from s4al.active.cycle import ActiveLearningRun
    from s4al.annotation.package import write_query_package
    from s4al.distributed import setup_device

    try:
        active_run = ActiveLearningRun(run_dir)
        cycle = active_run.ledger.last_cycle()
        phase = active_run.ledger.phase(cycle) if cycle is not None else None
        if phase in (None, "train"):
            raise typer.BadParameter(f"{run_dir}: cycle {cycle or 0} has not finished training; "
                                     f"continue it with `s4al run --resume {run_dir}`")
        if phase == "acquire":
            active_run.device = setup_device(device)
            active_run.acquire(cycle)
        package = write_query_package(run_dir, out or run_dir / "queries" / f"cycle_{cycle}", device)
    except (DatasetError, FileNotFoundError, LedgerError) as err:
        raise typer.BadParameter(str(err)) from None
    if not package.regions:
        phase = active_run.ledger.phase(cycle)
        typer.echo(f"{run_dir}: no region waits for an answer (cycle {cycle} is in phase '{phase}').")
        return
    typer.echo(f"{package.regions} asked regions in {package.images} images written to {package.out_dir}:\n"
               f"  Label Studio: import tasks.json into a project set up with labelling_config.xml\n"
               f"  any other tool: images/, overlays/ (regions outlined), manifest.csv / manifest.json\n"
               f"Then: s4al import {run_dir} ANSWERS (the Label Studio JSON export, or a folder of IMAGE_ID.png "
               f"class-id masks, 255 = unpainted), and s4al run --resume {run_dir}.")


def import_answers_command(run_dir: RunDirArgument, answers: AnswersArgument) -> None:
    """Import painted answers into the run's label ledger; a bad file changes nothing."""
    from s4al.annotation.answers import import_answers

    try:
        report = import_answers(run_dir, answers)
    except (AnswerError, LedgerError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"answered {len(report.answered)} regions ({report.by}), {report.void_pixels} unpainted pixels "
               f"inside them stored as void; {report.still_asked} regions still asked.")
    ignored = report.ignored_pixels
    if ignored:
        most = ", ".join(f"'{i}': {n}" for i, n in sorted(ignored.items(), key=lambda item: -item[1])[:SHOWN_IMAGES])
        typer.echo(f"ignored {sum(ignored.values())} painted pixels outside the regions answered, "
                   f"in {len(ignored)} images (most in {most})")
    if not report.still_asked:
        typer.echo(f"Every asked region is answered: continue with `s4al run --resume {run_dir}`.")
