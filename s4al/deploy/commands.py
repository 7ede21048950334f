"""The `s4al predict` and `s4al export` commands (registered in s4al/cli.py), and the choice of a
checkpoint's network that `s4al evaluate` shares."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from s4al.errors import S4alError, user_errors_reported

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
        help="Images of any size, or folders of them (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks and overlays.")],
    network: NetworkOption = Network.teacher,
    device: Annotated[str, typer.Option(help="Device: auto, cpu, cuda, cuda:1, ...")] = "auto",
) -> None:
    """Segment new images: per image a class-id PNG, a colour mask and an overlay; legend.png keys the colours."""
    from s4al.deploy.predict import predict

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
    from s4al.deploy.export import ExportError, export_onnx

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
