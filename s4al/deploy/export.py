"""ONNX export of a trained SegmentationNet (float [0, 1] NCHW images in, logits out), verified
against PyTorch with onnxruntime. The file says in its metadata what it expects and gives
(INPUT_TEXT, OUTPUT_TEXT), its classes and colours, and the size its training images were resized
to, if any, so that it can be used without the checkpoint.

The exporter is torch.export based (`dynamo=True`, needs onnxscript). Batch, height and width are
dynamic: the model pads to a multiple of 16 and crops back, and torch.export keeps that arithmetic
symbolic when the traced example needs padding, so the example is traced at odd sides. A dynamic
model expects sides of at least 16 pixels (the reflect padding's limit)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from s4al.atomic import atomic_path, unwritable
from s4al.errors import S4alError
from s4al.deploy.predict import class_set
from s4al.train.checkpoint import load_checkpoint, trained_model

TOLERANCE = 1e-3  # max |logit difference| accepted between onnxruntime and PyTorch
INPUT_NAME, OUTPUT_NAME = "images", "logits"
DIM_NAMES = ("batch", None, "height", "width")  # of the input and the output; None: channels, classes
INPUT_TEXT = ("float32 RGB in [0, 1], (batch, 3, height, width), upright (turned by the file's EXIF orientation, as "
              "viewers show it), sides of at least 16 pixels for a dynamic model; the ImageNet normalisation is "
              "inside the model")
OUTPUT_TEXT = "float32 logits, (batch, classes, height, width): the argmax over axis 1 is the class id"
# how a model trained on resized images (dataset.resize) is given others, as s4al predict does
RESIZE_TEXT = ("by PIL's bilinear, which smooths as it shrinks (torch: interpolate(mode='bilinear', antialias=True)), "
               "and its class ids scaled back by nearest")
DEFAULT_SIZE = (360, 480)  # the example size where the training images were not resized


class ExportError(RuntimeError):
    """The exported model disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    dynamic: bool
    checked_shapes: tuple[tuple[int, ...], ...]
    max_abs_diff: float
    trained_at: tuple[int, int] | None  # (H, W) the training images were resized to (dataset.resize)
    classes: tuple[str, ...]


def probe_shapes(height: int, width: int, dynamic: bool) -> tuple[tuple[int, ...], ...]:
    """The inputs the export is checked on: the given size, and for a dynamic model another batch
    size and a size with other paddings."""
    shapes = ((1, 3, height, width),)
    return (shapes + ((2, 3, height + 7, width + 9),)) if dynamic else shapes


def max_difference(model: torch.nn.Module, onnx_path: Path, shapes: tuple[tuple[int, ...], ...]) -> float:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        images = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if got.shape != expected.shape:
            raise ExportError(f"input {shape}: onnxruntime gives logits {got.shape}, PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def describe_onnx(onnx_path: Path, dynamic: bool, metadata: dict[str, str]) -> None:
    """Names the dynamic sides of the file's input and output (the exporter's own names are
    symbols such as s14) and stores `metadata` in it."""
    graph_model = onnx.load(str(onnx_path))
    if dynamic:
        for value in (*graph_model.graph.input, *graph_model.graph.output):
            for dim, name in zip(value.type.tensor_type.shape.dim, DIM_NAMES):
                if name is not None:
                    dim.dim_param = name
    for key, value in metadata.items():
        graph_model.metadata_props.add(key=key, value=value)
    onnx.save(graph_model, str(onnx_path))


def export_onnx(
    checkpoint: Path,
    out_path: Path,
    network: str = "teacher",
    height: int | None = None,
    width: int | None = None,
    dynamic: bool = True,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Writes the model to `out_path` (weights inside the file) once it passed the check on
    `probe_shapes` at `height` x `width` (default: the size its training images were resized to,
    else DEFAULT_SIZE; a fixed model's input size); raises ExportError, leaving any file there as
    it was, if onnxruntime and PyTorch differ by more than `tolerance`."""
    out_path = Path(out_path)
    problem = unwritable(out_path, "the ONNX file", read_from=checkpoint)
    if problem:
        raise S4alError(problem)
    state = load_checkpoint(Path(checkpoint))
    model, cfg = trained_model(state, Path(checkpoint), network, "cpu")
    model = model.to(memory_format=torch.contiguous_format)
    default = cfg.dataset.resize or DEFAULT_SIZE
    height, width = height or default[0], width or default[1]
    traced = (height | 1, width | 1) if dynamic else (height, width)  # odd sides: the padding branch
    any_size = torch.export.Dim.DYNAMIC
    shapes = probe_shapes(height, width, dynamic)
    with atomic_path(out_path) as written:
        torch.onnx.export(
            model,
            (torch.rand(1, 3, *traced),),
            str(written),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: any_size, 2: any_size, 3: any_size}} if dynamic else None,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        classes = class_set(cfg.dataset, state["classes"], state.get("colours"))
        describe_onnx(written, dynamic, {
            "s4al.input": INPUT_TEXT, "s4al.output": OUTPUT_TEXT, "s4al.classes": json.dumps(list(classes.names)),
            "s4al.colours": json.dumps([list(c) for c in classes.colors]),
            "s4al.trained_at": json.dumps(cfg.dataset.resize),  # null: the images at their own size
            "s4al.resize": f"images resized to s4al.trained_at (where it is not null) {RESIZE_TEXT}",
            "s4al.network": network})
        diff = max_difference(model, written, shapes)
        if diff > tolerance:
            raise ExportError(f"{out_path}: onnxruntime and PyTorch logits differ by {diff:.2e} > {tolerance:.0e}; "
                              "nothing written")
    return ExportResult(out_path, dynamic, shapes, diff, cfg.dataset.resize, tuple(classes.names))
