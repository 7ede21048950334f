"""Where an active-learning run stands: one row per cycle (labelled share, val mIoU, what it
bought), the cycle in progress, whether a process is working on the run now, and what to run next;
`s4al status` also what its dataset has gained or lost since. `s4al run` ends with the account;
`s4al status` prints it without touching the run."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from rich.table import Table

from s4al.active.dataset_changes import dataset_changes
from s4al.active.ledger import PROJECT_META, Ledger, Region
from s4al.active.phases import CyclePhases
from s4al.config import RunConfig
from s4al.data import DatasetError, build_dataset
from s4al.errors import S4alError
from s4al.train.checkpoint import load_checkpoint, processes_to_resume
from s4al.text import counted, first_of, shell
from s4al.run_folder import RunFolder, json_lines


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def finished_line(run_dir: Path, cycles: int, ledger: Ledger) -> str:
    if cycles > 0 and asked_nothing(ledger, cycles - 1):
        return (f"The run has finished its last cycle ({cycles}); its pool had nothing left to ask by cycle "
                f"{cycles - 1}: every image is labelled or every region of it asked.")
    return (f"The run has finished its last cycle ({cycles}). For more labels, "
            f"`s4al run --resume {shell(run_dir)} --set active.cycles={cycles + 1}` asks with the last model and "
            "trains once more.")


def asked_nothing(ledger: Ledger, cycle: int) -> bool:
    """Whether asking `cycle` found nothing left to ask: no region asked, no image bought."""
    return not ledger.regions(cycle) and not any(record.acquired_cycle == cycle for record in ledger.images())


def cycle_table(run_dir: Path, summaries: list[dict], ledger: Ledger, phases: CyclePhases) -> Table:
    """The finished cycles, and the one that asked and waits for its answers or for the run to go on."""
    table = Table(title=f"active learning: {run_dir}")
    for column in ("cycle", "labelled %", "val mIoU", "regions bought", "images bought"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(str(s["cycle"]), f"{100 * s['labelled_fraction']:.2f}", percent(s["val"]["miou"]),
                      str(s["bought"]["regions"]), str(s["bought"]["images"]))
    current = open_cycle(ledger, phases, [s["cycle"] for s in summaries])
    if current is not None:
        table.add_row(str(current["cycle"]), f"{100 * current['labelled_fraction']:.2f}",
                      percent(current["val"]["miou"]), asking_text(current["asking"]), "-")
    return table


def open_cycle(ledger: Ledger, phases: CyclePhases, summarized: Collection[int]) -> dict | None:
    """The cycle that has trained and asks next or waits for its answers (its summary is written as
    the run goes on): its metrics as a summary has them, with `asking` (its phase and the regions
    asked, answered and skipped so far) in place of what it bought. None where no cycle is so, or
    where it is among the `summarized` cycles (a run stopped as it finished the cycle)."""
    cycle = phases.last_cycle()
    phase = None if cycle is None else phases.phase(cycle)
    metrics = {} if cycle is None else phases.metrics(cycle)
    if phase not in ("acquire", "answer") or "val" not in metrics or cycle in summarized:
        return None
    asking = {"phase": phase, "asked": len(ledger.asked(cycle)), "answered": len(ledger.answered(cycle)),
              "skipped": len(ledger.skipped(cycle))}
    return {"cycle": cycle, **metrics, "asking": asking}


def open_state(cycle: dict) -> str:
    """', asking' or ', answered' after a cycle's name where it is open (status.open_cycle), else ''."""
    asking = cycle.get("asking")
    if asking is None:
        return ""
    return ", asking" if asking["phase"] == "acquire" or asking["asked"] else ", answered"


def asking_text(asking: dict) -> str:
    """What an open cycle has asked so far, in a few words."""
    if asking["phase"] == "acquire":
        return "asks next"
    # "asked" holds the regions still waiting for an answer: not all the cycle asked
    counts = [f"{asking[key]} {word}" for key, word in (("asked", "waiting"), ("answered", "answered"),
                                                          ("skipped", "skipped")) if asking[key]]
    return ", ".join(counts) or "-"  # none: whole images bought, which the summary counts as the run goes on


