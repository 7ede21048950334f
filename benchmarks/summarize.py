"""Summarise the label-efficiency results of one protocol: RESULTS/<protocol>/summary.md (mIoU
mean +- std over seeds, ratio to full supervision, per-cycle values, final per-class IoU, and
the classes of the pixels each acquisition bought) and summary.png (mIoU vs labelled fraction,
one curve per method). --readme prints the main table."""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import RESULTS, markdown_table
from label_efficiency import METHODS, PROTOCOLS

REFERENCE = "full_supervised"


def load_results(directory: Path) -> dict[str, list[dict]]:
    """Results by method, methods in the benchmark's order, each method's runs by seed."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(directory.glob("*.json")):
        result = json.loads(path.read_text())
        groups[result["method"]].append(result)
    order = [m for m in METHODS if m in groups] + sorted(set(groups) - set(METHODS))
    return {m: sorted(groups[m], key=lambda r: r["seed"]) for m in order}


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def per_cycle(runs: list[dict]) -> list[tuple[float, float, float]]:
    """Per cycle: (mean labelled fraction, mean mIoU, std mIoU) over seeds."""
    cycles = min(len(r["cycles"]) for r in runs)
    return [
        (mean_std([r["cycles"][c]["labelled_fraction"] for r in runs])[0],
         *mean_std([r["cycles"][c]["val"]["miou"] for r in runs]))
        for c in range(cycles)
    ]


def _miou(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def main_table(groups: dict[str, list[dict]], references: list[dict] | None = None) -> str:
    """references: the full_supervised runs the ratio divides by; default: those among `groups`."""
    references = groups.get(REFERENCE) if references is None else references
    reference = mean_std([r["final"]["miou"] for r in references])[0] if references else None
    rows = []
    for method, runs in groups.items():
        mean, std = mean_std([r["final"]["miou"] for r in runs])
        cycles = " → ".join(f"{100 * m:.1f} @ {100 * f:.1f}%" for f, m, _ in per_cycle(runs))
        rows.append([
            method,
            ", ".join(str(r["seed"]) for r in runs),
            f"{100 * mean_std([r['final']['labelled_fraction'] for r in runs])[0]:.2f}",
            _miou(mean, std, len(runs)),
            f"{100 * mean / reference:.1f}%" if reference else "–",
            cycles,
        ])
    headers = ["method", "seeds", "labelled %", "mIoU", f"of {REFERENCE}", "per cycle: mIoU @ labelled %"]
    return markdown_table(headers, rows)


def class_table(groups: dict[str, list[dict]]) -> str:
    """Final per-class IoU, mean over seeds (classes absent from val and prediction are skipped)."""
    classes = list(next(iter(groups.values()))[0]["final"]["iou"])
    rows = []
    for method, runs in groups.items():
        cells = []
        for name in classes:
            values = [r["final"]["iou"][name] for r in runs if r["final"]["iou"][name] is not None]
            cells.append(f"{100 * np.mean(values):.1f}" if values else "–")
        rows.append([method, *cells])
    return markdown_table(["method", *classes], rows)


def bought_table(groups: dict[str, list[dict]]) -> str:
    """For the methods that buy labels: each class's share of the bought pixels (void included: an
    annotator labels it, training ignores it), all cycles together, mean over seeds; "" if none."""
    rows = []
    for method, runs in groups.items():
        totals = [sum((Counter(c["bought"]["class_pixels"]) for c in run["cycles"]), Counter()) for run in runs]
        if not all(totals):  # a Counter summed from zeros is empty
            continue
        classes = list(runs[0]["cycles"][0]["bought"]["class_pixels"])
        shares = np.mean([[total[c] / total.total() for c in classes] for total in totals], axis=0)
        rows.append([method, *(f"{100 * share:.1f}" for share in shares)])
    return markdown_table(["method", *classes], rows) if rows else ""


def write_plot(groups: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab20")  # dark shades for the first ten methods, then the light ones
    for k, (method, runs) in enumerate(groups.items()):
        fraction, miou, std = (np.array(v) * 100 for v in zip(*per_cycle(runs)))
        if method == REFERENCE:  # at 100% labelled: a horizontal line keeps the x axis readable
            ax.axhline(miou[-1], color="black", linestyle="--", label=f"{method} (100%)")
            ax.axhspan(miou[-1] - std[-1], miou[-1] + std[-1], color="black", alpha=0.08)
        else:
            colour = colours((2 * k) % 20 + (2 * k) // 20)
            ax.errorbar(fraction, miou, yerr=std, marker="o", capsize=3, color=colour, label=method)
    ax.set(xlabel="labelled pixels (%)", ylabel="val mIoU (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", required=True, help=f"one of {', '.join(PROTOCOLS)} (a results subfolder)")
    parser.add_argument("--results", type=Path, default=RESULTS / "label_efficiency", help="default: %(default)s")
    parser.add_argument("--readme", action="store_true", help="print the main Markdown table only, write nothing")
    parser.add_argument("--update", type=Path, metavar="README",
                        help="also replace the table between <!-- results:PROTOCOL --> markers in this file")
    parser.add_argument("--reference-protocol", metavar="PROTOCOL",
                        help=f"take {REFERENCE} from this results subfolder (for a variant made with --set)")
    args = parser.parse_args(argv)
    directory = args.results / args.protocol
    groups = load_results(directory)
    if not groups:
        parser.error(f"no results in {directory}")
    references = None
    if args.reference_protocol:
        references = load_results(args.results / args.reference_protocol).get(REFERENCE)
        if not references:
            parser.error(f"no {REFERENCE} results in {args.results / args.reference_protocol}")
    table = main_table(groups, references)
    if args.readme:
        print(table, end="")
        return 0
    write_plot(groups, directory / "summary.png", f"CamVid label efficiency, protocol '{args.protocol}'")
    bought = bought_table(groups)
    if bought:
        bought = f"\n## What the bought labels hold (% of the bought pixels, mean over seeds)\n\n{bought}"
    (directory / "summary.md").write_text(
        f"# Label efficiency, protocol `{args.protocol}`\n\n"
        f"Validation mIoU (%) after the final cycle, mean ± std over seeds; labelled % counts pixels.\n\n"
        f"{table}\n## Final per-class IoU (%)\n\n{class_table(groups)}\n"
        f"![mIoU vs labelled fraction](summary.png)\n{bought}"
    )
    print(f"wrote {directory / 'summary.md'} and {directory / 'summary.png'}")
    if args.update:
        replace_block(args.update, args.protocol, table)
        print(f"updated the {args.protocol} table in {args.update}")
    return 0


def replace_block(path: Path, protocol: str, table: str) -> None:
    start, end = f"<!-- results:{protocol} -->", f"<!-- /results:{protocol} -->"
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path}: no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    path.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    raise SystemExit(main())
