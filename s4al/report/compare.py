"""Several runs side by side (`s4al compare`): their label-efficiency curves on one plot
(compare.png), their cycles in one table (compare.csv: a `run` column, then report/cycles.csv's),
and the config keys they were made with different values of."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from s4al.atomic import output_folder
from s4al.config import COMPUTED_ON_RESUME, RunConfig, config_differences, flat_config
from s4al.errors import S4alError
from s4al.report.figures import read_cycles
from s4al.report.table import csv_row, cycle_columns
from s4al.run_folder import RunFolder

PLOT_FILE, CSV_FILE = "compare.png", "compare.csv"


def differing_settings(configs: list[RunConfig]) -> list[str]:
    """The keys whose value is not the same in every config, but for where a run computed."""
    first, *others = configs
    return sorted({key for cfg in others for key in config_differences(first, cfg, may_differ=COMPUTED_ON_RESUME)})


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


def compare_runs(run_dirs: list[Path], out_dir: Path,
                 supervised_miou: float | None = None) -> tuple[list[str], list[list[str]]]:
    """Writes OUT/compare.png and OUT/compare.csv; returns a table of the runs (header, rows): the
    last cycle's labelled share and val mIoU, and each setting they differ in."""
    names = [str(path) for path in run_dirs]
    if len(set(names)) < len(names):
        raise S4alError(f"{next(n for n in names if names.count(n) > 1)}: given twice")
    runs, configs = {}, []
    for name, path in zip(names, run_dirs):
        folder = RunFolder.open(path, lock=False)  # refuses a missing folder or one that is not a run's
        runs[name] = read_cycles(path)
        if not runs[name]:
            raise S4alError(f"{path}: no cycle has trained yet; nothing to compare")
        configs.append(folder.config())
    output_folder(out_dir)
    comparison_curves(runs, supervised_miou).savefig(out_dir / PLOT_FILE, dpi=110)
    write_csv(runs, out_dir / CSV_FILE)
    keys = differing_settings(configs)
    header = ["run", "last cycle", "labelled %", "val mIoU %", *keys]
    rows = [[name, str(cycles[-1]["cycle"]), f"{100 * cycles[-1]['labelled_fraction']:.2f}",
             f"{100 * cycles[-1]['val']['miou']:.2f}", *(str(flat_config(cfg)[key]) for key in keys)]
            for (name, cycles), cfg in zip(runs.items(), configs)]
    return header, rows
