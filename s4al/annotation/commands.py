"""The `s4al query`, `s4al import` and `s4al skip` commands (registered in s4al/cli.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from s4al.annotation.masks import MIN_PAINTED_SHARE
from s4al.errors import S4alError, user_errors_reported
from s4al.text import counted, first_of, named, shell
from s4al.run_folder import RunFolder, RunFolderError

if TYPE_CHECKING:
    from s4al.active.cycle import ActiveLearningRun
    from s4al.annotation.answers import ImportReport
    from s4al.annotation.label_studio_api import Project, SentTasks

SHOWN_IMAGES = 5  # images named in the summary of ignored pixels
SHOWN_REGIONS = 10  # region ids named in a line; a large pool's cycle asks thousands

RunDirArgument = Annotated[Path, typer.Argument(help="A run folder made by `s4al run`.")]
OutOption = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Package folder (default: RUN_DIR/queries/cycle_C): new, or "
                                 "one a query wrote; never in the dataset's folder.")
]
DeviceOption = Annotated[str, typer.Option(help="Device for scoring and pre-annotation: auto, cpu, cuda, cuda:1, ...")]
AnswersArgument = Annotated[Optional[Path], typer.Argument(
    help="A Label Studio JSON export, or a folder of IMAGE_ID.png masks (none with --label-studio).", show_default=False)]
SendOption = Annotated[Optional[str], typer.Option(
    "--label-studio", metavar="URL", help="Also send the tasks to the run's one project on this Label Studio server "
    "(made by the first such query; later cycles go to the same one).")]
NewProjectOption = Annotated[bool, typer.Option(
    "--new-project", help="With --label-studio: make a new project on URL in place of the run's one (deleted, or on "
    "another server) and send it every task still asked; import the answers left in the old one from its JSON export "
    "first (s4al import RUN_DIR EXPORT.json), or their tasks are sent too.")]
ProjectOption = Annotated[Optional[int], typer.Option(
    "--project", metavar="ID", min=1, help="With --label-studio: send the tasks to this existing project on URL (one "
    "made by hand, its id in its address URL/projects/ID), the run's one from then on; tasks it holds are not sent "
    "again.")]
DownloadOption = Annotated[bool, typer.Option(
    "--label-studio", help="Download the full JSON export of the run's Label Studio project (the one "
    "`s4al query --label-studio` sends to) into RUN_DIR/answers/ and import it.")]
DryRunOption = Annotated[bool, typer.Option(
    "--dry-run", help="Check the answers and say what the import would do; write no answer (an export "
    "downloaded with --label-studio is kept).")]
ApiKeyOption = Annotated[Optional[str], typer.Option(
    "--api-key", metavar="TOKEN", envvar="LABEL_STUDIO_API_KEY", show_default=False,
    help="Label Studio access token for --label-studio (never stored).")]
WithdrawOption = Annotated[bool, typer.Option(
    "--withdraw", help="Also skip the answered regions named with --region: their answers no longer train.")]
CycleOption = Annotated[Optional[int], typer.Option(
    "--cycle", metavar="C", min=0, help="Without --region: every region still asked of cycle C alone.")]
RegionOption = Annotated[
    Optional[list[int]], typer.Option("--region", metavar="ID", help="A region id to skip (repeatable); default: every region still asked, an answer given for one (painted before or after) still answering it.")
]


def query(run_dir: RunDirArgument, out: OutOption = None, device: DeviceOption = "auto",
          label_studio: SendOption = None, new_project: NewProjectOption = False, project: ProjectOption = None,
          api_key: ApiKeyOption = None) -> None:
    """Write the asked regions for annotators: Label Studio tasks + config, overlays and a manifest;
    with --label-studio, send the tasks to the run's Label Studio project too.
    If the latest cycle has trained but not asked yet, score the pool and ask first."""
    from s4al.active.cycle import ActiveLearningRun
    from s4al.annotation.label_studio_api import checked_server, project_on, recorded_project, send_query
    from s4al.annotation.package import package_record, write_query_package
    from s4al.distributed import check_device_name

    if new_project and label_studio is None:
        raise typer.BadParameter("--new-project makes a new Label Studio project: give --label-studio URL too")
    if project is not None and (label_studio is None or new_project):
        raise typer.BadParameter("--project names a Label Studio project to send to: give --label-studio URL too, "
                                 "and not --new-project")
    sent = None
    with user_errors_reported():
        check_device_name(device)  # as the commands that compute say it, before the run is opened
        server = None if label_studio is None else checked_server(label_studio, api_key)
        with ActiveLearningRun(run_dir, overrides={"train": {"device": device}}) as active_run:
            if server is not None and not new_project and project is None:
                project_on(active_run.ledger, server)  # refused before the pool is scored
            if out is not None:
                package_record(out, active_run)  # as is a folder the package may not go to
            cycle = _asking_cycle(active_run, run_dir)
            package = write_query_package(active_run, out or active_run.folder.queries_dir / f"cycle_{cycle}")
            if server is not None and (package.regions or project is not None):  # by id: recorded though none asked
                sent = send_query(active_run.ledger, Path(run_dir).resolve().name, package.out_dir, server, api_key,
                                  new_project, project)
            phase = active_run.phases.phase(cycle)
            recorded = recorded_project(active_run.ledger)
    if not package.regions:
        kept = "" if sent is None else f"Label Studio project {sent.project.page} is this run's. "
        typer.echo(f"{run_dir}: no region waits for an answer (cycle {cycle} is in phase '{phase}'). {kept}"
                   f"{next_step(run_dir)}")
        return
    typer.echo(f"{counted(package.regions, 'asked region')} in {counted(package.images, 'image')} written to "
               f"{package.out_dir}:")
    typer.echo(_sent_lines(run_dir, sent) if sent else _package_lines(run_dir, recorded))


def _asking_cycle(active_run: ActiveLearningRun, run_dir: Path) -> int:
    """The run's latest cycle, made to ask first if it has trained but not asked yet."""
    cycle = active_run.phases.last_cycle()
    phase = active_run.phases.phase(cycle) if cycle is not None else None
    if phase in (None, "train"):
        raise RunFolderError(f"{run_dir}: cycle {cycle or 0} has not finished training; "
                             f"continue it with `s4al run --resume {shell(run_dir)}`")
    if phase == "acquire":
        active_run.acquire(cycle)
    return cycle


