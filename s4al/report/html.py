"""A self-contained HTML report of a run folder: the figures (embedded PNGs, also kept beside the
page), the per-cycle table of labels, scores and timings (also as cycles.csv), and the run's config."""

from __future__ import annotations

import base64
import shlex
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from s4al.active.ledger import JOINED, RESUME_CHANGES, Ledger, LedgerError
from s4al.active.opening import changed_config_note
from s4al.provenance import code_text
from s4al.text import counted
from s4al.run_folder import RunFolder, json_lines
from s4al.config import load_run_config
from s4al.report.figures import read_cycles, save_figures, supervised_reference
from s4al.report.status import asking_text, open_state
from s4al.report.table import CSV_FILE, cycle_row, write_cycles_csv

REPORT_FILE = "report.html"
FIGURE_TEXT = {
    "efficiency": (
        "Label efficiency",
        "Val mIoU of each cycle's model against the share of all train pixels labelled so far (initial "
        "images plus bought regions). The dashed line is the fully supervised model, when given. "
        "The paper's Fig. 3.",
    ),
    "class_iou": ("Per-class IoU", "Val IoU of every class after each cycle; later cycles are darker."),
    "bought": (
        "What does the network want?",
        "The classes of the pixels bought in each cycle, as a share of that cycle's purchase, in the "
        "dataset's class colours; the hatched bar is void. The paper's Fig. S1.",
    ),
    "regions": (
        "Asked regions",
        "The regions (yellow boxes) asked in the latest cycle that asked, on the images whose "
        "best region scored highest.",
    ),
    "qualitative": (
        "Qualitative results",
        "Val images spread evenly over the split: the image, its ground truth, the final model's "
        "prediction, and its errors (red: wrong, grey: ignored pixels). The paper's Figs. S2 and S3.",
    ),
}

