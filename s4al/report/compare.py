"""Several runs side by side (`s4al compare`): their label-efficiency curves on one plot
(compare.png), their cycles in one table (compare.csv: a `run` column, then report/cycles.csv's),
and the config keys they were made with different values of (settings.csv)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from s4al.atomic import output_folder
from s4al.active.ledger import Ledger
from s4al.active.opening import changed_config_note
from s4al.active.phases import CyclePhases
from s4al.config import COMPUTED_ON_RESUME, RunConfig, config_differences, flat_config, inert_keys
from s4al.errors import S4alError
from s4al.report.figures import read_cycles
from s4al.report.status import open_state
from s4al.report.table import csv_row, cycle_columns
from s4al.provenance import code_text
from s4al.run_folder import RunFolder, json_lines

PLOT_FILE, CSV_FILE, SETTINGS_FILE = "compare.png", "compare.csv", "settings.csv"


def differing_settings(configs: list[RunConfig]) -> list[str]:
    """The keys whose value is not the same in every config, but for where a run computed and for
    keys no run reads (config.inert_keys: the synthetic dataset's sizes where none is synthetic, a
    key whose switch is off in every run)."""
    first, *others = configs
    keys = {key for cfg in others for key in config_differences(first, cfg, may_differ=COMPUTED_ON_RESUME)}
    inert = [inert_keys(cfg) for cfg in configs]
    return sorted(key for key in keys if any(key not in keys_of_one for keys_of_one in inert))


def _shown(value) -> str:
    """A setting's value as a table cell: a mapping (active.metric_options) as JSON."""
    return json.dumps(value) if isinstance(value, dict) else str(value)


def comparison_curves(runs: dict[str, list[dict]], supervised_miou: float | None = None) -> Figure:
    """Val mIoU against the labelled share of the train pixels, one line per run."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, cycles in runs.items():
        ax.plot([100 * c["labelled_fraction"] for c in cycles], [100 * c["val"]["miou"] for c in cycles],
                marker="o", linewidth=2, label=name)
    if supervised_miou is not None:
        ax.axhline(100 * supervised_miou, linestyle="--", color="0.35",
                   label=f"fully supervised ({100 * supervised_miou:.1f})")
    ax.set(xlabel="labelled pixels (% of all train pixels)", ylabel="val mIoU (%)", title="mIoU vs labelled pixels")
    ax.margins(x=0.08, y=0.15)
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return fig


def write_csv(runs: dict[str, list[dict]], path: Path) -> None:
    columns = ["run"]
    for cycles in runs.values():  # runs on other datasets add their classes' columns
        columns += [c for c in cycle_columns(cycles) if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({"run": name, **csv_row(cycle)} for name, cycles in runs.items() for cycle in cycles)


@dataclass
class Comparison:
    runs: list[list[str]]  # a row per run, under RUN_COLUMNS
    settings: dict[str, list[str]]  # each setting the runs differ in: its value in each run
    notes: list[str]  # what makes the runs' numbers less comparable than they look


RUN_COLUMNS = ["run", "last cycle", "labelled %", "val mIoU %"]


def compare_runs(run_dirs: list[Path], out_dir: Path, supervised_miou: float | None = None) -> Comparison:
    """Writes OUT/compare.png, OUT/compare.csv and OUT/settings.csv (a row per setting the runs
    differ in, a column per run); returns their last cycles, those settings and notes."""
    names = [str(path) for path in run_dirs]
    if len(set(names)) < len(names):
        raise S4alError(f"{next(n for n in names if names.count(n) > 1)}: given twice")
    runs, configs, folders = {}, [], []
    for name, path in zip(names, run_dirs):
        folder = RunFolder.open(path, lock=False)  # refuses a missing folder or one that is not a run's
        runs[name] = read_cycles(path)
        if not runs[name]:
            raise S4alError(f"{path}: no cycle has trained yet; nothing to compare")
        configs.append(folder.config())
        folders.append(folder)
    output_folder(out_dir)
    comparison_curves(runs, supervised_miou).savefig(out_dir / PLOT_FILE, dpi=110)
    write_csv(runs, out_dir / CSV_FILE)
    settings = {key: [_shown(flat_config(cfg)[key]) for cfg in configs] for key in differing_settings(configs)}
    with open(out_dir / SETTINGS_FILE, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["setting", *names], *([key, *values] for key, values in settings.items())])
    rows = [[name, _last_cycle(folder, cycles), f"{100 * cycles[-1]['labelled_fraction']:.2f}",
             f"{100 * cycles[-1]['val']['miou']:.2f}"] for (name, cycles), folder in zip(runs.items(), folders)]
    return Comparison(rows, settings, _notes(runs, folders))


def _last_cycle(folder: RunFolder, cycles: list[dict]) -> str:
    """The last cycle shown, with where the run stands past it: asking, answered, or a cycle training."""
    shown = cycles[-1]["cycle"]
    if not folder.ledger_path.exists():
        return str(shown)
    with Ledger(folder.ledger_path, readonly=True) as ledger, CyclePhases(ledger) as phases:
        last = phases.last_cycle()
        training = last is not None and last > shown and phases.phase(last) == "train"
    return f"{shown}{open_state(cycles[-1])}" + (f" (cycle {last} training)" if training else "")


def _notes(runs: dict[str, list[dict]], folders: list[RunFolder]) -> list[str]:
    notes = []
    classes = {name: tuple(cycles[-1]["val"]["iou"]) for name, cycles in runs.items()}
    if len(set(classes.values())) > 1:
        notes.append("the runs are scored on other classes, so their mIoUs average other things: "
                     + "; ".join(f"{name}: {', '.join(names)}" for name, names in classes.items()))
    notes += [note for folder in folders if (note := changed_config_note(folder))]
    notes += _trained_otherwise(runs)
    starts = {name: _last_start(folder) for name, folder in zip(runs, folders)}
    code = {name: code_text(start) for name, start in starts.items() if start and "git_commit" in start}
    if len(set(code.values())) > 1:
        notes.append("the runs were last started with other code: "
                     + "; ".join(f"{name}: {text}" for name, text in code.items()))
    return notes


def _trained_otherwise(runs: dict[str, list[dict]]) -> list[str]:
    """The cycles the runs trained for other epochs or on other process counts, which their configs
    need not show: a run resumed with more cycles trained its former last cycle as a last one, and
    train.batch_size is per process."""
    trained: dict[int, dict[str, tuple[int, int]]] = {}
    for name, cycles in runs.items():
        for cycle in cycles:
            if "epochs" in cycle and "processes" in cycle:  # a summary of an older s4al may lack them
                trained.setdefault(cycle["cycle"], {})[name] = (cycle["epochs"], cycle["processes"])
    differing = {cycle: by_run for cycle, by_run in sorted(trained.items()) if len(set(by_run.values())) > 1}
    if not differing:
        return []
    return ["cycles trained otherwise (epochs x processes; train.batch_size is per process, and a run resumed with "
            "more cycles trained its former last cycle longer): " + "; ".join(
                f"cycle {cycle}: " + ", ".join(f"{name} {epochs} x {processes}"
                                               for name, (epochs, processes) in by_run.items())
                for cycle, by_run in differing.items())]


def _last_start(folder: RunFolder) -> dict | None:
    starts = [record for _, record in json_lines(folder.starts_log) if record is not None]
    return starts[-1] if starts else None
