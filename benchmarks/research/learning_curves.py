"""Validation curves of runs side by side: val mIoU, and optionally some classes' IoU, at every
evaluated epoch of one cycle. Reads run folders (their metrics.jsonl) or copies of that file, of
complete runs or of runs stopped early, e.g. results/archive/paper_jpeg95_stopped/curves/.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/research/learning_curves.py benchmarks/results/archive/paper_jpeg95_stopped/curves/*.jsonl \
        --classes Pole Bicyclist --every 20 --plot /tmp/curves.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import markdown_table


def read_curve(path: Path, cycle: int) -> dict[int, dict]:
    """A run folder or a metrics.jsonl file -> {epoch: evaluation record} of `cycle`."""
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl")
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return {r["epoch"]: r for r in records if r["cycle"] == cycle}


def run_labels(paths: list[Path]) -> list[str]:
    """Folder names or file stems; the protocol folder is prefixed where these repeat."""
    short = [p.name if p.is_dir() else p.stem for p in paths]
    if len(set(short)) == len(short):
        return short
    return [f"{p.resolve().parent.parent.name}/{s}" if p.is_file() else f"{p.resolve().parent.name}/{s}"
            for p, s in zip(paths, short)]


def curve_table(curves: dict[str, dict[int, dict]], value, every: int) -> str:
    """One row per evaluated epoch (multiples of `every`, and each run's last), one column per run;
    `value(record)` gives the cell as a fraction, '–' where a run has no evaluation at that epoch."""
    last = {max(curve) for curve in curves.values() if curve}
    epochs = sorted({e for curve in curves.values() for e in curve if e % every == 0 or e in last})
    rows = [[str(e)] + [f"{100 * value(c[e]):.1f}" if e in c else "–" for c in curves.values()] for e in epochs]
    return markdown_table(["epoch", *curves], rows)


def plot(curves: dict[str, dict[int, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        epochs = sorted(curve)
        ax.plot(epochs, [100 * curve[e]["miou"] for e in epochs], marker=".", label=label)
    ax.set(xlabel="epoch", ylabel="val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or metrics.jsonl files")
    parser.add_argument("--cycle", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--classes", nargs="*", default=[], help="also a table of each of these classes' IoU")
    parser.add_argument("--every", type=int, default=10, help="epochs between table rows; default: %(default)s")
    parser.add_argument("--plot", type=Path, help="write the mIoU curves to this image")
    args = parser.parse_args(argv)
    curves = {label: read_curve(p, args.cycle) for label, p in zip(run_labels(args.runs), args.runs, strict=True)}
    known = {name for curve in curves.values() for record in curve.values() for name in record["iou"]}
    if unknown := sorted(set(args.classes) - known):
        parser.error(f"no IoU for {', '.join(unknown)} in these runs (classes: {', '.join(sorted(known))})")
    print(f"val mIoU (%), cycle {args.cycle}\n\n" + curve_table(curves, lambda r: r["miou"], args.every))
    for name in args.classes:
        print(f"\n{name} IoU (%)\n\n" + curve_table(curves, lambda r: r["iou"][name], args.every))
    if args.plot:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