TEMPLATE = jinja2.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>S4AL report: {{ name }}</title>
<style>
  body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
         color: #1d2330; background: #f6f7f9; margin: 0; }
  main { max-width: 1100px; margin: 0 auto; padding: 2rem 1.5rem 4rem; background: #fff; }
  h1 { font-size: 1.9rem; margin: 0 0 .2rem; }
  h3 { font-size: 1.05rem; margin: 0 0 .6rem; }
  h2 { font-size: 1.35rem; margin: 2.4rem 0 .8rem; padding-bottom: .3rem; border-bottom: 1px solid #e3e6eb; }
  .subtitle { color: #5b6473; margin: 0 0 1.5rem; }
  code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: .8rem; }
  .card { border: 1px solid #e3e6eb; border-radius: 8px; padding: .7rem .9rem; }
  .card .value { font-size: 1.35rem; font-weight: 600; white-space: nowrap; }
  .card .label { color: #5b6473; font-size: .85rem; }
  table { border-collapse: collapse; width: 100%; font-size: .92rem; font-variant-numeric: tabular-nums; }
  th, td { padding: .45rem .6rem; border-bottom: 1px solid #e3e6eb; text-align: right; }
  td { white-space: nowrap; }
  th { background: #f0f2f5; font-weight: 600; }
  th:first-child, td:first-child { text-align: left; }
  .table-wrap { overflow-x: auto; }
  figure { margin: 1.2rem 0 2rem; }
  figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
  figcaption { color: #3d4553; font-size: .93rem; margin-top: .6rem; max-width: 80ch; }
  summary { cursor: pointer; color: #3d4553; }
  .note { color: #5b6473; font-style: italic; }
  pre { background: #f6f7f9; border: 1px solid #e3e6eb; border-radius: 6px; padding: .9rem; overflow-x: auto;
        font-size: .85rem; line-height: 1.4; }
</style>
</head>
<body>
<main>
<h1>S4AL run report</h1>
<p class="subtitle">Run folder <code>{{ run_dir }}</code> &middot; generated {{ generated }}</p>

<div class="cards">
{% for label, value in cards %}  <div class="card">
    <div class="value">{{ value }}</div><div class="label">{{ label }}</div>
  </div>
{% endfor %}</div>

<h2>Cycles</h2>
<div class="table-wrap"><table>
<thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
<p class="note">These numbers unformatted, with each class's IoU: <code>{{ csv_file }}</code> beside this page.</p>

<h2>Figures</h2>
{% for fig in figures %}<figure>
<h3>Figure {{ loop.index }}. {{ fig.title }}</h3>
<img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.title }}">
<figcaption>{{ fig.caption }}</figcaption>
</figure>
{% endfor %}{% for title, reason in skipped %}<p class="note">{{ title }}: not drawn, {{ reason }}.</p>
{% endfor %}
<h2>Configuration</h2>
{% if starts %}<div class="table-wrap"><table>
<thead><tr><th>started (UTC)</th><th>command</th><th>code</th><th>device</th><th>torch</th></tr></thead>
<tbody>
{% for row in starts %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
<p class="note">Each start of the run, from <code>starts.jsonl</code> in its folder.</p>
{% endif %}{% if changes %}<div class="table-wrap"><table>
<thead><tr><th>when (UTC)</th><th>what changed</th></tr></thead>
<tbody>
{% for row in changes %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
<p class="note">Settings changed on resume and images or masks added to the dataset as they joined the run, from its label ledger.</p>
{% endif %}{% if config_note %}<p class="note">Note: {{ config_note }}.</p>
{% endif %}<details>
<summary>config.yaml of the run (seed {{ seed }})</summary>
<pre>{{ config }}</pre>
</details>
</main>
</body>
</html>
""",
    autoescape=True,
)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def report_rows(cycles: list[dict], supervised_miou: float | None) -> tuple[list[str], list[list[str]]]:
    """The report's table of cycles: its header and a formatted row per cycle."""
    header = ["cycle", "labelled %", "labelled pixels", "regions bought", "images bought", "pixels bought",
              "val mIoU (%)", "train time", "acquire time"]
    if supervised_miou is not None:
        header.insert(7, "% of supervised")
    rows = []
    for cycle, c in zip(cycles, map(cycle_row, cycles)):  # the values cycles.csv holds, formatted
        miou = c["val_miou"]
        bought = ([asking_text(cycle["asking"]), "–", "–"] if "asking" in cycle else
                  [f"{c['regions_bought']:,}", f"{c['images_bought']:,}", f"{c['pixels_bought']:,}"])
        row = [str(c["cycle"]), f"{100 * c['labelled_fraction']:.2f}", f"{c['labelled_pixels']:,}", *bought,
               f"{100 * miou:.2f}", duration(c["train_seconds"]), duration(c["acquire_seconds"])]
        if supervised_miou is not None:
            row.insert(7, f"{100 * miou / supervised_miou:.1f}")
        rows.append(row)
    return header, rows


def summary_cards(cycles: list[dict], seed: int, dataset: str) -> list[tuple[str, str]]:
    last = cycles[-1]
    seconds = sum(c.get("train_seconds", 0) + c.get("acquire_seconds", 0) for c in cycles)
    return [
        (f"val mIoU of cycle {last['cycle']}{open_state(last)}", f"{100 * last['val']['miou']:.1f}%"),
        ("labelled pixels", f"{100 * last['labelled_fraction']:.2f}%"),
        ("cycles finished", str(sum("bought" in c for c in cycles))),
        ("dataset", dataset),
        ("seed", str(seed)),
        ("train + acquire time", duration(seconds)),
    ]


def start_rows(folder: RunFolder) -> list[list[str]]:
    return [[r.get("started", "?").replace("T", " ").split("+")[0], shlex.join(r.get("command", [])), code_text(r),
             f"{r.get('device', '?')} x {r.get('processes', 1)}", r.get("torch", "?")]
            for _, r in json_lines(folder.starts_log) if r is not None]


def change_rows(folder: RunFolder) -> list[list[str]]:
    """What changed in the run after it was made, in order: settings on resume, images and masks
    that joined it from the dataset; none where its ledger cannot be read (the figures say so)."""
    try:
        with Ledger(folder.ledger_path, readonly=True) as ledger:
            resumed, joined = ledger.get_meta(RESUME_CHANGES, []), ledger.get_meta(JOINED, [])
    except (FileNotFoundError, LedgerError):
        return []
    rows = [(r["at"], "resumed with " + ", ".join(f"{key} {change['was']} → {change['now']}"
                                                  for key, change in r.items() if key != "at")) for r in resumed]
    rows += [(j["at"], f"before {j['before']}, joined: " + ", ".join(
        counted(len(j[key]), what) for key, what in (("labelled", "labelled image"), ("pool", "pool image"),
                                                      ("masked", "mask of a pool image")) if j[key]))
             for j in joined]
    return [[at.replace("T", " ").split("+")[0], text] for at, text in sorted(rows)]


def _embedded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(run_dir: Path, out_dir: Path | None = None, supervised_miou: float | str | Path | None = None) -> Path:
    """Writes OUT/report.html (OUT defaults to RUN_DIR/report), the figure PNGs and cycles.csv beside it;
    `supervised_miou` is a fraction or a JSON file with "miou" (see supervised_reference)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    supervised = supervised_reference(supervised_miou)
    cycles = read_cycles(run_dir)  # once: the figures and the table show the same cycles of a live run
    saved, skipped = save_figures(run_dir, out_dir, cycles, supervised)
    folder = RunFolder(Path(run_dir))
    cfg = load_run_config(folder.config_path)
    header, rows = report_rows(cycles, supervised)
    write_cycles_csv(cycles, out_dir / CSV_FILE)
    html = TEMPLATE.render(
        name=run_dir.resolve().name,
        run_dir=run_dir.resolve(),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cards=summary_cards(cycles, cfg.seed, cfg.dataset.name),
        header=header,
        rows=rows,
        csv_file=CSV_FILE,
        figures=[{"title": FIGURE_TEXT[n][0], "caption": FIGURE_TEXT[n][1], "data": _embedded(path)}
                 for n, path in saved.items()],
        skipped=[(FIGURE_TEXT[n][0], reason) for n, reason in skipped.items()],
        seed=cfg.seed,
        starts=start_rows(folder),
        changes=change_rows(folder),
        config=folder.config_path.read_text(),
        config_note=changed_config_note(folder),
    )
    path = out_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return path