def _package_lines(run_dir: Path, project: Project | None) -> str:
    label_studio = (f"  Label Studio: import tasks.json into the run's one project (set up once with "
                    f"labelling_config.xml),\n    or let s4al do it: s4al query {shell(run_dir)} --label-studio URL "
                    "(with --project ID: that project of yours)\n")
    if project is not None:
        label_studio = (f"  Label Studio: this run's project is {project.page}; send it these tasks with s4al query "
                        f"{shell(run_dir)} --label-studio {project.url}\n    (importing tasks.json there by hand as "
                        f"well would give each region two tasks)\n")
    return (label_studio +
            f"  any other tool: images/, overlays/ (regions outlined), manifest.csv / manifest.json\n"
            f"Then: s4al import {shell(run_dir)} ANSWERS (the project's JSON export, or a folder of IMAGE_ID.png "
            f"class-id masks, 255 = unpainted), s4al skip {shell(run_dir)} for regions nobody will answer, "
            f"and s4al run --resume {shell(run_dir)}.")


def _sent_lines(run_dir: Path, sent: SentTasks) -> str:
    made = "made for this run, " if sent.created else "this run's from now on, " if sent.adopted else ""
    old = sent.replaced
    replaced = "" if old is None else (f"  in place of project {old.id} on {old.url}: import the answers left there "
                                       f"from its JSON export with s4al import {shell(run_dir)} EXPORT.json before "
                                       "anyone paints here (their tasks are here too)\n")
    it = "it" if len(sent.repeated) == 1 else "them"
    repeated = "" if not sent.repeated else (
        f"  the project holds {counted(len(sent.repeated), 'task')} asking regions another of its tasks asks too: "
        f"{first_of([str(i) for i in sent.repeated], SHOWN_REGIONS)}; delete {it} in Label Studio before anyone "
        f"paints {it}, or each region is painted twice and the import refuses a pair painted two ways\n")
    edited = "" if not sent.labels_edited else (
        "  the project's labelling config names other labels than this run's classes (edited in Label Studio?): "
        "paint under a label the run does not know is refused at import; to restore it, paste the "
        "labelling_config.xml written above in the project's Settings > Labeling Interface > Code\n")
    return (f"  sent {counted(sent.sent, 'new task')} to Label Studio project {sent.project.id} ({made}"
            f"{sent.already} of the package's tasks there already); annotate at {sent.project.page}\n{replaced}{repeated}"
            f"{edited}"
            f"Then: s4al import {shell(run_dir)} --label-studio, s4al skip {shell(run_dir)} for regions nobody will "
            f"answer, and s4al run --resume {shell(run_dir)}.")