def next_lines(run_dir: Path, cfg: RunConfig, ledger: Ledger, phases: CyclePhases,
               metrics_log: Path | None = None, holder: str | None = None, resume_refused: bool = False,
               masked: Collection[str] = (), config_edited: bool = False) -> list[str]:
    """The cycle in progress and what to run next. With `metrics_log`, a cycle still training says
    its last evaluation; with `holder`, the process at work on the run is named; `resume_refused`:
    the dataset as it is now would be refused (dataset_lines says why); `masked`: pool images given
    a mask since, whose asked regions the mask answers as the run resumes; `config_edited`:
    config.yaml was edited since the run was made, which a resume refuses."""
    cycle = phases.last_cycle()
    phase = None if cycle is None else phases.phase(cycle)
    asked, masked = ledger.asked(), set(masked)
    pending = [region for region in asked if region.image_id not in masked]
    lines = [f"in use by {holder} now (a run, an import, a query or a skip): wait for it to end"] if holder else []
    if config_edited:
        lines.append("`s4al run --resume` refuses config.yaml as it is now: put back the file the run was made with "
                     "first (the note above).")
    needed, unneeded = lost_answers(run_dir, ledger, phases)
    if cfg.active.annotator == "oracle" and needed + unneeded:  # the resume answers them again (cycle.py)
        lines.append(f"{counted(len(needed + unneeded), 'answered region')} lost the stored answer (its file "
                     "missing); `s4al run --resume` writes them again from the dataset's labels.")
        needed = unneeded = []
    lines += lost_answers_lines(run_dir, needed, unneeded)
    if phase == "done" and cycle == cfg.active.cycles:
        return lines + [finished_line(run_dir, cycle, ledger)]
    if pending and cfg.active.annotator == "external":
        return lines + [_waiting(run_dir, len(pending), len(asked) - len(pending), ledger.get_meta(PROJECT_META))]
    if pending:
        lines.append(f"{counted(len(pending), 'region')} asked: the dataset's ground truth answers them as the run "
                     "resumes (active.annotator: oracle).")
    elif phase in (None, "train") and metrics_log is not None:
        state = "is training" if holder else "stopped while training" if phase else "has not begun training"
        lines.append(_training(cfg, cycle or 0, metrics_log, state))
    elif phase == "acquire":
        lines.append(f"cycle {cycle} has trained; it scores the pool and asks next.")
    elif phase == "answer":
        by_masks = "" if not asked else (f" but {counted(len(asked), 'region')} of images given a mask since, which "
                                         "answers them as the run resumes")
        lines.append(f"every region cycle {cycle} asked is answered or skipped{by_masks}.")
    if not holder:
        first = ("Once the dataset is as said above, continue" if resume_refused
                 else "Once the lost answers are written again, continue" if needed else "Continue")
        processes = resume_processes(run_dir, cycle) if phase in (None, "train") else 1
        launcher = (f" under torchrun with {processes} processes in all, as many as trained the cycle's checkpoint "
                    "(a cycle resumes on as many)" if processes > 1 else "")
        lines.append(f"{first} with `s4al run --resume {shell(run_dir)}`{launcher}.")
    return lines


def resume_processes(run_dir: Path, cycle: int | None) -> int:
    """The processes that trained the cycle's unfinished checkpoint, which its resume must run on;
    1 where there is none (any number may begin a cycle) or it cannot be read (the resume says why)."""
    path = RunFolder(run_dir).checkpoint_path(cycle or 0)
    if not path.is_file():
        return 1
    try:
        return processes_to_resume(load_checkpoint(path)) or 1
    except S4alError:
        return 1


def lost_answers(run_dir: Path, ledger: Ledger, phases: CyclePhases) -> tuple[list[Region], list[Region]]:
    """The answered regions whose stored answer (a PNG in the run folder) is gone, looked for, not
    read: those a resume needs, and those it does not (their images are labelled whole since, so
    training reads the image's own label, and their cycle is done, its summary written)."""
    lost = [region for region in ledger.answered() if not ledger.has_patch(region)]
    whole = {record.image_id for record in ledger.images() if record.fully_labelled}
    folder = RunFolder(run_dir)
    unneeded = [r for r in lost if r.image_id in whole and phases.phase(r.cycle) == "done"
                and folder.cycle_summary_path(r.cycle).exists()]
    unneeded_ids = {r.region_id for r in unneeded}
    return [r for r in lost if r.region_id not in unneeded_ids], unneeded


