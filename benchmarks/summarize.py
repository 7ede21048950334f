"""Summarise the label-efficiency results. For each results folder (a protocol, or a variant
of one made with --name): summary.md (val mIoU mean ± std over seeds, ratio to full supervision,
test mIoU where the data had a test split, per-cycle values, the device time each method took,
paired differences per seed against S4AL with a 95% interval, final per-class IoU, the classes of
the pixels each acquisition bought) and summary.png (mIoU vs labelled fraction). Without
--protocol, every folder, then, for the committed results (or where --docs and --readme say),
docs/results.md (all of them) and the README's table at a glance.

    .venv/bin/python benchmarks/summarize.py                     # everything
    .venv/bin/python benchmarks/summarize.py --protocol cpu      # one folder's summary
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common import REPO, RESULTS, markdown_table
from label_efficiency import LOCAL_KEYS, METHODS, PROTOCOLS, method_config

from s4al.config import flat_config, run_differences, saved_config
from s4al.provenance import code_text
from s4al.text import first_of, shell

REFERENCE = "full_supervised"
# The comparison the benchmark exists for: S4AL against its floor, ceiling and baselines.
MAIN_METHODS = ("full_supervised", "sup_10", "ssl_10", "region_random_ssl", "s4al", "s4al_paper")
PAIRS = (("s4al", "region_random_ssl"), ("s4al", "ssl_10"), ("s4al", "s4al_paper"))
# The README's columns, in this order, where they have results: the CPU regression check and the
# paper protocol (on the JPEG copy where an upload limit asked for it).
GLANCE = {
    "cpu": "`cpu` protocol: 2 CPU cores, final training 1,440 steps",
    "paper": "`paper` protocol (Table S2): final training 10,000 steps",
    "paper_jpeg95": "`paper` protocol (Table S2): final training 10,000 steps, images as JPEG q95",
}
# Two-sided 95% quantiles of Student's t for 1-30 degrees of freedom (any statistics table).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
# The project's own target, beyond the paper's 97% at 13.8%: 97% of full supervision with at most
# 12% of the pixels labelled.
TARGET_SHARE, TARGET_PIXELS = 0.97, 0.12
BUDGETS = ("s4al", "s4al_30x30x2")  # the same learner and acquisition, 4 and 2 cells an image a cycle
DOCS = REPO / "docs" / "results.md"
README = REPO / "README.md"


def load_results(directory: Path) -> dict[str, list[dict]]:
    """Results by method, methods in the benchmark's order, each method's runs by seed."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(directory.glob("*.json")):
        try:
            result = json.loads(path.read_text())
            groups[result["method"]].append(result)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SystemExit(f"{path}: not a result file of label_efficiency.py ({type(err).__name__}: {err})") from None
    order = [m for m in METHODS if m in groups] + sorted(set(groups) - set(METHODS))
    return {m: sorted(groups[m], key=lambda r: r["seed"]) for m in order}