def import_answers_command(run_dir: RunDirArgument, answers: AnswersArgument = None,
                           label_studio: DownloadOption = False, api_key: ApiKeyOption = None,
                           dry_run: DryRunOption = False) -> None:
    """Import painted answers into the run's label ledger; a bad file changes nothing."""
    from s4al.annotation.answers import import_answers
    from s4al.annotation.label_studio_api import download_export, remove_earlier_downloads

    if (answers is not None) == label_studio:
        raise typer.BadParameter("give ANSWERS (a file or folder) or --label-studio, one of them")
    with user_errors_reported():
        folder = RunFolder(run_dir)
        folder.ledger_file()  # a run folder, before its lock
        _refuse_oracle_run(folder, "an import")
        with folder.locked():  # refused at once while a run holds the folder, before a download
            folder.remove_stray_temp_files()  # a killed download's, of an export's size
            if label_studio:
                answers = download_export(run_dir, api_key)
                typer.echo(f"the Label Studio project's export, as received: {answers}")
            report = import_answers(run_dir, answers, dry_run)
            removed = remove_earlier_downloads(answers) if label_studio and not dry_run else 0
    if not report.read:
        typer.echo(f"{answers}: no task in it is submitted or skipped, nothing to import; "
                   f"{counted(report.still_asked, 'region')} still asked.")
        for line in _report_lines(run_dir, report):
            typer.echo(line)
        return
    if dry_run:
        typer.echo("Dry run, no answer written; the import would do this:")
    typer.echo(f"answered {counted(len(report.answered), 'region')} ({report.by}), "
               f"{counted(report.void_pixels, 'unpainted pixel')} inside stored as void; skipped "
               f"{counted(len(report.skipped), 'region')} of skipped tasks{_listed(report.skipped)}; "
               f"{counted(report.still_asked, 'region')} still asked.")
    for line in _report_lines(run_dir, report):
        typer.echo(line)
    if removed:
        typer.echo(f"removed {counted(removed, 'earlier download')} of the project's export from {answers.parent} "
                   "(this one holds the project as it is now; what they answered is in the run)")
    if not report.still_asked and not dry_run:
        typer.echo(f"Every asked region is answered or skipped. {next_step(run_dir)}")


def _report_lines(run_dir: Path, report: ImportReport) -> list[str]:
    from s4al.annotation.answers import SAID_ONCE
    from s4al.annotation.label_studio import BY_LABEL_STUDIO

    lines = []
    if report.older:
        newest, stored = (f"{datetime.fromisoformat(time):%Y-%m-%d %H:%M:%S} UTC" for time in report.older)
        lines.append(f"an older export: its newest painting is from {newest}, but answers imported before were "
                     f"painted up to {stored} (an earlier download?); it replaces none of them")
    if report.not_answered:
        lines.append(f"not answered, under {100 * MIN_PAINTED_SHARE:.0f}% painted, left asked: "
                     f"{_shares(report.not_answered)}; paint more and import again, or skip: "
                     f"{_skip_command(run_dir, list(report.not_answered))}")
    if report.edits_under_minimum:
        lines.append(f"kept the earlier answer of {_shares(report.edits_under_minimum)}, painted otherwise now but "
                     f"under {100 * MIN_PAINTED_SHARE:.0f}%: to correct one, paint at least that much of it; to "
                     f"take one back: {_skip_command(run_dir, list(report.edits_under_minimum), withdraw=True)}")
    later = _after_the_last(run_dir) if report.corrected or report.unskipped else ""
    kinds = (  # the regions an import treated other than as asked, each kind with what happened to them
        ("unskipped", "answered {regions} skipped before (painted since, or skipped by `s4al skip` without "
                      "--region, which passes over answers not yet imported; they train from the next cycle"
                      + later + ")"),
        ("corrected", "corrected {regions} answered before, painted otherwise now (the new answer replaces the "
                      "earlier one for the training to come" + later + ")"),
        ("repaired", "wrote again {regions} whose stored answer (in labels/) was lost"),
        ("skip_kept", "left {regions} skipped: painted here as when the skip turned them down (skipped after this "
                      "painting, in Label Studio or by `s4al skip --region`, or `--withdraw`); to answer one, paint "
                      "it otherwise in Label Studio (or in its mask) and import"),
        ("annotation_gone", "kept {regions} answered, the task without an annotation in this export any more "
                            "(deleted in Label Studio?)"),
        ("task_gone", "kept {regions} answered, their task not in this export (deleted in Label Studio, or an "
                      "export of part of the project?)"),
        ("skipped_since", "kept {regions} answered, the task skipped after the painting: an answer stays until "
                          "painted otherwise"),
        ("outdated", "left {regions} answered as before: painted otherwise here, but before the stored answer "
                     "(an earlier export or mask?)"),
    )
    said = {kind: report.not_said_before(kind) if kind in SAID_ONCE else getattr(report, kind) for kind, _ in kinds}
    lines += [f"{text.format(regions=counted(len(said[kind]), 'region'))}: {_ids(said[kind])}"
              for kind, text in kinds if said[kind]]
    if any(said[kind] for kind in ("annotation_gone", "task_gone", "skipped_since")):
        lines.append(f"to take back an answer kept so: s4al skip {shell(run_dir)} --withdraw --region ID")
    if report.drafted:
        lines.append(f"{counted(len(report.drafted), 'task')} with a draft saved in Label Studio but nothing "
                     f"submitted, regions left asked: {first_of(report.drafted, SHOWN_IMAGES, '; ')}; submit the "
                     "draft there to answer")
    if report.edits_drafted:
        lines.append(f"{counted(len(report.edits_drafted), 'task')} with an edit saved as a draft in Label Studio, "
                     f"not submitted, read as last submitted: {first_of(report.edits_drafted, SHOWN_IMAGES, '; ')}; "
                     "click Update there for the edit to count, and import again")
    if report.already_imported:
        what = "task" if report.by == BY_LABEL_STUDIO else "mask"
        lines.append(f"{counted(report.already_imported, what)} already imported (regions answered or skipped): "
                     "left alone")
    ignored = report.ignored_pixels
    if ignored:
        most = ", ".join(f"'{i}': {n}" for i, n in sorted(ignored.items(), key=lambda item: -item[1])[:SHOWN_IMAGES])
        lines.append(f"ignored {counted(sum(ignored.values()), 'painted pixel')} outside the regions asked, "
                     f"in {counted(len(ignored), 'image')} (most in {most})")
    if report.hand_drawn:
        lines.append(f"ignored {counted(sum(report.hand_drawn.values()), 'rectangle')} drawn by hand (only painted "
                     f"pixels count), in {', '.join(list(report.hand_drawn)[:SHOWN_IMAGES])}")
    if report.ignored_files:
        lines.append(f"ignored {counted(len(report.ignored_files), 'file')}, not .png masks: "
                     f"{first_of(report.ignored_files, SHOWN_IMAGES)}")
    return lines


