"""The `s4al report`, `s4al compare`, `s4al predict` and `s4al export` commands (registered in s4al/cli.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from s4al.errors import USER_ERRORS, S4alError, user_errors_reported

console = Console(soft_wrap=True)  # long paths stay on one line


class Network(str, Enum):
    """The weights of a checkpoint a command runs."""
    teacher = "teacher"  # the EMA model
    student = "student"


CheckpointArgument = Annotated[Path, typer.Argument(help="A checkpoint written by train or run.")]
NetworkOption = Annotated[Network, typer.Option(help="teacher (the EMA model) or student.")]


SupervisedOption = Annotated[Optional[str], typer.Option(
    metavar="MIOU|FILE", help="Fully supervised val mIoU (0..1), or the result.json of `s4al train`: the reference line.")]


def _supervised(value: str | None) -> float | None:
    from s4al.report.figures import supervised_reference

    try:
        return supervised_reference(value)
    except USER_ERRORS as err:  # the option's value: a number, or a file of `s4al train`
        raise typer.BadParameter(str(err), param_hint="--supervised-miou") from None


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `s4al run`.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (default: RUN_DIR/report).")] = None,
    supervised_miou: SupervisedOption = None,
) -> None:
    """An HTML report of a run (label efficiency, per-class IoU, bought classes, asked regions,
    predictions) and cycles.csv beside it: one row per cycle, labelled share against mIoU."""
    from s4al.report.html import write_report
    from s4al.run_folder import RunFolder

    supervised = _supervised(supervised_miou)
    with user_errors_reported():
        RunFolder.open(run_dir, lock=False)  # refuses a missing folder or one that is not a run's
        path = write_report(run_dir, out, supervised)
    console.print(f"report written to {path}")


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders written by `s4al run`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.png, compare.csv and settings.csv.")],
    supervised_miou: SupervisedOption = None,
) -> None:
    """Runs side by side: their mIoU against labelled pixels on one plot, their cycles in one CSV,
    a table of their last cycles, and every setting they were made with different values of."""
    from s4al.report.compare import CSV_FILE, PLOT_FILE, RUN_COLUMNS, SETTINGS_FILE, compare_runs

    supervised = _supervised(supervised_miou)
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


def predict_command(
    checkpoint: CheckpointArgument,
    images: Annotated[list[Path], typer.Argument(
        help="Images of any size, or folders of them (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks and overlays.")],
    network: NetworkOption = Network.teacher,
    device: Annotated[str, typer.Option(help="Device: auto, cpu, cuda, cuda:1, ...")] = "auto",
) -> None:
    """Segment new images: per image a class-id PNG, a colour mask and an overlay; legend.png keys the colours."""
    from s4al.report.predict import predict

    with user_errors_reported():
        written = predict(checkpoint, _image_files(images), out, network.value, device)
    console.print(f"{len(written)} files written to {out}:")
    for path in written:
        console.print(f"  {path.name}")


def _image_files(paths: list[Path]) -> list[Path]:
    """The images given, a folder standing for its image files; checked before the model is loaded."""
    from s4al.data.io import IMAGE_SUFFIXES, list_files

    files = []
    for path in paths:
        if path.is_dir():
            found = list_files(path, IMAGE_SUFFIXES)
            if not found:
                raise S4alError(f"{path}: no image in this folder ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise S4alError(f"{path}: no such image file or folder")
    return files


def export_command(
    checkpoint: CheckpointArgument,
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    network: NetworkOption = Network.teacher,
    height: Annotated[int, typer.Option(min=16, max=8192, help="Example input height (the input size when --no-dynamic).")] = 360,
    width: Annotated[int, typer.Option(min=16, max=8192, help="Example input width (the input size when --no-dynamic).")] = 480,
    dynamic: Annotated[bool, typer.Option(help="Dynamic batch, height and width; --no-dynamic fixes them.")] = True,
) -> None:
    """Export a checkpoint to ONNX ([0, 1] NCHW images in, logits out), checked with onnxruntime."""
    from s4al.report.export import ExportError, export_onnx

    with user_errors_reported():
        try:
            result = export_onnx(checkpoint, onnx, network.value, height, width, dynamic)
        except ExportError as err:
            console.print(f"[red]export check failed:[/red] {err}")
            raise typer.Exit(1) from None
    shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
    size = "dynamic batch and size" if result.dynamic else f"fixed 1x3x{height}x{width}"
    console.print(f"{result.path} ({size}): matches PyTorch within {result.max_abs_diff:.1e} on {shapes}")
    if result.trained_at:
        h, w = result.trained_at
        console.print(f"trained on images resized to {h}x{w} (dataset.resize): give it images resized so and "
                      "scale its labels back, as s4al predict does")