def lost_answers_lines(run_dir: Path, needed: list[Region], unneeded: list[Region]) -> list[str]:
    """What a run with lost answers must do before it can go on, if anything."""
    lines = []
    for lost, consequence in ((needed, "`s4al run --resume` refuses until `s4al import {run} ANSWERS` writes {it}"),
                              (unneeded, "the run goes on without {it}, {its} image{s} labelled whole since; the cycle "
                                         "summary counting {it} is kept, and `s4al import {run} ANSWERS` can write {it}")):
        if lost:
            where = [f"region {r.region_id} (image '{r.image_id}', cycle {r.cycle}: {r.label_path})" for r in lost]
            its, it, s = ("its", "it", "") if len(lost) == 1 else ("their", "them", "s")
            what_then = consequence.format(run=shell(run_dir), it=it, its=its, s=s)
            lines.append(f"{counted(len(lost), 'answered region')} lost {its} stored answer, the file missing: "
                         f"{first_of(where, 3)}; {what_then} again from the masks or Label Studio export that "
                         f"answered {it}.")
    return lines


def dataset_lines(run_dir: Path, cfg: RunConfig, ledger: Ledger) -> tuple[list[str], bool, list[str]]:
    """What the run's next resume takes from its dataset, or refuses in it, as the dataset is now;
    whether it refuses; and the pool images given a mask since."""
    try:
        dataset = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    except (DatasetError, OSError) as err:  # the account above stands without it
        return [f"the dataset cannot be read: {err}; if it moved: s4al run --resume {shell(run_dir)} "
                "--set dataset.root=ITS_NEW_FOLDER"], True, []
    changes = dataset_changes(ledger.images(), dataset, cfg)
    lines = [f"`s4al run --resume` refuses: {refusal}" for refusal in changes.refusals]
    if changes.text():
        lines.append(f"to join the run as the next cycle begins training or asking: {changes.text()}")
    if changes.unlisted:
        lines.append(changes.unlisted)
    return lines, bool(changes.refusals), changes.masked


def _waiting(run_dir: Path, asked: int, masked: int, project: dict | None) -> str:
    """`asked`: the regions waiting for answers; `masked`: those asked of images given a mask since;
    `project`: the run's Label Studio project (ledger meta), if a query has sent tasks to one."""
    answer = (f"answer: `s4al query {shell(run_dir)}` writes the tasks (with `--label-studio URL`, sends them to "
              f"a Label Studio server), `s4al import {shell(run_dir)} ANSWERS` reads the answers (a region needs half "
              "its pixels painted), or")
    if project is not None:
        answer = (f"answer in Label Studio, {project['url']}/projects/{project['id']} (`s4al query {shell(run_dir)} "
                  f"--label-studio {project['url']}` sends a cycle's tasks), then `s4al import {shell(run_dir)} "
                  f"--label-studio` (a region needs half its pixels painted), or")
    by_masks = (f" (and {counted(masked, 'region')} of images given a mask since: the masks answer them as the run "
                "resumes)") if masked else ""
    return (f"{counted(asked, 'region')} asked, waiting for answers{by_masks}; the run goes on when none is left. "
            f"Either\n  {answer}\n"
            f"  skip: `s4al skip {shell(run_dir)}` (every region still asked) or "
            f"`s4al skip {shell(run_dir)} --region ID ...`,\n"
            f"then `s4al run --resume {shell(run_dir)}` trains the next cycle with what is answered.")


def _training(cfg: RunConfig, cycle: int, metrics_log: Path, state: str) -> str:
    """The training cycle's last evaluation; `state`: whether a process trains it now or it stopped."""
    record = last_evaluation(metrics_log, cycle)
    epochs = cfg.cycle_epochs(cycle)
    if record is None:
        return f"cycle {cycle} {state}: no evaluation yet (of {epochs} epochs)."
    return (f"cycle {cycle} {state}: last evaluated after epoch {record['epoch']} of {epochs}, "
            f"val mIoU {percent(record['miou'])}.")


def last_evaluation(metrics_log: Path, cycle: int) -> dict | None:
    """The latest evaluation of `cycle` in the run's metrics.jsonl, None before the first."""
    latest = None
    for _, record in json_lines(metrics_log):
        if record is not None and record.get("cycle") == cycle and "epoch" in record:
            latest = record
    return latest