def skip(run_dir: RunDirArgument, region: RegionOption = None, cycle: CycleOption = None,
         withdraw: WithdrawOption = False) -> None:
    """Skip asked regions the annotator declines: they are never asked again, and neither labelled
    nor counted as labelled pixels unless an import paints them later. The run then continues with
    the regions answered. With --withdraw, answered regions named are skipped too: their answers
    no longer train, from the next cycle on."""
    from s4al.active.ledger import PROJECT_META, Ledger
    from s4al.active.summaries import summaries_rewritten
    from s4al.annotation.answers import BY_SKIP_NAMED, BY_SKIP_UNANSWERED, part_trained_cycle

    if withdraw and not region:
        raise typer.BadParameter("--withdraw takes back the answers of the regions named: give them with --region ID")
    if region and cycle is not None:
        raise typer.BadParameter("--cycle picks the regions still asked of one cycle; the regions named with "
                                 "--region are those: give one or the other")
    with user_errors_reported():
        folder = RunFolder(run_dir)
        folder.ledger_file()  # a run folder, before its config is read
        _refuse_oracle_run(folder, "a skip")
        Ledger(folder.ledger_file(), readonly=True).close()  # a file that is no ledger is refused before a write
        with folder.locked(), Ledger(folder.ledger_file()) as ledger:  # the lock: not while a run writes it
            asked = [] if region else ledger.asked(cycle)
            chosen = region or [r.region_id for r in asked]
            cycles = sorted({r.cycle for r in asked})  # said for a skip of what is still asked
            answered = sorted({r.region_id for r in ledger.answered()} & set(chosen))
            _refuse_withdrawal(run_dir, answered, withdraw, part_trained_cycle(folder, ledger) if answered else None)
            with summaries_rewritten(folder, ledger, answered):  # a withdrawal changes what a cycle bought
                skipped = ledger.skip(chosen, by=BY_SKIP_NAMED if region else BY_SKIP_UNANSWERED, withdraw=withdraw)
            still_asked = len(ledger.asked())
            project = ledger.get_meta(PROJECT_META)
    of_cycles = "" if region or not skipped else f" of {'cycle' if len(cycles) == 1 else 'cycles'} " + ", ".join(
        map(str, cycles))
    typer.echo(f"skipped {counted(len(skipped), 'region')}{of_cycles}{_listed(skipped)}; "
               f"{counted(still_asked, 'region')} still asked.")
    if answered:
        typer.echo(f"withdrew the answers of {counted(len(answered), 'region')} ({_ids(answered)}): they no longer "
                   f"train, from the next cycle on{_after_the_last(run_dir)}; a painting of one other than its answer, "
                   "imported, answers it again.")
    if skipped and project is not None:
        when = "after this skip" if region else "before or after this skip"
        withdrawn = " (a withdrawn answer's: painted otherwise than it)" if answered else ""
        typer.echo(f"Their tasks stay open in Label Studio ({project['url']}/projects/{project['id']}): a task "
                   f"painted there {when}{withdrawn}, then imported, answers its regions all the same.")
    if not still_asked:
        typer.echo(next_step(run_dir))