def protocol_of(folder: str) -> str:
    """The protocol a results folder ran: its own name, or the protocol its --name extends."""
    matches = [p for p in PROTOCOLS if folder == p or folder.startswith(p + "_")]
    if not matches:
        raise SystemExit(f"results folder '{folder}' names no protocol ({', '.join(PROTOCOLS)})")
    return max(matches, key=len)


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b on the seeds both have: the differences, their mean and the half-width of its 95%
    interval (Student's t over the differences; None with fewer than 2 pairs)."""
    seeds = sorted(set(a) & set(b))
    differences = [a[s] - b[s] for s in seeds]
    n = len(differences)
    half = None
    if n >= 2:
        half = T_975[min(n - 1, len(T_975)) - 1] * float(np.std(differences, ddof=1)) / math.sqrt(n)
    return {"seeds": seeds, "differences": differences, "mean": float(np.mean(differences)) if n else None,
            "half_width": half}


def per_cycle(runs: list[dict], split: str = "val") -> list[tuple[float, float, float]]:
    """Per cycle: (mean labelled fraction, mean mIoU, std mIoU) over seeds."""
    cycles = min(len(r["cycles"]) for r in runs)
    return [
        (mean_std([r["cycles"][c]["labelled_fraction"] for r in runs])[0],
         *mean_std([r["cycles"][c][split]["miou"] for r in runs]))
        for c in range(cycles)
    ]


def share_of_reference(runs: list[dict], reference: list[dict]) -> tuple[float, bool]:
    """The runs' mean final mIoU in % of the reference's, both on the seeds they share (the
    reference's seeds differ by points), and whether any is shared; else on all of each."""
    ref = {r["seed"]: r["final"]["miou"] for r in reference}
    paired = [r for r in runs if r["seed"] in ref]
    theirs = [ref[r["seed"]] for r in paired] or list(ref.values())
    return 100 * float(np.mean([r["final"]["miou"] for r in paired or runs]) / np.mean(theirs)), bool(paired)


def _share(runs: list[dict], reference: list[dict]) -> str:
    share, paired = share_of_reference(runs, reference)
    return f"{share:.1f}%" + ("" if paired else "†")


def _miou(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _has_test(runs: list[dict]) -> bool:
    return all("test" in c for r in runs for c in r["cycles"])


def _cycles_text(runs: list[dict]) -> str:
    val = per_cycle(runs)
    test = per_cycle(runs, "test") if _has_test(runs) else None
    return " → ".join(
        f"{100 * m:.1f}" + (f" (test {100 * test[c][1]:.1f})" if test else "") + f" @ {100 * f:.1f}%"
        for c, (f, m, _) in enumerate(val))


def device_minutes(runs: list[dict]) -> str:
    """Mean wall minutes per run and the device, a cycle 0 taken from another run counted at the
    seconds it trained there; '+' where a run's earlier invocations are unknown."""
    minutes, devices, unknown = [], set(), False
    for r in runs:
        cost = r.get("cost")
        if cost:
            minutes.append((cost["wall_seconds"] + cost.get("cycle0_lender_train_seconds", 0)) / 60)
            devices.add(f"{cost['device']}, {cost['side_by_side']} side by side" if cost["side_by_side"] > 1
                        else cost["device"])
        else:
            minutes.append(r["timings"]["wall_seconds"] / 60)
            unknown |= r["timings"]["resumed"]
            devices.add(r["machine"]["gpu"] or r["machine"]["cpu"])
    return f"{np.mean(minutes):.0f}{'+' if unknown else ''} min ({'; '.join(sorted(devices))})"


def main_table(groups: dict[str, list[dict]]) -> str:
    runs_ref = groups.get(REFERENCE)
    with_test = any(_has_test(runs) for runs in groups.values())
    rows = []
    for method, runs in groups.items():
        mean, std = mean_std([r["final"]["miou"] for r in runs])
        test = [_miou(*mean_std([r["cycles"][-1]["test"]["miou"] for r in runs]), len(runs))
                if _has_test(runs) else "–"] if with_test else []
        rows.append([
            method,
            ", ".join(str(r["seed"]) for r in runs),
            f"{100 * mean_std([r['final']['labelled_fraction'] for r in runs])[0]:.2f}",
            _miou(mean, std, len(runs)),
            _share(runs, runs_ref) if runs_ref else "–",
            *test,
            device_minutes(runs),
            _cycles_text(runs),
        ])
    headers = ["method", "seeds", "labelled %", "val mIoU", f"of {REFERENCE}", *(["test mIoU"] if with_test else []),
               "time per run", "per cycle: val mIoU @ labelled %"]
    return markdown_table(headers, rows)


def pairs(groups: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """PAIRS, then S4AL against each method beyond the main comparison (an ablation, a variant): every
    difference is S4AL's mIoU minus the other's."""
    return [*PAIRS, *(("s4al", m) for m in groups if m not in MAIN_METHODS)]


def pairs_table(groups: dict[str, list[dict]]) -> str:
    """The paired differences in val mIoU points, per seed, for the pairs both methods ran; "" if none."""
    rows = []
    for a, b in pairs(groups):
        if a not in groups or b not in groups:
            continue
        finals = [{r["seed"]: 100 * r["final"]["miou"] for r in groups[m]} for m in (a, b)]
        d = paired_difference(*finals)
        if not d["seeds"]:
            continue
        per_seed = ", ".join(f"{s}: {x:+.1f}" for s, x in zip(d["seeds"], d["differences"]))
        interval = "n/a" if d["half_width"] is None else f"{d['mean'] - d['half_width']:+.1f} to {d['mean'] + d['half_width']:+.1f}"
        rows.append([f"{a} − {b}", per_seed, f"{d['mean']:+.1f}", interval])
    return markdown_table(["difference", "per seed", "mean", "95% interval"], rows) if rows else ""


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


def command(folder: str, method: str, runs: list[dict]) -> str:
    """The benchmark command behind a method's result files: a --set for each setting in which the
    first run's config, read as it ran, differs from today's for the same command (a --set it was
    given, or a default changed since), but for where data and weights are and the settings of the
    machine it ran on."""
    protocol = protocol_of(folder)
    first = runs[0]
    today = method_config(PROTOCOLS[protocol], METHODS[method], first["seed"], Path("."), Path("."))
    made = saved_config(first["config"], f"{folder}/{method}_seed{first['seed']}.json")
    values = flat_config(made)
    sets = [f"--set {shell(f'{key}={_set_value(values[key])}')}" for key in run_differences(made, today, LOCAL_KEYS)]
    seeds = " ".join(str(r["seed"]) for r in runs)
    name = [f"--name {folder}"] if folder != protocol else []
    return " ".join(["benchmarks/label_efficiency.py --protocol", protocol, "--methods", method, "--seeds", seeds,
                     *sets, *name])


def _set_value(value) -> str:
    """A config value as --set reads it back (YAML): lists and flags as JSON, strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def commands_list(folder: str, groups: dict[str, list[dict]]) -> str:
    return "".join(f"- `{command(folder, method, runs)}`\n" for method, runs in groups.items() if method in METHODS)


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


def code_note(groups: dict[str, list[dict]]) -> str:
    """Where a folder's results were made by other code (each file's `machine`: its commit, whether
    modified), which versions made which runs; else nothing."""
    made = defaultdict(list)
    for method, runs in groups.items():
        for run in runs:
            if run.get("machine", {}).get("git_commit"):
                made[code_text(run["machine"])].append(f"{method} seed {run['seed']}")
    if len(made) < 2:
        return ""
    versions = [f"{text} ({first_of(runs, 3)})" for text, runs in made.items()]
    return f"Made by {len(made)} versions of the code: {first_of(versions, 4, '; ')}.\n\n"


def settings_note(folder: str, groups: dict[str, list[dict]]) -> str:
    """Where a method's seeds were not made with one configuration (seed 0 before a default changed,
    the others after it): its mean mixes two, and its command is its first seed's; else nothing."""
    mixed = []
    for method, (first, *others) in groups.items():
        made = saved_config(first["config"], f"{folder}/{method}_seed{first['seed']}.json")
        for run in others:
            keys = run_differences(made, saved_config(run["config"], f"{folder}/{method}_seed{run['seed']}.json"),
                                   (*LOCAL_KEYS, "seed"))
            if keys:
                mixed.append(f"{method} seed {run['seed']} differs from seed {first['seed']} in {first_of(keys, 4)}")
    if not mixed:
        return ""
    return f"Seeds of one method made with other settings (their mean mixes them): {'; '.join(mixed)}.\n\n"


def folder_body(folder: str, groups: dict[str, list[dict]], heading: str) -> str:
    """The Markdown of one results folder: main table, paired differences, the commands."""
    pairs = pairs_table(groups)
    pairs = (f"\n{heading} Paired differences: S4AL's val mIoU minus the other's (points; same seed: same initial labels)\n\n"
             f"{pairs}") if pairs else ""
    return (f"Val mIoU (%) after the final cycle, mean ± std over seeds; of {REFERENCE}: the mean's share of "
            f"{REFERENCE}'s on the same seeds (†: none shared, against its own); labelled % counts pixels; time per "
            f"run is wall time on the device named (a cycle 0 taken from another run at its training time "
            f"there).\n\n{main_table(groups)}{pairs}\n{code_note(groups)}{settings_note(folder, groups)}"
            f"{heading} Commands\n\nThe data and weights paths (`--data-root`, `--weights`) are in each result "
            f"file's config.\n\n{commands_list(folder, groups)}")


def write_summary(directory: Path, groups: dict[str, list[dict]]) -> Path:
    data = "synthetic streets" if protocol_of(directory.name) in ("synthetic", "smoke") else "CamVid"
    write_plot(groups, directory / "summary.png", f"Label efficiency on {data}, {directory.name}")
    bought = bought_table(groups)
    bought = f"\n## What the bought labels hold (% of the bought pixels, mean over seeds)\n\n{bought}" if bought else ""
    out = directory / "summary.md"
    out.write_text(
        f"# Label efficiency, `{directory.name}`\n\n{folder_body(directory.name, groups, '##')}\n"
        f"## Final per-class IoU (%)\n\n{class_table(groups)}\n![mIoU vs labelled fraction](summary.png)\n{bought}"
    )
    return out


def glance_table(folders: dict[str, dict[str, list[dict]]]) -> str:
    """MAIN_METHODS against the GLANCE folders that have results: mIoU, share of full supervision,
    labelled pixels and seeds."""
    columns = [f for f in GLANCE if f in folders]
    rows = []
    for method in MAIN_METHODS:
        cells = []
        for folder in columns:
            runs, reference = folders[folder].get(method), folders[folder].get(REFERENCE)
            if not runs:
                cells.append("not run")
                continue
            mean, std = mean_std([r["final"]["miou"] for r in runs])
            share = f" ({_share(runs, reference)})" if reference else ""
            labelled = 100 * mean_std([r["final"]["labelled_fraction"] for r in runs])[0]
            seeds = ", ".join(str(r["seed"]) for r in runs)
            cells.append(f"{_miou(mean, std, len(runs))}{share} @ {labelled:.1f}%, seed{'s' * (len(runs) > 1)} {seeds}")
        rows.append([f"`{method}`", *cells])
    return markdown_table(["method", *(GLANCE[f] for f in columns)], rows)


def missing(folder: str, groups: dict[str, list[dict]]) -> list[str]:
    """MAIN_METHODS seeds of the folder's protocol that have no result file."""
    seeds = PROTOCOLS[protocol_of(folder)].seeds
    out = []
    for method in MAIN_METHODS:
        done = {r["seed"] for r in groups.get(method, [])}
        if set(seeds) - done:
            out.append(f"{method} seed{'s' * (len(set(seeds) - done) > 1)} "
                       f"{', '.join(str(s) for s in sorted(set(seeds) - done))}")
    return out


def _against(groups: dict[str, list[dict]], other: str) -> str:
    finals = [{r["seed"]: 100 * r["final"]["miou"] for r in groups[m]} for m in ("s4al", other)]
    if not finals[0].keys() & finals[1].keys():
        return f"not yet paired with `{other}` (no seed run by both)"
    d = paired_difference(*finals)
    if d["half_width"] is None:
        return f"{d['mean']:+.1f} points from `{other}` on one seed (no interval)"
    low, high = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
    word = "above" if low > 0 else "below" if high < 0 else "not distinguishable from"
    return f"{word} `{other}` ({d['mean']:+.1f} points, 95% interval {low:+.1f} to {high:+.1f}, {len(d['seeds'])} seeds)"


def verdict(folder: str, groups: dict[str, list[dict]]) -> str:
    """In words: is S4AL at >= 97% of full supervision with <= 13.8% of the pixels (the paper's
    claim on CamVid), and above random regions, the learner on the initial 10% alone and S4AL with
    the paper's learner, by more than the seeds' noise?"""
    gaps = missing(folder, groups)
    head = f"`{folder}`: " + (f"missing {'; '.join(gaps)}." if gaps else "complete.")
    if "s4al" not in groups or REFERENCE not in groups:
        return head
    share, paired = share_of_reference(groups["s4al"], groups[REFERENCE])
    labelled = 100 * mean_std([r["final"]["labelled_fraction"] for r in groups["s4al"]])[0]
    # decided on the numbers shown, at the paper's precision (13.83% of the pixels is its 13.8%)
    met = "meets" if round(share, 1) >= 97 and round(labelled, 1) <= 13.8 else "does not meet"
    others = [_against(groups, b) for a, b in PAIRS if b in groups]
    seeds = "" if paired else " (against full supervision on other seeds)"
    return (f"{head} S4AL is at {share:.1f}% of full supervision{seeds} with {labelled:.1f}% of the pixels: it {met} the "
            f"paper's 97% at 13.8%; {fewest_pixels(groups)}" + (f"; it is {' and '.join(others)}." if others else "."))


def fewest_pixels(groups: dict[str, list[dict]]) -> str:
    """The fewest pixels at which a mean curve over the cycles of S4AL (at any of its budgets,
    BUDGETS) reaches TARGET_SHARE of full supervision, against TARGET_PIXELS."""
    reference = mean_std([r["final"]["miou"] for r in groups[REFERENCE]])[0]
    reached = [(fraction, method, cycle) for method in BUDGETS if method in groups
               for cycle, (fraction, miou, _) in enumerate(per_cycle(groups[method]))
               if miou >= TARGET_SHARE * reference]
    if not reached:
        return f"its mean curve never reaches {100 * TARGET_SHARE:.0f}% (the target: at most {100 * TARGET_PIXELS:.0f}% " \
               "of the pixels)"
    fraction, method, cycle = min(reached)
    where = "within" if round(100 * fraction, 1) <= 100 * TARGET_PIXELS else "above"  # as shown
    return (f"its mean curve first reaches {100 * TARGET_SHARE:.0f}% at {100 * fraction:.1f}% of the pixels (`{method}`, "
            f"cycle {cycle}), {where} the target of at most {100 * TARGET_PIXELS:.0f}%")


def results_doc(folders: dict[str, dict[str, list[dict]]]) -> str:
    parts = ["# Results\n\n"
             "Written by `benchmarks/summarize.py` from the result files in `benchmarks/results/label_efficiency/`; "
             "do not edit by hand. Each file holds its full configuration, the machine and the time the run took. "
             "The methods are listed by `benchmarks/label_efficiency.py --list`; results of learners and options "
             "that are no longer the default are in `benchmarks/results/archive/` (its README says what each "
             "showed). Speed and memory, per machine: `benchmarks/results/speed/` (`benchmarks/speed.py`).\n"]
    for folder, groups in folders.items():
        parts.append(f"\n## `{folder}`\n\n{verdict(folder, groups)}\n\n{folder_body(folder, groups, '###')}\n"
                     f"Per-class IoU, the classes bought and a plot: "
                     f"`benchmarks/results/label_efficiency/{folder}/summary.md`.\n")
    return "".join(parts)


def replace_block(path: Path, name: str, text: str) -> None:
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    content = path.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{path}: no {start} ... {end} block to replace")
    head, rest = content.split(start, 1)
    path.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", help="one results folder only: its summary.md and summary.png")
    parser.add_argument("--results", type=Path, default=RESULTS / "label_efficiency", help="default: %(default)s")
    parser.add_argument("--docs", type=Path, help=f"without --protocol; default: {DOCS.relative_to(REPO)} for the "
                                                   "committed results, none for others")
    parser.add_argument("--readme", type=Path, help="without --protocol: its <!-- results:glance --> block is "
                                                    f"replaced; default: {README.relative_to(REPO)} for the committed "
                                                    "results, none for others")
    args = parser.parse_args(argv)
    committed = args.results.resolve() == (RESULTS / "label_efficiency").resolve()
    args.docs, args.readme = args.docs or (DOCS if committed else None), args.readme or (README if committed else None)
    if not args.results.is_dir():
        parser.error(f"--results {args.results}: no such folder")
    if not args.protocol and args.readme and not args.readme.is_file():
        parser.error(f"--readme {args.readme}: no such file")
    names = [args.protocol] if args.protocol else sorted(p.name for p in args.results.iterdir() if p.is_dir())
    folders = {name: load_results(args.results / name) for name in names}
    folders = {name: groups for name, groups in folders.items() if groups}
    if not folders:
        parser.error(f"no results in {args.results / (args.protocol or '*')}")
    for name, groups in folders.items():
        print(f"wrote {write_summary(args.results / name, groups)} and summary.png")
    if args.protocol:
        return 0
    if args.readme:
        glance = {name: groups for name, groups in folders.items() if name in GLANCE}
        verdicts = "".join(f"- {verdict(name, groups)}\n" for name, groups in glance.items())
        replace_block(args.readme, "glance", f"{glance_table(folders)}\n{verdicts}")  # refused before the docs change
        print(f"wrote the table in {args.readme}")
    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(results_doc(folders))
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
