"""The `s4al predict` and `s4al export` commands (registered in s4al/cli.py), and the choice of a
checkpoint's network that `s4al evaluate` shares."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from s4al.errors import S4alError, user_errors_reported
from s4al.text import first_of

console = Console(soft_wrap=True)  # long paths stay on one line


class Network(str, Enum):
    """The weights of a checkpoint a command runs."""
    teacher = "teacher"  # the EMA model
    student = "student"


CheckpointArgument = Annotated[Path, typer.Argument(help="A checkpoint written by train or run.")]
NetworkOption = Annotated[Network, typer.Option(help="teacher (the EMA model) or student.")]


def predict_command(
    checkpoint: CheckpointArgument,
    images: Annotated[list[Path], typer.Argument(
        help="Images (large ones run tile by tile), or folders of them (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp).")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Folder for the masks and overlays; a file there is replaced only where this checkpoint wrote it "
        "(predicted_by.json lists them)."))],
    network: NetworkOption = Network.teacher,
    device: Annotated[str, typer.Option(help="Device: auto, cpu, cuda, cuda:1, ...")] = "auto",
) -> None:
    """Segment new images: per image a class-id PNG, a colour mask and an overlay; legend.png keys the colours."""
    from s4al.deploy.predict import LEGEND, predict

    with user_errors_reported():
        files = _image_files(images, out)
        bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console, transient=True,
                       disable=not console.is_terminal)
        task = bar.add_task("segmenting", total=len(files))

        def shown(done: float) -> None:  # from the first image on: a refusal before it prints alone
            bar.start()
            bar.update(task, completed=done)

        try:
            done = predict(checkpoint, files, out, network.value, device, progress=shown)
        finally:
            if bar.live.is_started:
                bar.stop()
    segmented = len(files) - len(done.unread)
    console.print(f"{segmented} of {len(files)} images segmented into {out}: per image <name>_labels.png (class ids), "
                  f"<name>_mask.png (class colours), <name>_overlay.png; {LEGEND} keys the colours")
    if done.unread:
        typer.echo(f"error: {len(done.unread)} not segmented: {first_of(done.unread, 10, '; ')}", err=True)
        raise typer.Exit(1)


def _image_files(paths: list[Path], out: Path) -> list[Path]:
    """The images given, each once, a folder standing for its image files (but for hidden ones, and
    for the outputs of an earlier prediction into it); checked before the model is loaded."""
    from s4al.data.io import IMAGE_SUFFIXES, list_files
    from s4al.deploy.predict import predicted_by, unique_paths

    files = []
    for path in paths:
        if path.is_dir():
            found = list_files(path, IMAGE_SUFFIXES)
            if out.exists() and path.resolve() == out.resolve():  # predicted into before: its outputs are no images
                ours = set((predicted_by(out) or {"outputs": []})["outputs"])
                found = [f for f in found if f.name not in ours]
            if not found:
                raise S4alError(f"{path}: no image in this folder ({', '.join(IMAGE_SUFFIXES)}; sub-folders are not "
                                "searched)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise S4alError(f"{path}: no such image file or folder")
    return unique_paths(files)  # as predict segments them


def export_command(
    checkpoint: CheckpointArgument,
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    network: NetworkOption = Network.teacher,
    height: Annotated[Optional[int], typer.Option(min=16, max=8192, help=(
        "Example input height (the input size when --no-dynamic); default: the height the training images were "
        "resized to (dataset.resize), else 360."))] = None,
    width: Annotated[Optional[int], typer.Option(min=16, max=8192, help=(
        "Example input width (the input size when --no-dynamic); default: the width the training images were "
        "resized to (dataset.resize), else 480."))] = None,
    dynamic: Annotated[bool, typer.Option(help="Dynamic batch, height and width; --no-dynamic fixes them.")] = True,
) -> None:
    """Export a checkpoint to ONNX, checked with onnxruntime: float32 RGB images in [0, 1] (N, 3, H, W) in,
    normalised inside; logits (N, classes, H, W) out. The file's metadata holds its classes and colours."""
    from s4al.deploy.export import INPUT_TEXT, OUTPUT_TEXT, RESIZE_TEXT, ExportError, export_onnx

    with user_errors_reported():
        try:
            result = export_onnx(checkpoint, onnx, network.value, height, width, dynamic)
        except ExportError as err:
            console.print(f"[red]export check failed:[/red] {err}")
            raise typer.Exit(1) from None
    shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
    size = "dynamic batch and size" if result.dynamic else f"fixed {'x'.join(map(str, result.checked_shapes[0]))}"
    console.print(f"{result.path} ({size}): matches PyTorch within {result.max_abs_diff:.1e} on {shapes}")
    console.print(f"input: {INPUT_TEXT}")
    classes = ", ".join(f"{i} {name}" for i, name in enumerate(result.classes))
    console.print(f"output: {OUTPUT_TEXT} ({classes}); the file's metadata (s4al.*) says so too")
    if result.trained_at:
        h, w = result.trained_at
        console.print(f"trained on images resized to {h}x{w} (dataset.resize): give it images resized so {RESIZE_TEXT}")