def _refuse_oracle_run(folder: RunFolder, what: str) -> None:
    """A run whose ground truth answers (an experiment) takes no person's answers or skips: they would
    change what it measures. (A folder without its config, a ledger alone, is not told.)"""
    if folder.config_path.exists() and folder.config().active.annotator == "oracle":
        raise S4alError(f"{folder.path}: the dataset's ground truth answers this run's regions as it resumes "
                        f"(active.annotator: oracle), so {what} would change the experiment; nothing written. "
                        f"Continue with `s4al run --resume {shell(folder.path)}`; a run a person answers is made "
                        "with active.annotator: external")


def _refuse_withdrawal(run_dir: Path, answered: list[int], withdraw: bool, part_trained: int | None) -> None:
    """Answered regions are skipped only when asked to (--withdraw), and not while a cycle has
    trained part-way with their answers."""
    if answered and not withdraw:
        regions = (" ".join(f"--region {i}" for i in answered) if len(answered) <= SHOWN_REGIONS
                   else "--region ID ...")
        raise S4alError(f"{named('region', [str(i) for i in answered])} already answered, nothing written; to take "
                        f"back {'its answer' if len(answered) == 1 else 'their answers'}: "
                        f"s4al skip {shell(run_dir)} --withdraw {regions}")
    if answered and part_trained is not None:
        raise S4alError(f"cycle {part_trained} has trained part-way with the answers of {_ids(answered)}: resume "
                        f"the run until it has trained (s4al run --resume {shell(run_dir)}), then withdraw them; "
                        "nothing written")


def next_step(run_dir: Path) -> str:
    """What to run once no region is left asked."""
    from s4al.active.ledger import Ledger
    from s4al.report.status import finished_line

    cycles = _finished_cycles(run_dir)
    if cycles is not None:
        with Ledger(RunFolder(run_dir).ledger_file(), readonly=True) as ledger:
            return finished_line(run_dir, cycles, ledger)
    return f"Continue with `s4al run --resume {shell(run_dir)}`."


def _finished_cycles(run_dir: Path) -> int | None:
    """The run's last cycle, if it has finished it; else None."""
    from s4al.active.ledger import Ledger
    from s4al.active.phases import CyclePhases

    folder = RunFolder(run_dir)
    cycles = folder.config().active.cycles
    with Ledger(folder.ledger_file(), readonly=True) as ledger, CyclePhases(ledger) as phases:
        return cycles if phases.phase(cycles) == "done" else None


def _after_the_last(run_dir: Path) -> str:
    """For a finished run: when its answers train."""
    try:
        cycles = _finished_cycles(run_dir)
    except RunFolderError:  # a ledger without the run's config: nothing to tell
        return ""
    return "" if cycles is None else f", once the run is given cycle {cycles + 1}"


def _listed(region_ids: list[int]) -> str:
    return f" ({_ids(region_ids)})" if region_ids else ""


def _ids(region_ids: list[int]) -> str:
    return first_of([str(i) for i in region_ids], SHOWN_REGIONS)


def _shares(shares: dict[int, float]) -> str:
    """Region ids with their painted share: "region 4 (30.0%)", "regions 4 (30.0%), 7 (12.5%)"."""
    return named("region", [f"{region_id} ({100 * share:.1f}%)" for region_id, share in shares.items()],
                 SHOWN_REGIONS)


def _skip_command(run_dir: Path, region_ids: list[int], withdraw: bool = False) -> str:
    """The `s4al skip` of `region_ids` (answered ones: `withdraw`); for more than a line holds, the general form."""
    command = f"s4al skip {shell(run_dir)}" + (" --withdraw" if withdraw else "")
    if len(region_ids) > SHOWN_REGIONS:
        return f"{command} --region ID ..." + ("" if withdraw else f" (or every region still asked: s4al skip "
                                                                   f"{shell(run_dir)})")
    return f"{command} " + " ".join(f"--region {region_id}" for region_id in region_ids)
